"""SEACells baselines (coem.baselines) and the comparison command (coem.cli.baselines).

SEACells runs use the ``coem`` kernel (the same kernel as SEACells' own, without scanpy's
10-15 s numba compilation) and a few archetypal iterations, on the 200-cell ``tiny_sim``.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from coem import baselines
from coem.errors import CoemInputError

pytest.importorskip("SEACells")

FAST = {"min_iter": 2, "max_iter": 3, "kernel": "coem"}


@pytest.fixture(scope="module")
def tiny_embeddings(_tiny_sim_cached):
    tiny_sim = _tiny_sim_cached
    from coem import embed

    mdata = tiny_sim.mdata
    pcs, _ = embed.rna_pca(mdata.mod["rna"].X, n_pcs=10)
    lsi, _ = embed.atac_lsi(mdata.mod["atac"].X, n_lsi=10, seed=0)
    return {"rna_pca": pcs, "atac_lsi": lsi}


@pytest.fixture(scope="module")
def tiny_with_metacells(_tiny_sim_cached):
    """A copy of tiny_sim with z (PCA+LSI), COEM's 5 spectral metacells and labels."""
    tiny_sim = _tiny_sim_cached
    from coem.embed import pca_lsi_embedding
    from coem.metacells import SpectralMetacells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = tiny_sim.mdata.copy()
    z, _ = pca_lsi_embedding(mdata, n_pcs=10, n_lsi=10)
    mdata.obsm["X_embedding"] = z
    mdata.obs["metacell"] = SpectralMetacells(n_metacells=5, random_state=0).fit(z).names_
    mdata.obs["label"] = mdata.obs["state"].astype(str)
    return mdata


@pytest.fixture(scope="module")
def tiny_metacells_h5mu(tiny_with_metacells, tmp_path_factory):
    """tiny_with_metacells written as P.metacells.h5mu (the command's input)."""
    path = tmp_path_factory.mktemp("baselines") / "S.metacells.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tiny_with_metacells.write(str(path))
    return path


@pytest.fixture(scope="module")
def cli_run(tiny_metacells_h5mu, tmp_path_factory):
    """One end-to-end run of the command; tests below read its outputs."""
    from coem.cli.baselines import main

    out = tmp_path_factory.mktemp("cli")
    old = os.getcwd()
    os.chdir(out)  # versions.yml is written to the working directory, as in Nextflow
    try:
        rc = main(["--sample", "S", "--input", str(tiny_metacells_h5mu), "--prefix", "S", "--seed", "0",
                   "--kernel", "coem", "--min-iter", "2", "--max-iter", "3", "--n-pcs", "10", "--n-lsi", "10"])
    finally:
        os.chdir(old)
    return rc, out


# --------------------------------------------------------------------------- SEACells runs


def test_seacells_hard_assignments_cover_all_cells_and_are_reproducible(tiny_embeddings):
    X = tiny_embeddings["rna_pca"]
    state = np.random.get_state()[1].copy()
    first = baselines.run_seacells(X, 6, seed=3, method="seacells_rna", **FAST)
    second = baselines.run_seacells(X, 6, seed=3, method="seacells_rna", **FAST)
    assert first.labels.shape == (X.shape[0],)
    assert 2 <= first.n_returned <= 6 and first.n_requested == 6
    # every cell has a metacell, ids are 0..m-1 with none empty
    assert set(np.unique(first.labels)) == set(range(first.n_returned))
    assert first.names[0] == "MC00001" and len(set(first.names)) == first.n_returned
    assert 2 <= first.n_iter <= 3 and isinstance(first.converged, bool)
    assert first.kernel_seconds > 0 and first.fit_seconds > 0
    assert first.seconds == pytest.approx(first.kernel_seconds + first.fit_seconds)
    np.testing.assert_array_equal(first.labels, second.labels)
    # SEACells' global-RNG use is confined to the run
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_run_baselines_uses_each_methods_embedding(tiny_embeddings):
    z = np.hstack([tiny_embeddings["rna_pca"], tiny_embeddings["atac_lsi"]])
    results = baselines.run_baselines({**tiny_embeddings, "z": z}, ["seacells_atac"], 4, seed=0, **FAST)
    assert list(results) == ["seacells_atac"]
    alone = baselines.run_seacells(tiny_embeddings["atac_lsi"], 4, seed=0, method="seacells_atac", **FAST)
    np.testing.assert_array_equal(results["seacells_atac"].labels, alone.labels)
    with pytest.raises(CoemInputError, match="needs the 'z' embedding"):
        baselines.run_baselines(tiny_embeddings, ["archetypal_z"], 4)
    with pytest.raises(CoemInputError, match="unknown baseline method 'metacell2'"):
        baselines.run_baselines(tiny_embeddings, ["metacell2"], 4)


@pytest.mark.parametrize("n_metacells, message", [(200, "between 2 and the number of cells - 1 \\(199\\)"),
                                                  (1, "between 2 and")])
def test_seacells_rejects_impossible_counts(tiny_embeddings, n_metacells, message):
    with pytest.raises(CoemInputError, match=message):
        baselines.run_seacells(tiny_embeddings["rna_pca"], n_metacells, **FAST)


def test_seacells_rejects_bad_options(tiny_embeddings):
    with pytest.raises(CoemInputError, match="min_iter <= max_iter"):
        baselines.run_seacells(tiny_embeddings["rna_pca"], 4, min_iter=5, max_iter=2)
    with pytest.raises(CoemInputError, match="kernel must be one of seacells, coem"):
        baselines.run_seacells(tiny_embeddings["rna_pca"], 4, kernel="gauss")
    with pytest.raises(CoemInputError, match="at least 32 cells"):
        baselines.run_seacells(tiny_embeddings["rna_pca"][:20], 4)
    bad = tiny_embeddings["rna_pca"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(CoemInputError, match="NaN"):
        baselines.run_seacells(bad, 4)


# --------------------------------------------------------------------------- spectral timing, runtime table


def test_time_spectral_returns_exactly_the_requested_count(tiny_embeddings):
    from coem.metacells import SpectralMetacells

    z = tiny_embeddings["rna_pca"]
    res = baselines.time_spectral(z, 7, seed=0)
    assert res.n_returned == 7 and res.method == "coem"
    assert res.kernel_seconds > 0 and res.fit_seconds > 0
    # the timed path is SpectralMetacells' own (same labels)
    np.testing.assert_array_equal(res.labels, SpectralMetacells(n_metacells=7, random_state=0).fit(z).labels_)


def test_runtime_table_ratios():
    spectral = baselines.BaselineResult("coem", np.array([0, 1, 1, 2]), 3, 1.0, 2.0, kernel="coem")
    arch = baselines.BaselineResult("archetypal_z", np.array([0, 0, 1, 1]), 3, 3.0, 12.0)
    table = baselines.runtime_table(spectral, arch, 4)
    assert list(table.index) == ["spectral", "archetypal"]
    assert table.loc["archetypal", "n_metacells_returned"] == 2  # fewer than the 3 asked
    assert table.loc["archetypal", "total_seconds"] == 15.0
    assert table.loc["archetypal", "total_ratio_to_spectral"] == 5.0
    assert table.loc["archetypal", "cluster_ratio_to_spectral"] == 6.0
    assert table.loc["spectral", "total_ratio_to_spectral"] == 1.0
    only = baselines.runtime_table(spectral, None, 4)
    assert list(only.index) == ["spectral"]


# --------------------------------------------------------------------------- peak-to-gene definitions


def test_p2g_fractions_under_both_definitions(tiny_with_metacells, tiny_sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = tiny_with_metacells.copy()
    ids = mdata.obs["metacell"].to_numpy()
    obs_before = list(mdata.obs.columns)
    out = baselines.p2g_negative_fractions(mdata, ids, known_links=tiny_sim.links)
    assert list(mdata.obs.columns) == obs_before  # the temporary column is gone
    tss, body = out["pearson_tss"], out["spearman_body"]
    assert tss["method"] == "pearson" and tss["anchor"] == "tss" and tss["n_obs"] == 5
    assert body["method"] == "spearman" and body["anchor_used"] == "gene_body"
    assert 0 <= tss["fraction_negative"] <= 1 and 0 <= body["fraction_negative"] <= 1
    # a gene body +-100 kb contains its TSS +-100 kb window: never fewer candidate pairs
    assert body["n_candidate_pairs"] > tss["n_candidate_pairs"]
    # planted links all lie within +-100 kb of their gene's TSS, so both windows test them
    assert 0 < tss["known_n_pairs"] == body["known_n_pairs"] <= len(tiny_sim.links)
    assert 0 <= tss["known_fraction_negative"] <= 1

    mdata.mod["rna"].var = mdata.mod["rna"].var.drop(columns=["start", "end"])
    fallback = baselines.p2g_negative_fractions(mdata, ids)["spearman_body"]
    assert fallback["anchor_used"] == "tss (no gene bodies)"
    assert fallback["n_candidate_pairs"] == tss["n_candidate_pairs"]


def test_p2g_too_few_metacells_is_nan_with_reason(tiny_sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = tiny_sim.mdata.copy()
    ids = np.where(np.arange(mdata.n_obs) < 100, "A", "B")
    out = baselines.p2g_negative_fractions(mdata, ids)
    assert np.isnan(out["pearson_tss"]["fraction_negative"])
    assert "at least 3 observations" in out["pearson_tss"]["skipped"]


# --------------------------------------------------------------------------- the command


def test_cli_comparison_table_has_a_finite_row_per_method(cli_run, tiny_sim):
    rc, out = cli_run
    assert rc == 0
    table = pd.read_csv(out / "S.method_comparison.tsv", sep="\t", index_col="method")
    assert list(table.index) == ["coem", "seacells_rna", "seacells_atac", "archetypal_z"]
    assert list(table["display_name"]) == ["COEM", "SeaC-RNA", "SeaC-ATAC", "Archetypal-z"]
    metric_cols = ["purity", "compactness_rna", "compactness_atac", "separation_rna", "separation_atac",
                   "p2g_negative_pearson_tss", "p2g_negative_spearman_body", "seconds"]
    assert np.isfinite(table[metric_cols].to_numpy(dtype=float)).all()
    assert (table["n_metacells_requested"] == 5).all()  # default: COEM's count
    assert table.loc["coem", "n_metacells"] == 5
    assert (table["n_metacells"] <= 5).all() and (table["n_metacells"] >= 2).all()
    assert ((table["purity"] > 0) & (table["purity"] <= 1)).all()
    medians = [f"{m}_{mod}_median" for m in ("compactness", "separation") for mod in ("rna", "atac")]
    assert np.isfinite(table[medians].to_numpy(dtype=float)).all()  # robust columns beside the means
    mqc = json.loads((out / "S_method_comparison_mqc.json").read_text())
    for row in mqc["data"].values():  # no value above 1e6 unless its modality is flagged
        for col in ("compactness_rna", "compactness_atac", "separation_rna", "separation_atac"):
            assert row[col] is None or row[col] < 1e6 or col.split("_")[1] in row["nearly_disconnected"]

    assignments = pd.read_csv(out / "S.baseline_assignments.tsv", sep="\t", index_col="cell")
    assert list(assignments.index) == list(tiny_sim.mdata.obs_names)
    assert assignments.notna().all().all()
    for method in table.index:  # the table counts what the assignments hold
        assert assignments[method].nunique() == table.loc[method, "n_metacells"]


def test_cli_runtime_table_and_reports(cli_run):
    _, out = cli_run
    runtime = pd.read_csv(out / "S.runtime.tsv", sep="\t", index_col="algorithm")
    assert list(runtime.index) == ["spectral", "archetypal"]
    assert runtime.loc["archetypal", "method"] == "archetypal_z"
    ratio = runtime.loc["archetypal", "total_seconds"] / runtime.loc["spectral", "total_seconds"]
    assert runtime.loc["archetypal", "total_ratio_to_spectral"] == pytest.approx(ratio, rel=1e-4)
    assert (runtime["total_seconds"] > 0).all()

    comparison = json.loads((out / "S_method_comparison_mqc.json").read_text())
    assert comparison["id"] == "coem_method_comparison" and comparison["plot_type"] == "table"
    assert set(comparison["data"]) == {"S_coem", "S_seacells_rna", "S_seacells_atac", "S_archetypal_z"}
    assert comparison["data"]["S_coem"]["method"] == "coem"
    rt = json.loads((out / "S_runtime_comparison_mqc.json").read_text())
    assert rt["id"] == "coem_runtime_comparison" and set(rt["data"]) == {"S_spectral", "S_archetypal"}

    details = json.loads((out / "S.method_comparison.json").read_text())
    assert details["record"]["step"] == "baselines" and details["record"]["seed"] == 0
    assert "seacells" in details["record"]["versions"]
    assert details["methods"]["seacells_rna"]["run"]["kernel"] == "coem"
    assert "seacells: 0.3.3" in (out / "versions.yml").read_text()


def test_cli_errors_name_the_problem(tiny_metacells_h5mu, tmp_path, capsys):
    from coem.cli._common import run_cli
    from coem.cli.baselines import main

    rc = run_cli(main, ["--sample", "S", "--input", str(tiny_metacells_h5mu), "--methods", "seacells_rna,foo"])
    assert rc == 2
    assert "unknown or empty ['foo']" in capsys.readouterr().err

    rc = run_cli(main, ["--sample", "S", "--input", str(tiny_metacells_h5mu), "--embedding-key", "X_vae"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "obsm has no 'X_vae'" in err and "S.metacells.h5mu" in err

    rc = run_cli(main, ["--sample", "S", "--input", str(tmp_path / "missing.h5mu")])
    assert rc == 2 and "input file not found" in capsys.readouterr().err


def test_known_link_stats_counts_only_known_tested_pairs():
    links = pd.DataFrame({"gene": ["A", "A", "B", "C"], "peak": ["p1", "p2", "p3", "p4"],
                          "r": [0.5, -0.2, np.nan, 0.9]})
    known = pd.DataFrame({"gene": ["A", "A", "B", "Z"], "peak": ["p1", "p2", "p3", "p9"]})
    stats = baselines.known_link_stats(links, known)
    # p3 has no finite r and Z/p9 was never tested: 2 known pairs, one negative
    assert stats == {"known_n_pairs": 2, "known_fraction_negative": 0.5, "known_median_r": pytest.approx(0.15)}
    none = baselines.known_link_stats(links, known.iloc[3:])
    assert none["known_n_pairs"] == 0 and np.isnan(none["known_fraction_negative"])
