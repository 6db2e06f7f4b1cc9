"""The multiome simulator: layout, realistic counts, planted truth, reproducibility, CLI."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem.errors import CoemInputError
from coem.simulate import (
    LINK_WINDOW,
    TSS_TABLE_COLUMNS,
    MultiomeSimulator,
    SimParams,
    make_barcodes,
    simulate_latent,
    simulate_multiome,
    type_design,
)

ALL_STATES = {"type_0", "type_1", "type_2", "type_3", "traj_early", "traj_mid", "traj_late"}


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return func(*args, **kwargs)


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


# ----------------------------------------------------------------------------- layout


def test_shapes_and_developer_layout(small_sim):
    mdata = small_sim.mdata
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert rna.shape == (600, 300) and atac.shape == (600, 2000)
    assert mdata.n_obs == 600
    assert rna.obs_names.equals(atac.obs_names) and mdata.obs_names.equals(rna.obs_names)
    assert rna.var_names.is_unique and atac.var_names.is_unique
    assert {"chrom", "tss", "strand"} <= set(rna.var.columns)
    assert rna.var["tss"].dtype == float and set(rna.var["strand"]) <= {"+", "-"}
    assert list(atac.var.columns[:3]) == ["chrom", "start", "end"]
    assert atac.var["start"].dtype == np.int64 and ((atac.var["end"] - atac.var["start"]) == 500).all()
    names = atac.var["chrom"] + ":" + atac.var["start"].astype(str) + "-" + atac.var["end"].astype(str)
    assert (names == atac.var_names).all()
    assert {"state", "cell_type", "pseudotime"} <= set(mdata.obs.columns)
    record = json.loads(mdata.uns["coem"]["simulate"])
    assert record["seed"] == 0 and record["params"]["n_cells"] == 600


def test_counts_are_integer_csr_float32(small_sim):
    for mod in ("rna", "atac"):
        X = small_sim.mdata.mod[mod].X
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
        assert X.has_canonical_format
        assert np.array_equal(X.data, np.round(X.data)) and X.data.min() >= 1


def test_library_sizes_sparsity_and_mito(small_sim):
    rna, atac = small_sim.mdata.mod["rna"], small_sim.mdata.mod["atac"]
    assert 1200 <= np.median(_row_sums(rna.X)) <= 1800
    assert 2500 <= np.median(_row_sums(atac.X)) <= 3500
    mito = rna.var_names.str.startswith("MT-")
    assert mito.sum() == 7 and (rna.var.loc[mito, "chrom"] == "chrM").all()
    pct = _row_sums(rna.X[:, mito]) / _row_sums(rna.X)
    assert 0.02 <= np.median(pct) <= 0.08 and pct.max() < 0.6


def test_atac_is_a_few_percent_nonzero_at_realistic_peak_numbers():
    sim = _quiet(simulate_multiome, n_cells=150, n_genes=300, n_peaks=20_000, seed=1)
    X = sim.mdata.mod["atac"].X
    density = X.nnz / (X.shape[0] * X.shape[1])
    assert 0.02 <= density <= 0.08, density
    assert 2500 <= np.median(_row_sums(X)) <= 3500


def test_barcodes_look_like_10x_and_are_unique():
    codes = make_barcodes(5000, np.random.default_rng(0))
    assert all(re.fullmatch(r"[ACGT]{16}-1", c) for c in codes)
    assert len(set(codes)) == 5000 and list(codes) == sorted(codes)
    again = make_barcodes(5000, np.random.default_rng(0))
    assert np.array_equal(codes, again)


# ----------------------------------------------------------------------------- states


def test_labels_cover_all_states_and_pseudotime_thirds(small_sim):
    obs = small_sim.mdata.obs
    assert set(obs["state"]) == ALL_STATES
    on = obs["cell_type"] == "trajectory"
    assert on.mean() == pytest.approx(0.3, abs=0.01)
    t = obs.loc[on, "pseudotime"]
    assert t.between(0, 1).all() and obs.loc[~on, "pseudotime"].isna().all()
    expected = np.array(["traj_early", "traj_mid", "traj_late"])[np.minimum((t * 3).astype(int), 2)]
    assert (obs.loc[on, "state"].astype(str).to_numpy() == expected).all()
    assert (obs.loc[~on, "state"].astype(str) == obs.loc[~on, "cell_type"].astype(str)).all()
    frame = small_sim.labels_frame()
    assert list(frame.columns) == ["barcode", "label"] and len(frame) == 600
    assert set(frame["label"]) == ALL_STATES


def test_type_design_twins():
    d = type_design(5)
    assert d.joint.tolist() == [0, 0, 1, 1, 2]
    assert d.rna_only.tolist() == [True, True, False, False, True]
    assert d.atac_only.tolist() == [False, False, True, True, True]
    assert type_design(3).joint.tolist() == [0, 1, 2]


def _state_distance(X, states, a, b) -> float:
    """Distance between two states' mean log-CPM profiles."""
    norm = sp.diags(1e4 / _row_sums(X)) @ X
    mean = {s: np.log1p(np.asarray(norm[states == s].mean(axis=0)).ravel()) for s in (a, b)}
    return float(np.linalg.norm(mean[a] - mean[b]))


def test_neither_modality_alone_separates_every_state(small_sim):
    states = small_sim.mdata.obs["state"].astype(str).to_numpy()
    rna, atac = small_sim.mdata.mod["rna"].X, small_sim.mdata.mod["atac"].X
    rna_01 = _state_distance(rna, states, "type_0", "type_1")
    rna_23 = _state_distance(rna, states, "type_2", "type_3")
    atac_01 = _state_distance(atac, states, "type_0", "type_1")
    atac_23 = _state_distance(atac, states, "type_2", "type_3")
    assert rna_23 < 0.35 * rna_01  # type_2/3 share transcription: RNA sees only noise
    assert atac_01 < 0.35 * atac_23  # type_0/1 share chromatin: ATAC sees only noise


# ----------------------------------------------------------------------------- regulation


def test_planted_links_lie_within_100kb_of_their_gene(small_sim):
    links, genes = small_sim.links, small_sim.genes
    atac_var = small_sim.mdata.mod["atac"].var
    assert list(links.columns[:4]) == ["gene", "peak", "distance", "kind"]
    assert set(links["kind"]) == {"promoter", "distal"}
    assert links["peak"].is_unique and links["peak"].isin(atac_var.index).all()
    peaks = atac_var.loc[links["peak"]]
    gene = genes.loc[links["gene"]]
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) / 2
    assert np.array_equal(centre - gene["tss"].to_numpy(), links["distance"].to_numpy())
    assert (peaks["chrom"].to_numpy() == gene["chrom"].to_numpy()).all()
    assert links["distance"].abs().max() <= LINK_WINDOW
    assert links.loc[links["kind"] == "promoter", "distance"].abs().max() <= 150
    per_gene = links.groupby("gene").size()
    assert per_gene.max() <= 3 and (links.groupby("gene")["kind"].apply(lambda k: (k == "promoter").sum()) == 1).all()


def test_modality_specific_features_have_no_links(small_sim):
    genes, peaks, links = small_sim.genes, small_sim.peaks, small_sim.links
    rna_only = genes.index[genes["programme"] == "rna_only"]
    assert len(rna_only) > 0 and not links["gene"].isin(rna_only).any()
    atac_only = peaks.index[peaks["kind"] == "atac_only"]
    assert len(atac_only) > 0 and not links["peak"].isin(atac_only).any()
    regulated = genes.index[genes["programme"].isin(["joint", "traj_up", "traj_down"])]
    assert regulated.isin(links["gene"]).all()


def _half_max_crossing(x: np.ndarray, y: np.ndarray) -> float:
    k = int(np.flatnonzero(y >= 0.5)[0])
    return float(np.interp(0.5, [y[k - 1], y[k]], [x[k - 1], x[k]]))


def _pooled_curve(values_by_gene, t, tau, edges) -> np.ndarray:
    """Mean over genes of each gene's binned profile along (t - tau_g), scaled to [0, 1]."""
    curves = []
    for gene, values in values_by_gene.items():
        bins = np.digitize(t - tau[gene], edges) - 1
        means = np.array([values[bins == b].mean() if (bins == b).any() else np.nan for b in range(len(edges) - 1)])
        curves.append((means - np.nanmin(means)) / (np.nanmax(means) - np.nanmin(means)))
    return np.nanmean(curves, axis=0)


def test_chromatin_opens_ahead_of_transcription(small_sim):
    """Pooled over rising trajectory genes, linked peaks cross half-max ~lag before the gene."""
    mdata, genes, links = small_sim.mdata, small_sim.genes, small_sim.links
    on = np.flatnonzero(mdata.obs["pseudotime"].notna().to_numpy())
    t = mdata.obs["pseudotime"].to_numpy()[on]
    rna = (sp.diags(1 / _row_sums(mdata.mod["rna"].X[on])) @ mdata.mod["rna"].X[on]).tocsc()
    atac = (sp.diags(1 / _row_sums(mdata.mod["atac"].X[on])) @ mdata.mod["atac"].X[on]).tocsc()
    rising = genes.index[genes["programme"] == "traj_up"]
    assert len(rising) >= 10
    gcol = pd.Series(np.arange(mdata.mod["rna"].n_vars), index=mdata.mod["rna"].var_names)
    pcol = pd.Series(np.arange(mdata.mod["atac"].n_vars), index=mdata.mod["atac"].var_names)
    expr = {g: rna[:, gcol[g]].toarray().ravel() for g in rising}
    access = {g: np.asarray(atac[:, pcol[links.loc[links["gene"] == g, "peak"]].to_numpy()].sum(axis=1)).ravel()
              for g in rising}
    edges = np.linspace(-0.4, 0.6, 11)
    centres = (edges[1:] + edges[:-1]) / 2
    tau = genes["tau"]
    rna_half = _half_max_crossing(centres, _pooled_curve(expr, t, tau, edges))
    atac_half = _half_max_crossing(centres, _pooled_curve(access, t, tau, edges))
    assert small_sim.params.lag == 0.15
    assert atac_half < rna_half
    # measured 0.151 at seed 0 (0.013 with lag=0, 0.301 with lag=0.3)
    assert rna_half - atac_half == pytest.approx(0.15, abs=0.05)


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_data_other_seed_other_data(tiny_sim):
    again = _quiet(simulate_multiome, n_cells=200, n_genes=300, n_peaks=2000, seed=0)
    for mod in ("rna", "atac"):
        assert (again.mdata.mod[mod].X != tiny_sim.mdata.mod[mod].X).nnz == 0
        assert again.mdata.mod[mod].var.equals(tiny_sim.mdata.mod[mod].var)
    assert again.mdata.obs.equals(tiny_sim.mdata.obs)
    assert again.links.equals(tiny_sim.links)
    other = _quiet(simulate_multiome, n_cells=200, n_genes=300, n_peaks=2000, seed=1)
    assert not other.mdata.obs_names.equals(tiny_sim.mdata.obs_names)
    assert (other.mdata.mod["rna"].X != tiny_sim.mdata.mod["rna"].X).nnz > 0


def test_chunks_stack_to_the_in_memory_matrix(tiny_sim):
    sim = MultiomeSimulator(SimParams(n_cells=200, n_genes=300, n_peaks=2000, seed=0, chunk_size=64))
    blocks = list(sim.iter_chunks())
    assert [b[0] for b in blocks] == [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 200)]
    rna = sp.vstack([b[1] for b in blocks]).tocsr()
    data = sim.simulate()
    assert (rna != data.mdata.mod["rna"].X).nnz == 0
    # The model (genome, states) does not depend on the chunking; the counts' draws do.
    assert data.links.equals(tiny_sim.links) and data.mdata.obs.equals(tiny_sim.mdata.obs)


def test_small_and_odd_shapes_work():
    sim = _quiet(simulate_multiome, n_cells=40, n_genes=40, n_peaks=80, n_types=2, seed=3)
    assert sim.mdata.mod["atac"].shape == (40, 80) and len(sim.links) > 0
    only_traj = _quiet(simulate_multiome, n_cells=50, n_genes=60, n_peaks=300, n_types=0, trajectory_fraction=1.0)
    assert set(only_traj.mdata.obs["state"]) <= {"traj_early", "traj_mid", "traj_late"}
    no_traj = _quiet(simulate_multiome, n_cells=50, n_genes=60, n_peaks=300, n_types=3, trajectory_fraction=0.0)
    assert no_traj.mdata.obs["pseudotime"].isna().all()
    assert not no_traj.genes["programme"].str.startswith("traj").any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_cells": 0}, "n_cells must be >= 1"),
        ({"trajectory_fraction": 1.5}, "trajectory_fraction must lie in [0, 1]"),
        ({"lag": 0.9}, "lag must lie in [0, 0.5]"),
        ({"n_types": 0, "trajectory_fraction": 0.3}, "n_types=0 leaves no discrete types"),
        ({"n_genes": 10}, "n_genes=10 is too few"),
        ({"n_genes": 400, "n_peaks": 50}, "n_peaks is too small"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, message):
    params = {"n_cells": 20, **kwargs}
    with pytest.raises(CoemInputError) as err:
        simulate_multiome(**params)
    assert message in str(err.value)


# ----------------------------------------------------------------------------- latent


def test_simulate_latent_is_clustered_and_reproducible():
    z, labels = simulate_latent(3000, dim=12, n_states=6, seed=4)
    assert z.shape == (3000, 12) and z.dtype == np.float32
    assert set(labels) == {f"state_{k}" for k in range(6)}
    z2, labels2 = simulate_latent(3000, dim=12, n_states=6, seed=4)
    assert np.array_equal(z, z2) and np.array_equal(labels, labels2)
    # Nearest centroid recovers the states: they are separated, not just labelled.
    centroids = np.stack([z[labels == s].mean(axis=0) for s in np.unique(labels)])
    nearest = np.unique(labels)[np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (nearest == labels).mean() > 0.95
    with pytest.raises(CoemInputError, match="n_states"):
        simulate_latent(10, n_states=0)


# ----------------------------------------------------------------------------- CLI


def _run_cli(tmp_path, fmt, *extra):
    from coem.cli.simulate import main

    args = ["--n-cells", "120", "--n-genes", "80", "--n-peaks", "400", "--seed", "2", "--chunk-size", "50",
            "--outdir", str(tmp_path), "--prefix", "demo", "--format", fmt, *extra]
    assert _quiet(main, args) == 0
    return _quiet(simulate_multiome, n_cells=120, n_genes=80, n_peaks=400, seed=2, chunk_size=50)


def _common_outputs(tmp_path, sim):
    labels = pd.read_csv(tmp_path / "demo_labels.csv")
    assert list(labels.columns) == ["barcode", "label"]
    assert labels["barcode"].tolist() == sim.mdata.obs_names.tolist()
    assert labels["label"].tolist() == sim.mdata.obs["state"].astype(str).tolist()
    links = pd.read_csv(tmp_path / "demo_links.tsv", sep="\t")
    assert links[["gene", "peak", "distance", "kind"]].equals(sim.links[["gene", "peak", "distance", "kind"]])
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["n_cells"] == 120 and summary["n_links"] == len(sim.links)
    assert "COEM_SIMULATE" in (tmp_path / "versions.yml").read_text()


def test_cli_h5mu_streams_the_same_data(tmp_path):
    import mudata as md

    sim = _run_cli(tmp_path, "h5mu")
    _common_outputs(tmp_path, sim)
    back = _quiet(md.read_h5mu, tmp_path / "demo.h5mu")
    for mod in ("rna", "atac"):
        X = back.mod[mod].X
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
        assert (X != sim.mdata.mod[mod].X).nnz == 0
    assert back.obs[["state", "cell_type", "pseudotime"]].equals(sim.mdata.obs)
    assert back.mod["rna"].var["tss"].equals(sim.mdata.mod["rna"].var["tss"])
    assert json.loads(back.uns["coem"]["simulate"])["params"]["seed"] == 2
    tss = pd.read_csv(tmp_path / "demo_tss.tsv", sep="\t")
    assert list(tss.columns) == TSS_TABLE_COLUMNS and len(tss) == 80
    assert not list(tmp_path.glob("*.tmp"))


def test_tss_table_columns_match_the_shared_annotation(shared_data):
    header = (shared_data / "annotation" / "hg38_gene_tss.tsv").open().readline().rstrip("\n").split("\t")
    assert header == TSS_TABLE_COLUMNS


def test_cli_pair_leaves_tss_to_the_annotation_table(tmp_path):
    import anndata as ad

    sim = _run_cli(tmp_path, "pair")
    _common_outputs(tmp_path, sim)
    rna = _quiet(ad.read_h5ad, tmp_path / "demo_rna.h5ad")
    atac = _quiet(ad.read_h5ad, tmp_path / "demo_atac.h5ad")
    assert not {"chrom", "tss", "strand"} & set(rna.var.columns)
    assert (rna.X != sim.mdata.mod["rna"].X).nnz == 0 and (atac.X != sim.mdata.mod["atac"].X).nnz == 0
    assert rna.obs_names.equals(atac.obs_names)
    tss = pd.read_csv(tmp_path / "demo_tss.tsv", sep="\t").set_index("symbol")
    assert np.array_equal(tss.loc[rna.var_names, "tss"].to_numpy(float), sim.mdata.mod["rna"].var["tss"].to_numpy())


def test_cli_10x_writes_a_cellranger_arc_h5(tmp_path):
    from coem import readers

    sim = _run_cli(tmp_path, "10x")
    _common_outputs(tmp_path, sim)
    assert not (tmp_path / "demo_tss.tsv").exists()
    back = _quiet(readers.read_10x_h5, tmp_path / "demo_filtered_feature_bc_matrix.h5")
    assert (back.mod["rna"].X != sim.mdata.mod["rna"].X).nnz == 0
    assert (back.mod["atac"].X != sim.mdata.mod["atac"].X).nnz == 0


def test_cli_bad_parameters_exit_2_with_message(tmp_path, capsys):
    from coem.cli._common import run_cli
    from coem.cli.simulate import main

    code = run_cli(main, ["--n-cells", "0", "--outdir", str(tmp_path)])
    assert code == 2
    assert "ERROR: invalid simulation parameters: n_cells must be >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- planted low-quality cells

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
LOW_QUALITY = {"empty_fraction": 0.05, "low_count_fraction": 0.05, "damaged_fraction": 0.05,
               "doublet_fraction": 0.05}


def test_without_low_quality_cells_the_shipped_test_data_is_reproduced():
    """Fractions default to 0: the simulator still draws the shipped sim2 exactly (same counts, same record)."""
    import mudata as md

    shipped = _quiet(md.read_h5mu, REPO / "assets" / "test_data" / "sim2.h5mu")
    sim = _quiet(simulate_multiome, n_cells=600, n_genes=400, n_peaks=3000, n_types=4, trajectory_fraction=0.3,
                 seed=2)
    assert "quality" not in sim.mdata.obs and not SimParams().has_low_quality
    assert shipped.obs_names.equals(sim.mdata.obs_names)
    for mod in ("rna", "atac"):
        assert (shipped.mod[mod].X != sim.mdata.mod[mod].X).nnz == 0
    recorded = json.loads(shipped.uns["coem"]["simulate"])["params"]
    assert recorded == json.loads(json.dumps(sim.params.record()))
    assert "empty_fraction" not in recorded


def test_planted_low_quality_cells_have_their_kind_and_counts():
    sim = _quiet(simulate_multiome, n_cells=1000, n_genes=300, n_peaks=2000, seed=3, chunk_size=400, **LOW_QUALITY)
    obs = sim.mdata.obs
    quality = obs["quality"].astype(str).to_numpy()
    assert {k: int((quality == k).sum()) for k in ("good", "empty", "low_count", "damaged", "doublet")} == {
        "good": 800, "empty": 50, "low_count": 50, "damaged": 50, "doublet": 50}
    rna, atac = _row_sums(sim.mdata.mod["rna"].X), _row_sums(sim.mdata.mod["atac"].X)
    mito = np.flatnonzero(sim.mdata.mod["rna"].var_names.str.startswith("MT-"))
    pct_mito = 100 * _row_sums(sim.mdata.mod["rna"].X[:, mito]) / np.maximum(rna, 1)
    good = quality == "good"
    med = lambda values, kind: np.median(values[quality == kind])  # noqa: E731
    assert med(rna, "empty") < 0.05 * np.median(rna[good]) and med(atac, "empty") < 0.05 * np.median(atac[good])
    assert med(rna, "low_count") < 0.15 * np.median(rna[good]) and med(atac, "low_count") < 0.15 * np.median(atac[good])
    assert med(pct_mito, "damaged") > 25 and np.median(pct_mito[good]) < 6
    assert med(rna, "damaged") < 0.35 * np.median(rna[good])
    assert 1.6 < med(rna, "doublet") / np.median(rna[good]) < 2.5  # two cells' counts
    again = _quiet(simulate_multiome, n_cells=1000, n_genes=300, n_peaks=2000, seed=3, chunk_size=400, **LOW_QUALITY)
    assert (again.mdata.mod["atac"].X != sim.mdata.mod["atac"].X).nnz == 0
    assert np.array_equal(again.mdata.obs["quality"].to_numpy(), obs["quality"].to_numpy())


def test_low_quality_fractions_are_validated():
    with pytest.raises(CoemInputError, match=r"doublet_fraction must lie in \[0, 0.5\]"):
        SimParams(n_cells=20, doublet_fraction=0.7)
    with pytest.raises(CoemInputError, match="low-quality fractions add up to 0.9"):
        SimParams(n_cells=20, empty_fraction=0.45, damaged_fraction=0.45)


def test_cli_writes_the_quality_counts(tmp_path):
    sim = _run_cli(tmp_path, "h5mu", "--empty-fraction", "0.1", "--doublet-fraction", "0.05")
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["quality"] == {"good": 102, "empty": 12, "low_count": 0, "damaged": 0, "doublet": 6}
    assert "quality" not in sim.mdata.obs  # the reference simulation in _run_cli has none
