"""Summing raw counts per metacell (coem.aggregate) and the aggregate command."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem.aggregate import aggregate_metacells, metacell_table
from coem.errors import CoemInputError


@contextmanager
def _quiet():
    """mudata 0.3 warns about its future pull_on_update default on every update."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _toy(with_labels: bool = True) -> md.MuData:
    """7 cells in 3 metacells; RNA 7 x 4, ATAC 7 x 5 integer counts; ATAC cells in another order."""
    rng = np.random.default_rng(0)
    cells = [f"c{i}" for i in range(7)]
    rna = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(3.0, size=(7, 4)).astype(np.float32)),
        obs=pd.DataFrame(index=cells),
        var=pd.DataFrame({"chrom": ["chr1", "chr1", "chr2", "chrX"], "tss": [100.0, np.nan, 300.0, 5.0],
                          "strand": ["+", ".", "-", "+"]}, index=["G1", "G2", "G3", "G4"]),
    )
    atac_order = [6, 0, 5, 1, 4, 2, 3]
    atac = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(1.0, size=(7, 5)).astype(np.float32)),
        obs=pd.DataFrame(index=[cells[i] for i in atac_order]),
        var=pd.DataFrame({"chrom": ["chr1"] * 5, "start": [10, 20, 30, 40, 50], "end": [15, 25, 35, 45, 55]},
                         index=[f"chr1:{s}-{s + 5}" for s in (10, 20, 30, 40, 50)]),
    )
    with _quiet():
        mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs["metacell"] = pd.Series(["MC00002", "MC00001", "MC00002", "MC00003", "MC00001", "MC00002",
                                       "MC00001"], index=cells).reindex(mdata.obs_names).to_numpy()
    if with_labels:
        mdata.obs["label"] = pd.Series(["B", "A", "B", "A", "A", np.nan, "B"], index=cells,
                                       dtype=object).reindex(mdata.obs_names).to_numpy()
    return mdata


def _expected_sums(mdata, mod: str) -> pd.DataFrame:
    adata = mdata.mod[mod]
    dense = pd.DataFrame(adata.X.toarray(), index=adata.obs_names)
    return dense.groupby(mdata.obs.loc[adata.obs_names, "metacell"].to_numpy()).sum().sort_index()


def test_sums_per_metacell_and_totals_per_modality():
    mdata = _toy()
    with _quiet():
        agg = aggregate_metacells(mdata)
    assert agg.obs_names.tolist() == ["MC00001", "MC00002", "MC00003"]
    for mod in ("rna", "atac"):
        X = agg.mod[mod].X
        assert sp.isspmatrix_csr(X) and X.dtype == np.float32
        np.testing.assert_array_equal(X.toarray(), _expected_sums(mdata, mod).to_numpy())
        assert X.sum() == mdata.mod[mod].X.sum()
        np.testing.assert_array_equal(np.asarray(X.sum(axis=0)).ravel(),
                                      np.asarray(mdata.mod[mod].X.sum(axis=0)).ravel())


def test_obs_sizes_majority_labels_and_var_preserved():
    mdata = _toy()
    with _quiet():
        agg = aggregate_metacells(mdata)
    # MC00001 = c1 (A), c4 (A), c6 (B); MC00002 = c0 (B), c2 (B), c5 (no label); MC00003 = c3 (A).
    assert agg.obs["size"].tolist() == [3, 3, 1]
    assert agg.obs["label"].tolist() == ["A", "B", "A"]
    np.testing.assert_allclose(agg.obs["label_fraction"].to_numpy(), [2 / 3, 1.0, 1.0])
    pd.testing.assert_frame_equal(agg.mod["rna"].var, mdata.mod["rna"].var)
    pd.testing.assert_frame_equal(agg.mod["atac"].var, mdata.mod["atac"].var)


def test_label_ties_and_unlabelled_metacells():
    metacells = pd.Series(["MC1", "MC1", "MC2", "MC2"], name="metacell")
    labels = pd.Series(["z", "a", np.nan, np.nan], dtype=object)
    table = metacell_table(metacells, labels)
    assert table.loc["MC1", "label"] == "a" and table.loc["MC1", "label_fraction"] == 0.5  # tie: sorted first
    assert pd.isna(table.loc["MC2", "label"]) and np.isnan(table.loc["MC2", "label_fraction"])


def test_without_labels_there_are_no_label_columns():
    with _quiet():
        agg = aggregate_metacells(_toy(with_labels=False))
    assert list(agg.obs.columns) == ["size"]
    all_nan = _toy()
    all_nan.obs["label"] = np.nan
    assert list(metacell_table(all_nan.obs["metacell"], all_nan.obs["label"]).columns) == ["size"]


def test_missing_or_incomplete_assignment_is_a_user_error():
    mdata = _toy()
    del mdata.obs["metacell"]
    with pytest.raises(CoemInputError, match=r"obs\['metacell'\] is missing"):
        aggregate_metacells(mdata)
    mdata = _toy()
    mdata.obs.loc[mdata.obs_names[:2], "metacell"] = np.nan
    with pytest.raises(CoemInputError, match="2 cells have no metacell assignment"):
        aggregate_metacells(mdata)


def test_cli_end_to_end_embed_metacells_aggregate(tmp_path, tiny_sim, monkeypatch):
    """The three commands chained on the 200-cell simulation, as the pipeline runs them."""
    from coem.cli.aggregate import main as aggregate_main
    from coem.cli.embed import main as embed_main
    from coem.cli.metacells import main as metacells_main

    with _quiet():
        mdata = tiny_sim.mdata.copy()
    mdata.obs["label"] = mdata.obs["state"].astype(str).to_numpy()
    with _quiet():
        mdata.write(str(tmp_path / "S1.qc.h5mu"))
    monkeypatch.chdir(tmp_path)
    common = ["--sample", "S1", "--prefix", "S1", "--seed", "0"]
    assert embed_main(common + ["--input", "S1.qc.h5mu", "--n-hvg", "200", "--n-pcs", "10", "--n-lsi", "10"]) == 0
    assert metacells_main(common + ["--input", "S1.embedding.h5ad", "--cells-per-metacell", "20"]) == 0
    assert aggregate_main(common + ["--input", "S1.qc.h5mu", "--metacells", "S1.metacells.h5ad"]) == 0

    with _quiet():
        cells = md.read_h5mu("S1.qc.h5mu")
        agg = md.read_h5mu("S1.aggregated.h5mu")
    # each step after QC wrote only what it adds: no counts, a small fraction of the QC file
    qc_bytes = Path("S1.qc.h5mu").stat().st_size
    for added in ("S1.embedding.h5ad", "S1.metacells.h5ad"):
        assert Path(added).stat().st_size < qc_bytes / 10, added
    assert agg.n_obs == 10 and agg.obs["size"].sum() == 200
    for mod in ("rna", "atac"):
        assert agg.mod[mod].X.sum() == pytest.approx(float(cells.mod[mod].X.sum()))
        assert agg.mod[mod].var_names.equals(cells.mod[mod].var_names)
    assert {"chrom", "tss", "strand"} <= set(agg.mod["rna"].var.columns)
    assert {"chrom", "start", "end"} <= set(agg.mod["atac"].var.columns)
    assert agg.obs["label_fraction"].between(0, 1).all()
    # Every step's record travels along; this one is added.
    assert {"embed", "metacells", "aggregate"} <= set(agg.uns["coem"].keys())
    record = json.loads(agg.uns["coem"]["aggregate"])
    assert record["n_cells"] == 200 and record["n_metacells"] == 10 and record["params"]["metacell_key"] == "metacell"
    assert "COEM_AGGREGATE" in Path("versions.yml").read_text()
    # the dubious-metacell test travels in obs; the same seed gives the same flags
    assert agg.obs["dubious"].dtype == bool and agg.obs["dubious_rna"].dtype == bool
    assert {"dubious_atac", "dubious_excess_rna", "dubious_q_atac"} <= set(agg.obs.columns)
    assert agg.obs["dubious_q_rna"].between(0, 1).all()
    np.testing.assert_array_equal(agg.obs["dubious"], agg.obs["dubious_rna"] | agg.obs["dubious_atac"])
    assert record["n_dubious"] == int(agg.obs["dubious"].sum()) and record["n_dropped"] == 0

    # the evaluate step reuses the aggregate step's test (P.dubious.tsv): same table as running it again
    from coem.cli.evaluate import main as evaluate_main

    table = pd.read_csv("S1.dubious.tsv", sep="\t", index_col="metacell")
    assert len(table) == 10 and table["dubious"].sum() == record["n_dubious"]
    small = ["--n-hvg", "200", "--n-pcs", "10", "--n-lsi", "10", "--metacells", "S1.metacells.h5ad"]
    assert evaluate_main(["--sample", "S1", "--prefix", "E1", "--input", "S1.qc.h5mu", *small]) == 0
    assert evaluate_main(["--sample", "S1", "--prefix", "E2", "--input", "S1.qc.h5mu", *small,
                          "--dubious-table", "S1.dubious.tsv"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv("E1.evaluation.tsv", sep="\t"), pd.read_csv("E2.evaluation.tsv", sep="\t"))

    # --drop-dubious: the flagged metacells are gone from the output (3 of the 10 here, one of
    # them the least pure: label fraction 0.79)
    assert record["n_dubious"] == 3 and agg.obs.loc[agg.obs["dubious"], "label_fraction"].min() < 0.8
    assert aggregate_main(["--sample", "S1", "--prefix", "D", "--input", "S1.qc.h5mu", "--metacells",
                           "S1.metacells.h5ad", "--drop-dubious"]) == 0
    with _quiet():
        dropped = md.read_h5mu("D.aggregated.h5mu")
    record = json.loads(dropped.uns["coem"]["aggregate"])
    assert record["n_dropped"] == record["n_dubious"] and dropped.n_obs == 10 - record["n_dubious"]
    assert not dropped.obs["dubious"].any()


def test_drop_dubious_keeps_the_rest_and_explains_errors():
    from coem.aggregate import aggregate_metacells, drop_dubious

    with _quiet():
        agg = aggregate_metacells(_toy())
    with pytest.raises(CoemInputError, match=r"obs\['dubious'\] is missing"):
        drop_dubious(agg)
    agg.obs["dubious"] = [False, True, False]
    with _quiet():
        kept = drop_dubious(agg)
    assert kept.obs_names.tolist() == ["MC00001", "MC00003"] and agg.n_obs == 3  # input unchanged
    np.testing.assert_array_equal(kept.mod["rna"].X.toarray(), agg.mod["rna"].X.toarray()[[0, 2]])
    agg.obs["dubious"] = True
    with pytest.raises(CoemInputError, match="all 3 metacells are flagged dubious"):
        drop_dubious(agg)


def test_cli_without_metacells_is_a_user_error(tmp_path, tiny_sim, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.aggregate import main

    with _quiet():
        tiny_sim.mdata.copy().write(str(tmp_path / "plain.h5mu"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S3", "--input", "plain.h5mu"]) == 2
    err = capsys.readouterr().err
    assert "ERROR: sample 'S3', file 'plain.h5mu': obs['metacell'] is missing" in err
    assert not Path("S3.aggregated.h5mu").exists()
