"""Metacell metrics (SEACells' definitions) and the evaluate command, on hand-computed examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem import metrics
from coem.errors import CoemInputError

REPO = Path(__file__).resolve().parents[2]

# 6 cells in a 2-component space; metacells A = {0, 1, 2}, B = {3, 4}, C = {5} (a singleton).
# By hand:
#   A: comp0 [0, 1, 2] var 1; comp1 [0, 0, 3] mean 1, var (1 + 1 + 4) / 2 = 3 -> compactness 2
#   B: comp0 [10, 12] var 2;  comp1 [0, 4] var 8                          -> compactness 5
#   C: one cell, variance undefined                                        -> compactness NaN
#   centroids A (1, 1), B (11, 2), C (1, 5): |AC| = 4, |AB| = sqrt(101), |BC| = sqrt(109)
#   separation A 4 (to C), B sqrt(101) (to A), C 4 (to A)
COMPONENTS = np.array([[0, 0], [1, 0], [2, 3], [10, 0], [12, 4], [1, 5]], dtype=float)
METACELLS = np.array(["A", "A", "A", "B", "B", "C"], dtype=object)
# Labels: A has x, x, y -> x with 2/3; B has y and an unlabelled cell -> y with 1/1; C unlabelled.
LABELS = np.array(["x", "x", "y", "y", None, None], dtype=object)


def blobs_on_a_line(n: int = 150, seed: int = 0) -> np.ndarray:
    """A connected point cloud (a noisy curve in 5-D), so the kNN graph has one component."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 6, n))
    curve = np.column_stack([t, np.sin(t), np.cos(t), 0.3 * t ** 1.5, np.zeros(n)])
    return curve + 0.15 * rng.normal(size=(n, 5))


# --------------------------------------------------------------------------- compactness


def test_compactness_hand_computed_and_singleton_nan():
    out = metrics.compactness(COMPONENTS, METACELLS)
    assert list(out.index) == ["A", "B", "C"]
    assert out.loc["A", "compactness"] == pytest.approx(2.0)
    assert out.loc["B", "compactness"] == pytest.approx(5.0)
    assert math.isnan(out.loc["C", "compactness"])


def test_compactness_drops_cells_without_metacell():
    mc = METACELLS.copy()
    mc[2] = None  # A becomes {0, 1}: comp0 [0, 1] var 0.5, comp1 [0, 0] var 0 -> 0.25
    out = metrics.compactness(COMPONENTS, mc)
    assert out.loc["A", "compactness"] == pytest.approx(0.25)


def test_compactness_rejects_mismatched_lengths():
    with pytest.raises(CoemInputError, match=r"one row per cell"):
        metrics.compactness(COMPONENTS, METACELLS[:5])


# --------------------------------------------------------------------------- separation


def test_separation_hand_computed():
    out = metrics.separation(COMPONENTS, METACELLS)
    assert out["separation"].to_dict() == pytest.approx({"A": 4.0, "B": math.sqrt(101), "C": 4.0})
    assert out.loc["A", "nearest_metacell"] == "C"
    assert out.loc["B", "nearest_metacell"] == "A"
    assert out.loc["C", "nearest_metacell"] == "A"


def test_separation_single_metacell_is_nan():
    out = metrics.separation(COMPONENTS, ["A"] * 6)
    assert len(out) == 1 and math.isnan(out.loc["A", "separation"])


def test_centroids_are_means():
    cent = metrics.centroids(COMPONENTS, METACELLS)
    np.testing.assert_allclose(cent.to_numpy(), [[1, 1], [11, 2], [1, 5]])


# --------------------------------------------------------------------------- purity and sizes


def test_purity_hand_computed_ignores_unlabelled_cells():
    out = metrics.purity(LABELS, METACELLS)
    assert out.loc["A", "label"] == "x" and out.loc["A", "purity"] == pytest.approx(2 / 3)
    assert out.loc["B", "label"] == "y" and out.loc["B", "purity"] == pytest.approx(1.0)
    assert pd.isna(out.loc["C", "label"]) and math.isnan(out.loc["C", "purity"])


def test_purity_tie_goes_to_first_seen_label():
    out = metrics.purity(["z", "w", "w", "z"], ["M", "M", "M", "M"])
    assert out.loc["M", "label"] == "z" and out.loc["M", "purity"] == pytest.approx(0.5)


def test_size_summary_hand_computed():
    s = metrics.size_summary(METACELLS)
    assert s == {
        "n_cells": 6, "n_metacells": 3, "n_singletons": 1, "size_mean": 2.0, "size_sd": 1.0,
        "size_min": 1, "size_median": 2.0, "size_max": 3,
        # balance: largest 3 of 6 cells; Gini of sorted [1, 2, 3] = (-2*1 + 0*2 + 2*3) / (3 * 6)
        "largest_share": 0.5, "size_gini": pytest.approx(4 / 18),
    }


def test_gini_extremes():
    assert metrics.gini([5, 5, 5, 5]) == 0.0
    assert metrics.gini([0, 0, 0, 12]) == pytest.approx(3 / 4)  # (n - 1) / n
    assert metrics.gini([]) is None


def test_cell_weighted_purity_counts_each_cell_once():
    # A: x, x, y -> 2 cells agree with the majority x; B: y -> 1 agrees; 3 of 4 labelled cells
    assert metrics.cell_weighted_purity(LABELS, METACELLS) == pytest.approx(3 / 4)
    # a 2-cell pure metacell and a 98-cell one with 49 of each label: mean 0.75, per cell 0.51
    mc = np.array(["s"] * 2 + ["b"] * 98, dtype=object)
    lab = np.array(["x", "x"] + ["x"] * 49 + ["y"] * 49, dtype=object)
    assert metrics.purity(lab, mc)["purity"].mean() == pytest.approx(0.75)
    assert metrics.cell_weighted_purity(lab, mc) == pytest.approx(51 / 100)


def test_disconnection_flag_rule_and_sentence():
    calm = metrics.disconnection_flag("rna", [0.1, 0.2, 0.3], [1.0, 1.5, 2.0])
    assert calm == {"nearly_disconnected": False, "reason": None, "sentence": None}
    # one value above 1e6 (the demo's ATAC reached 5.6e+25)
    big = metrics.disconnection_flag("atac", [0.1, 0.2, 5.6e25], [1.0, 1.2, 1.1])
    assert big["nearly_disconnected"] and "compactness up to 5.6e+25 (median 0.2)" in big["reason"]
    assert big["sentence"].startswith("ATAC: the diffusion graph is nearly disconnected")
    assert big["sentence"].endswith("read the medians.")
    # no value above 1e6, but the mean is > 100 x the median
    skew = metrics.disconnection_flag("rna", [0.01] * 300 + [5e5], [1.0] * 301)
    assert skew["nearly_disconnected"] and "mean compactness" in skew["reason"] and "x its median 0.01" in skew["reason"]


def test_evaluate_metacells_table_and_mean_sd():
    table, summary = metrics.evaluate_metacells(METACELLS, {"rna": COMPONENTS}, LABELS)
    assert list(table.columns) == ["size", "compactness_rna", "separation_rna", "nearest_rna", "label", "purity"]
    assert table["size"].tolist() == [3, 2, 1]
    # compactness: NaN singleton skipped -> mean of 2 and 5, sd sqrt(4.5)
    assert summary["compactness_rna"] == pytest.approx({"mean": 3.5, "sd": math.sqrt(4.5), "n": 2, "median": 3.5})
    sep = [4.0, math.sqrt(101), 4.0]
    assert summary["separation_rna"] == pytest.approx({"mean": np.mean(sep), "sd": np.std(sep, ddof=1), "n": 3,
                                                       "median": 4.0})
    assert summary["purity"] == pytest.approx({"mean": 5 / 6, "sd": math.sqrt(1 / 18), "n": 2, "median": 5 / 6})
    assert summary["purity_cells"] == pytest.approx(3 / 4)
    assert summary["diffusion"]["rna"]["nearly_disconnected"] is False
    json.dumps(summary, allow_nan=False)  # JSON-safe: NaN never leaks into the summary


def test_evaluate_metacells_without_labels_has_no_purity():
    table, summary = metrics.evaluate_metacells(METACELLS, {"rna": COMPONENTS, "atac": COMPONENTS * 2})
    assert "purity" not in summary and "purity" not in table.columns
    assert summary["separation_atac"]["mean"] == pytest.approx(2 * summary["separation_rna"]["mean"])
    assert summary["compactness_atac"]["mean"] == pytest.approx(4 * 3.5)


# --------------------------------------------------------------------------- diffusion maps


def test_adaptive_kernel_hand_computed():
    # 1-D points 0, 1, 3, 7 with knn=3: 2 neighbours each, bandwidth = 1st neighbour distance.
    # 0: {1 (d1), 3 (d3)}, s=1   1: {0 (1), 3 (2)}, s=1   3: {1 (2), 0 (3)}, s=2   7: {3 (4), 1 (6)}, s=4
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    W = np.zeros((4, 4))
    W[0, 1], W[0, 2] = math.exp(-1), math.exp(-3)
    W[1, 0], W[1, 2] = math.exp(-1), math.exp(-2)
    W[2, 1], W[2, 0] = math.exp(-1), math.exp(-1.5)
    W[3, 2], W[3, 1] = math.exp(-1), math.exp(-1.5)
    K = metrics.adaptive_kernel(X, knn=3)
    assert sp.issparse(K)
    np.testing.assert_allclose(K.toarray(), W + W.T, rtol=1e-12)


def test_diffusion_maps_are_eigenpairs_of_the_markov_matrix():
    X = blobs_on_a_line()
    vals, vecs = metrics.diffusion_maps(X, n_components=10, knn=30, seed=0)
    assert vals.shape == (10,) and vecs.shape == (150, 10)
    assert np.all(np.diff(vals) <= 0) and vals[0] == pytest.approx(1.0, abs=1e-8) and vals[1] < 1 - 1e-3
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=0), 1.0)
    np.testing.assert_allclose(np.abs(vecs[:, 0]), 1 / math.sqrt(150), rtol=1e-6)  # trivial: constant
    K = metrics.adaptive_kernel(X, knn=30).toarray()
    T = K / K.sum(axis=1, keepdims=True)
    residual = np.linalg.norm(T @ vecs - vecs * vals, axis=0)
    assert residual.max() < 1e-3  # ARPACK with Palantir's tol=1e-4


def test_diffusion_components_shape_scaling_and_determinism():
    X = blobs_on_a_line()
    vals, vecs = metrics.diffusion_maps(X, seed=3)
    comp = metrics.diffusion_components(X, n_components=10, knn=30, n_eigs=10, seed=3)
    assert comp.shape == (150, 9)
    np.testing.assert_allclose(comp, vecs[:, 1:10] * (vals[1:10] / (1 - vals[1:10])))
    np.testing.assert_array_equal(comp, metrics.diffusion_components(X, seed=3))


def test_multiscale_space_scaling_by_hand():
    vals = np.array([1.0, 0.5, 0.25, 0.2])
    vecs = np.arange(12, dtype=float).reshape(3, 4)
    out = metrics.multiscale_space(vals, vecs, n_eigs=3)
    np.testing.assert_allclose(out, vecs[:, 1:3] * np.array([1.0, 1 / 3]))
    with pytest.raises(CoemInputError, match="n_eigs must be in"):
        metrics.multiscale_space(vals, vecs, n_eigs=5)


def test_diffusion_maps_need_more_cells_than_knn():
    with pytest.raises(CoemInputError, match=r"more cells than knn: 20 cells, knn=30"):
        metrics.diffusion_maps(np.random.default_rng(0).normal(size=(20, 3)), knn=30)


def test_diffusion_maps_reject_nan():
    X = blobs_on_a_line()
    X[3, 1] = np.nan
    with pytest.raises(CoemInputError, match="NaN or infinite"):
        metrics.diffusion_maps(X)


# --------------------------------------------------------------------------- the command


def _toy_mudata(with_labels: bool = True, seed: int = 0) -> md.MuData:
    """180 cells from 3 states (60 each), 60 genes / 90 peaks of counts; 18 metacells of 10
    cells, each inside one state except MC00006 and MC00018 (5 + 5 cells of states 0 and 2)."""
    rng = np.random.default_rng(seed)
    n_per, states = 60, 3
    state = np.repeat(np.arange(states), n_per)
    gene_rate = rng.gamma(2.0, 1.0, size=(states, 60)) * 2
    peak_rate = rng.uniform(0.05, 0.6, size=(states, 90))
    rna = rng.poisson(gene_rate[state]).astype(np.float32)
    atac = (rng.uniform(size=(len(state), 90)) < peak_rate[state]).astype(np.float32)
    names = [f"cell{i:03d}" for i in range(len(state))]
    mdata = md.MuData({
        "rna": ad.AnnData(sp.csr_matrix(rna), obs=pd.DataFrame(index=names),
                          var=pd.DataFrame(index=[f"g{i}" for i in range(60)])),
        "atac": ad.AnnData(sp.csr_matrix(atac), obs=pd.DataFrame(index=names),
                           var=pd.DataFrame(index=[f"chr1:{i * 1000}-{i * 1000 + 500}" for i in range(90)])),
    })
    mc = np.array([f"MC{i // 10 + 1:05d}" for i in range(len(state))], dtype=object)
    mc[55:60], mc[170:175] = "MC00018", "MC00006"  # swap 5 cells of state 0 and 2 -> purity 0.5
    mdata.obs["metacell"] = mc
    if with_labels:
        mdata.obs["label"] = np.array(["s0", "s1", "s2"], dtype=object)[state]
    return mdata


MIXED = ["MC00006", "MC00018"]


@pytest.fixture()
def toy_h5mu(tmp_path):
    path = tmp_path / "toy.metacells.h5mu"
    _toy_mudata().write(str(path))
    return path


def test_cli_writes_all_outputs(tmp_path, toy_h5mu, monkeypatch):
    from coem.cli.evaluate import main

    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S1", "--input", str(toy_h5mu), "--prefix", "P", "--seed", "0",
                 "--n-pcs", "10", "--n-lsi", "10"]) == 0

    table = pd.read_csv("P.evaluation.tsv", sep="\t", index_col="metacell")
    assert len(table) == 18 and table["size"].tolist() == [10] * 18
    assert table.loc[MIXED, "purity"].tolist() == [0.5, 0.5]
    assert table.drop(index=MIXED)["purity"].eq(1.0).all()
    assert table.loc["MC00001", "label"] == "s0"

    summary = json.loads(Path("P.evaluation_summary.json").read_text())
    assert summary["sample"] == "S1" and summary["sizes"]["n_metacells"] == 18
    assert summary["purity"]["mean"] == pytest.approx((16 + 2 * 0.5) / 18)
    assert summary["record"]["seed"] == 0 and summary["record"]["params"]["knn"] == 30
    assert summary["compactness_rna"]["mean"] == pytest.approx(table["compactness_rna"].mean())

    npz = np.load("P.diffusion.npz")
    assert npz["rna_components"].shape == (180, 9) and npz["atac_components"].shape == (180, 9)
    assert npz["obs_names"][0] == "cell000" and int(npz["knn"]) == 30
    # The stored components reproduce the table: reuse by baselines gives the same numbers.
    recomputed = metrics.compactness(npz["atac_components"], _toy_mudata().obs["metacell"].to_numpy())
    np.testing.assert_allclose(recomputed["compactness"].to_numpy(), table["compactness_atac"].to_numpy())
    # The mixed metacells straddle two states: less compact than any pure one.
    for mod in ("rna", "atac"):
        assert table.loc[MIXED, f"compactness_{mod}"].min() > table.drop(index=MIXED)[f"compactness_{mod}"].max()

    mqc = json.loads(Path("P_evaluation_mqc.json").read_text())
    assert mqc["id"] == "coem_evaluation" and mqc["plot_type"] == "table"
    row = mqc["data"]["S1"]
    # the dubious-metacell test: the two mixed metacells (5 cells of another state) are flagged
    assert table.loc[MIXED, "dubious"].all(), table.filter(like="dubious")
    assert summary["dubious"]["n_metacells"] == 18 and summary["dubious"]["n_dubious"] == table["dubious"].sum()
    assert row["dubious_pct"] == pytest.approx(100 * table["dubious"].mean())
    assert set(row) == {"n_metacells", "largest_share", "size_gini", "purity_mean", "purity_cells", "warnings",
                        "dubious_pct",
                        *(f"{m}_{mod}_{stat}" for m in ("compactness", "separation") for mod in ("rna", "atac")
                          for stat in ("mean", "median"))}
    # Three well-separated states (diffusion eigenvalues 1, 0.9994, 0.9977 in RNA): the two mixed
    # metacells straddle isolated parts and their compactness drives the mean (151 against a
    # median of 0.024): flagged, the means left blank, a sentence instead.
    flagged = [mod for mod in ("rna", "atac") if summary["diffusion"][mod]["nearly_disconnected"]]
    assert "rna" in flagged
    for mod in flagged:
        assert row[f"compactness_{mod}_mean"] is None and row[f"separation_{mod}_mean"] is None
        assert summary["diffusion"][mod]["sentence"] in row["warnings"]
        assert summary[f"compactness_{mod}"]["mean"] > 100 * summary[f"compactness_{mod}"]["median"]
    assert row["warnings"].startswith("RNA: the diffusion graph is nearly disconnected (mean compactness")
    if "atac" not in flagged:
        assert row["separation_atac_mean"] == pytest.approx(summary["separation_atac"]["mean"])
    assert row["separation_atac_median"] == pytest.approx(table["separation_atac"].median())
    assert row["largest_share"] == pytest.approx(100 / 18) and row["size_gini"] == pytest.approx(0.0)
    assert row["purity_cells"] == pytest.approx(170 / 180) and summary["purity_cells"] == pytest.approx(170 / 180)
    assert set(mqc["headers"]) == set(row)
    assert all(v is None or isinstance(v, str) or abs(v) < 1e6 for v in row.values())
    box = json.loads(Path("P_purity_mqc.json").read_text())
    assert box["id"] == "coem_purity" and box["plot_type"] == "boxplot" and len(box["data"]["S1"]) == 18
    assert "COEM_EVALUATE" in Path("versions.yml").read_text()


def test_cli_without_labels_skips_purity(tmp_path, monkeypatch):
    from coem.cli.evaluate import main

    path = tmp_path / "nolabels.h5mu"
    _toy_mudata(with_labels=False).write(str(path))
    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S2", "--input", str(path), "--n-pcs", "10", "--n-lsi", "10"]) == 0
    assert not Path("S2_purity_mqc.json").exists()
    row = json.loads(Path("S2_evaluation_mqc.json").read_text())["data"]["S2"]
    assert "purity_mean" not in row and row["n_metacells"] == 18
    assert "purity" not in pd.read_csv("S2.evaluation.tsv", sep="\t").columns


def test_cli_missing_metacell_column_is_a_user_error(tmp_path, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.evaluate import main

    mdata = _toy_mudata()
    del mdata.obs["metacell"]
    path = tmp_path / "nometacell.h5mu"
    mdata.write(str(path))
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S3", "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: sample 'S3', file '{path}': obs has no 'metacell' column" in err
    assert not (tmp_path / "S3.evaluation.tsv").exists()


def test_cli_missing_input_file_is_a_user_error(tmp_path, capsys):
    from coem.cli._common import run_cli
    from coem.cli.evaluate import main

    assert run_cli(main, ["--sample", "S4", "--input", str(tmp_path / "absent.h5mu")]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_evaluate_shim_is_the_four_line_wrapper():
    shim = REPO / "bin" / "coem_evaluate.py"
    assert shim.stat().st_mode & 0o111, "bin/coem_evaluate.py must be executable"
    assert "from coem.cli.evaluate import main" in shim.read_text()


def test_disconnected_graph_is_reported(monkeypatch):
    """Two far-apart clouds: eigenvalue 1 twice, Palantir's scaling explodes; we say so.

    ARPACK at Palantir's tolerance may return the repeated eigenvalue 1 only once (scipy 1.17.1:
    1, 0.847, ...), so the parts are also counted on the kernel graph."""
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(60, 3)), 100 + rng.normal(size=(60, 3))])
    messages = []
    monkeypatch.setattr(metrics._log, "warning", lambda msg, *args: messages.append(msg % args))
    vals, _ = metrics.diffusion_maps(X, n_components=5, knn=15)
    assert vals[0] == pytest.approx(1.0, abs=1e-6)
    assert len(messages) == 1 and "2 (nearly) disconnected parts" in messages[0]


def test_large_samples_take_the_kernel_neighbours_from_the_approximate_backend(monkeypatch):
    """From coem.graph.AUTO_APPROX_MIN_CELLS cells the diffusion kernel's neighbours come from the
    approximate backend (pynndescent; an exact search of 10^6 x 50 takes hours; its recall is in
    docs/benchmarks.md). Here a stand-in backend returns the exact lists, so the kernel must equal
    the exact one: the lists are used as they are (self dropped, k - 1 others)."""
    from coem import graph

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 1.0, size=(300, 8)) for c in (0.0, 6.0, 12.0)])
    exact_kernel = metrics.adaptive_kernel(X, knn=15)
    calls = []

    def backend(data, k, seed):
        calls.append((data.shape, k, seed))
        return graph._exact_knn(np.asarray(data, dtype=np.float64), k)

    monkeypatch.setattr(graph, "AUTO_APPROX_MIN_CELLS", 500)
    monkeypatch.setattr(graph, "_APPROX_KNN", backend)
    approx_kernel = metrics.adaptive_kernel(X, knn=15, seed=3)
    assert calls == [((900, 8), 15, 3)]
    assert abs(approx_kernel - exact_kernel).max() < 1e-12
