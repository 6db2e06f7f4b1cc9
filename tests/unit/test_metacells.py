"""Spectral metacells (coem.metacells) and the metacells command."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from coem.errors import CoemInputError
from coem.graph import knn, rbf_kernel
from coem import metacells
from coem.metacells import (
    EXACT_MAX_CELLS,
    SpectralMetacells,
    allot,
    coarse_partition,
    default_part_size,
    metacell_names,
    refine_partition,
    repair_count,
    resolve_n_metacells,
    size_summary,
)


def _blobs(n_per: int, n_blobs: int, dim: int, gap: float, seed: int):
    """Gaussian blobs (unit sd) with centres ``gap`` apart on orthogonal axes."""
    rng = np.random.default_rng(seed)
    centres = np.eye(n_blobs, dim) * gap
    truth = np.repeat(np.arange(n_blobs), n_per)
    return centres[truth] + rng.normal(size=(truth.size, dim)), truth


def _check_exact(labels: np.ndarray, n: int):
    assert labels.min() == 0 and labels.max() == n - 1
    assert np.all(np.bincount(labels) > 0)


# ----------------------------------------------------------------------------- counts


def test_resolve_n_metacells_rule_and_errors():
    assert resolve_n_metacells(7500) == 100
    assert resolve_n_metacells(112, cells_per_metacell=75) == 1  # round(1.49)
    assert resolve_n_metacells(113, cells_per_metacell=75) == 2  # round(1.51)
    assert resolve_n_metacells(10) == 1  # at least one
    assert resolve_n_metacells(10, n_metacells=10) == 10
    with pytest.raises(ValueError, match="500 metacells were asked for but there are only 200 cells"):
        resolve_n_metacells(200, n_metacells=500)
    with pytest.raises(CoemInputError, match="must be at least 1, got 0"):
        resolve_n_metacells(200, n_metacells=0)


def test_allot_is_exact_proportional_and_at_least_one():
    assert allot([50, 30, 20], 10).tolist() == [5, 3, 2]
    assert allot([1, 99], 3).tolist() == [1, 2]  # the tiny part still gets one
    assert allot([3, 3, 3], 4).tolist() == [2, 1, 1]  # tie goes to the first part
    assert allot([2, 2], 4).tolist() == [2, 2]  # never more than the part's size
    shares = allot([5000, 4100, 3333, 17], 200)
    assert shares.sum() == 200 and shares.min() >= 1
    with pytest.raises(ValueError):
        allot([5, 5], 1)


def test_repair_splits_largest_group_along_its_first_axis():
    X = np.c_[np.arange(10.0), np.zeros(10)]
    labels = repair_count(np.zeros(10, dtype=int), X, 2)
    assert labels.tolist() == [0] * 5 + [1] * 5
    # Three groups wanted: the two halves tie in size, the first (label 0) is split.
    assert repair_count(labels, X, 3).tolist() == [0, 0, 2, 2, 2, 1, 1, 1, 1, 1]


def test_names_and_summary():
    labels = np.array([0, 0, 1, 2, 2, 2])
    assert metacell_names(labels).tolist() == ["MC00001", "MC00001", "MC00002", "MC00003", "MC00003", "MC00003"]
    assert size_summary(labels) == {"n_cells": 6, "n_metacells": 3, "min_size": 1, "median_size": 2.0,
                                    "max_size": 3, "n_singletons": 1}


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("n_mc", [1, 3, 17, 58, 59, 60])
def test_exactly_n_nonempty_metacells_up_to_n_cells(n_mc):
    X = np.random.default_rng(5).normal(size=(60, 4))
    model = SpectralMetacells(n_metacells=n_mc, random_state=0).fit(X)
    _check_exact(model.labels_, n_mc)
    assert model.n_metacells_ == n_mc and model.summary_["n_metacells"] == n_mc


def test_disconnected_components_get_their_own_metacells():
    X, truth = _blobs(40, 3, 5, gap=100.0, seed=1)
    idx, dist = knn(X, k=15)
    assert connected_components(rbf_kernel(idx, dist))[0] == 3
    labels = SpectralMetacells(n_metacells=7, random_state=0).fit(X).labels_
    _check_exact(labels, 7)
    # No metacell mixes two components.
    assert all(len(set(truth[labels == m])) == 1 for m in range(7))
    # Fewer metacells than components: still exactly that many.
    _check_exact(SpectralMetacells(n_metacells=2, random_state=0).fit(X).labels_, 2)


def test_recovers_planted_blobs_on_a_connected_graph():
    """5 blobs 8 sd apart in 10-D, joined by a few bridge cells so the kNN graph is connected.

    Between-blob kernel weights then come only from the bridges, so the normalised Laplacian
    is nearly block diagonal and its top 5 eigenvectors are nearly blob indicators
    (Ng-Jordan-Weiss): k-means on them should put every blob cell in its own blob's
    metacell; ARI >= 0.95 allows about one percent of cells to be misplaced.
    """
    X, truth = _blobs(80, 5, 10, gap=8.0, seed=2)
    centres = np.eye(5, 10) * 8.0
    t = np.linspace(0.2, 0.8, 4)[:, None]
    bridges = np.vstack([centres[i] * (1 - t) + centres[i + 1] * t for i in range(4)])
    Xall = np.vstack([X, bridges])
    idx, dist = knn(Xall, k=15)
    assert connected_components(rbf_kernel(idx, dist))[0] == 1  # the spectral path, not components
    labels = SpectralMetacells(n_metacells=5, random_state=0).fit(Xall).labels_
    _check_exact(labels, 5)
    assert adjusted_rand_score(truth, labels[: truth.size]) >= 0.95


def test_deterministic_for_a_seed():
    X, _ = _blobs(60, 4, 6, gap=3.0, seed=3)
    a = SpectralMetacells(n_metacells=9, random_state=11).fit(X)
    b = SpectralMetacells(n_metacells=9, random_state=11).fit(X)
    assert np.array_equal(a.labels_, b.labels_)
    assert a.names_[0] == "MC00001"  # numbered in order of first cell


def test_partitioned_path_is_exact_and_keeps_metacells_inside_parts():
    X, _ = _blobs(150, 4, 5, gap=4.0, seed=4)
    model = SpectralMetacells(n_metacells=13, random_state=0, exact_max_cells=300, part_size=150).fit(X)
    assert model.strategy_ == "partitioned" and model.n_parts_ >= 3
    _check_exact(model.labels_, 13)
    assert all(len(set(model.parts_[model.labels_ == m])) == 1 for m in range(13))
    assert np.bincount(model.parts_).max() <= 1.5 * 150
    again = SpectralMetacells(n_metacells=13, random_state=0, exact_max_cells=300, part_size=150).fit(X)
    assert np.array_equal(model.labels_, again.labels_)


def test_partitioned_path_with_fewer_metacells_than_parts():
    X, _ = _blobs(40, 3, 4, gap=5.0, seed=7)
    model = SpectralMetacells(n_metacells=2, random_state=0, exact_max_cells=50, part_size=20).fit(X)
    assert model.strategy_ == "partitioned"
    _check_exact(model.labels_, 2)


@pytest.mark.parametrize("neighbours", ["parts", "global"])
def test_partitioned_path_is_exact_for_both_neighbour_designs(neighbours):
    X, _ = _blobs(100, 5, 5, gap=3.0, seed=8)
    model = SpectralMetacells(n_metacells=31, random_state=1, exact_max_cells=200, part_size=100,
                              neighbours=neighbours).fit(X)
    _check_exact(model.labels_, 31)
    assert set(model.timings_) == {"partition", "neighbours", "refine", "spectral"}


def test_partitioned_path_on_21k_cells_default_settings():
    """Above exact_max_cells (20,000) with every default: parts of about 1,000 cells.

    States 8 sd apart in 5-D (simulate_latent): every metacell should hold one state.
    """
    from coem.simulate import simulate_latent

    assert EXACT_MAX_CELLS == 20_000
    z, states = simulate_latent(21_000, dim=5, n_states=6, seed=3, spread=8.0)
    model = SpectralMetacells(random_state=0).fit(z)
    assert model.strategy_ == "partitioned" and model.part_size_ == 1000
    _check_exact(model.labels_, 280)  # round(21,000 / 75)
    assert 18 <= model.n_parts_ <= 26
    assert all(len(set(model.parts_[model.labels_ == m])) == 1 for m in range(0, 280, 7))
    purity = pd.crosstab(model.labels_, states).max(axis=1).sum() / z.shape[0]
    assert purity >= 0.99
    assert model.summary_["min_size"] >= 15 and model.summary_["max_size"] <= 250


def test_default_part_size_holds_about_13_metacells_and_at_least_1000_cells():
    assert default_part_size(1_000_000, 13_333) == 1000  # 975 -> the floor
    assert default_part_size(100_000, 500) == 2600
    assert default_part_size(5_000, 5_000) == 1000


def test_coarse_partition_two_levels_above_flat_max_parts(monkeypatch):
    X = np.random.default_rng(9).normal(size=(1200, 3))
    monkeypatch.setattr(metacells, "FLAT_MAX_PARTS", 4)
    parts = coarse_partition(X, 100, seed=0)
    sizes = np.bincount(parts)
    assert sizes.sum() == 1200 and sizes.min() > 0
    assert 12 <= sizes.size <= 24 and sizes.max() <= 1.5 * 100


def test_refine_partition_moves_a_sliver_to_the_part_of_its_neighbours():
    """Cells 0-5 form a group; k-means put 0-1 (a sliver) in part 1 with cells 6-9."""
    idx = np.array([
        [0, 2, 3, 4], [1, 2, 4, 5], [2, 3, 4, 0], [3, 2, 5, 1], [4, 5, 2, 1], [5, 4, 3, 2],
        [6, 7, 8, 9], [7, 6, 8, 9], [8, 9, 7, 6], [9, 8, 6, 1],
    ])
    parts = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 1])
    refined, moved = refine_partition(parts, idx)
    assert moved == 2
    assert refined.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    # A tie (two neighbours in each part) stays where it is.
    tie = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0]])
    assert refine_partition(np.array([0, 0, 1, 1]), tie) == (pytest.approx([0, 0, 1, 1]), 0)


def test_row_mode_prefers_the_smallest_value_on_ties():
    mode, count = metacells._row_mode(np.array([[3, 1, 3, 2], [5, 5, 4, 4], [7, 7, 7, 7]]))
    assert mode.tolist() == [3, 4, 7] and count.tolist() == [2, 2, 4]


def test_single_precision_eigenpairs_match_lapack():
    """ARPACK in float32 against LAPACK in float64 on a 1,200-cell kernel (20 vectors): the
    eigenvalues (they weigh the diffusion coordinates) and the subspace."""
    from scipy.linalg import eigh
    import scipy.sparse as sps

    X = np.random.default_rng(10).normal(size=(1200, 3))
    W = rbf_kernel(*knn(X, k=15))
    dinv = 1 / np.sqrt(np.asarray(W.sum(axis=1)).ravel())
    A = sps.diags(dinv) @ W @ sps.diags(dinv)
    vals, approx = metacells._eigenpairs(A.tocsr(), 20, seed=0)
    exact_vals, exact = eigh(A.toarray(), subset_by_index=[1200 - 20, 1199])
    cosines = np.linalg.svd(exact.T @ approx, compute_uv=False)
    assert approx.dtype == np.float64 and cosines.min() > 0.999
    assert np.all(np.diff(vals) <= 0)  # largest first
    np.testing.assert_allclose(vals, exact_vals[::-1], atol=1e-5)


def test_diffusion_weights_sum_the_powers_of_each_eigenvalue():
    lam = np.array([1.0, 0.999999, 0.95, 0.5, 0.0, -0.3])
    expected = [sum(max(x, 0.0) ** t for t in range(1, 51)) for x in lam]
    got = metacells.diffusion_weights(lam, steps=50)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert got[0] == 50.0 and got[-1] == 0.0  # bounded next to 1, nothing for negative eigenvalues


def test_merge_small_moves_a_tiny_group_to_its_best_connected_neighbour():
    """Cells 0-1 form a metacell of 2 (under a third of the mean 10): they share most kernel
    weight with metacell 1, join it, and the largest metacell is split to keep 3."""
    import scipy.sparse as sps

    labels = np.array([0, 0] + [1] * 8 + [2] * 20)
    rows, cols, vals = [], [], []
    for cell, (to, w) in {0: (2, 0.9), 1: (25, 0.2)}.items():
        rows += [cell, to]; cols += [to, cell]; vals += [w, w]
    rows += [1, 3]; cols += [3, 1]; vals += [0.8, 0.8]
    W = sps.csr_matrix((vals, (rows, cols)), shape=(30, 30))
    X = np.arange(30, dtype=float)[:, None]
    out = metacells.merge_small(labels, W, X, 3, min_size=10 / 3)
    _check_exact(out, 3)
    assert out[0] == out[1] == out[2]  # with metacell 1 (weight 1.7 against 0.2)
    assert np.bincount(out).min() >= 4


def test_merge_small_keeps_a_group_with_no_edge_out():
    import scipy.sparse as sps

    labels = np.array([0, 1, 1, 1])
    W = sps.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]], dtype=float))
    out = metacells.merge_small(labels, W, np.zeros((4, 1)), 2, min_size=1.5)
    assert np.array_equal(out, labels)


def _njw_labels(X, n_metacells, seed=0):
    """The previous design, kept here as the reference: rows of the top eigenvectors of
    D^-1/2 W D^-1/2 normalised to unit length (Ng-Jordan-Weiss), then k-means."""
    import scipy.sparse as sps
    from scipy.sparse.linalg import eigsh
    from sklearn.cluster import KMeans

    W = rbf_kernel(*knn(X, k=15))
    dinv = 1 / np.sqrt(np.asarray(W.sum(axis=1)).ravel())
    A = sps.diags(dinv) @ W @ sps.diags(dinv)
    _, vecs = eigsh(A, k=n_metacells, which="LA", v0=np.random.default_rng(seed).uniform(-1, 1, X.shape[0]))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return KMeans(n_metacells, n_init=3, random_state=seed).fit_predict(vecs)


def test_diffusion_coordinates_separate_metacells_better_than_njw():
    """On 3,000 cells of overlapping simulated states, metacells from the multiscale diffusion
    coordinates are more separated and more compact (SEACells' definitions, on diffusion
    components of the latent) than k-means on NJW's row-normalised eigenvectors, and as pure.
    Measured: separation 0.176 vs 0.110, compactness 0.0049 vs 0.0075, purity 0.922 vs 0.924.
    """
    from coem.metrics import diffusion_components, evaluate_metacells
    from coem.simulate import simulate_latent

    z, states = simulate_latent(3000, dim=10, n_states=10, seed=0, spread=2.0)
    components = {"z": diffusion_components(z, seed=0)}
    new = SpectralMetacells(n_metacells=40, random_state=0).fit(z).labels_
    _, ours = evaluate_metacells(new.astype(str), components, states)
    _, njw = evaluate_metacells(_njw_labels(z, 40).astype(str), components, states)
    assert ours["separation_z"]["mean"] > 1.3 * njw["separation_z"]["mean"]
    assert ours["compactness_z"]["mean"] < njw["compactness_z"]["mean"]
    assert ours["purity"]["mean"] >= njw["purity"]["mean"] - 0.01
    assert np.bincount(new).min() >= 75 / 3  # no metacell under a third of the mean size


def test_a_far_tiny_group_is_merged_unless_merging_is_off():
    """4 cells 6 sd away from a 600-cell blob: diffusion distance puts them far from everything,
    so k-means gives them a metacell of 4; merging (the default) joins them to a neighbour."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(600, 5)), rng.normal(scale=0.3, size=(4, 5)) + 6])
    off = SpectralMetacells(n_metacells=8, random_state=0, min_size_fraction=0).fit(X).labels_
    assert np.bincount(off).min() == 4 and len(set(off[-4:])) == 1
    on = SpectralMetacells(n_metacells=8, random_state=0).fit(X).labels_
    _check_exact(on, 8)
    assert np.bincount(on).min() >= 604 / 8 / 3 and np.bincount(on)[on[-1]] > 4


def test_njw_coordinates_stay_available_and_make_more_even_metacells():
    from coem.simulate import simulate_latent

    z, _ = simulate_latent(3000, dim=10, n_states=10, seed=0, spread=2.0)
    njw = SpectralMetacells(n_metacells=40, random_state=0, coordinates="njw").fit(z).labels_
    diffusion = SpectralMetacells(n_metacells=40, random_state=0).fit(z).labels_
    _check_exact(njw, 40)
    assert np.bincount(njw).std() < np.bincount(diffusion).std()
    with pytest.raises(CoemInputError, match="coordinates must be one of diffusion, njw"):
        SpectralMetacells(n_metacells=40, coordinates="pca").fit(z)


def test_singletons_are_reported_with_a_warning(caplog):
    X = np.random.default_rng(6).normal(size=(12, 2))
    logger = logging.getLogger("coem.metacells")
    logger.addHandler(caplog.handler)
    try:
        model = SpectralMetacells(n_metacells=12).fit(X)
    finally:
        logger.removeHandler(caplog.handler)
    assert model.summary_["n_singletons"] == 12
    assert any("12 metacells hold a single cell" in r.getMessage() for r in caplog.records)


def test_fit_rejects_bad_embeddings():
    with pytest.raises(CoemInputError, match="NaN or infinite"):
        SpectralMetacells(n_metacells=2).fit(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="5 metacells were asked for but there are only 3 cells"):
        SpectralMetacells(n_metacells=5).fit(np.zeros((3, 2)))
    with pytest.raises(CoemInputError, match="k must be at least 2"):
        SpectralMetacells(n_metacells=2, k=1).fit(np.zeros((3, 2)))
    with pytest.raises(CoemInputError, match="neighbours must be one of parts, global, got 'ann'"):
        SpectralMetacells(n_metacells=2, neighbours="ann").fit(np.zeros((3, 2)))


# ----------------------------------------------------------------------------- scikit-learn estimator

from sklearn.base import clone  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


# n_metacells=3: check_clustering fits 50 blobs of 3 clusters and wants ARI > 0.4; the default
# (one metacell per 75 cells) makes a single metacell of 50 cells. check_array_api_input skips
# itself unless SCIPY_ARRAY_API=1 is set (numpy input only here). Every other check applies.
@parametrize_with_checks([SpectralMetacells(n_metacells=3)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_estimator_params_clone_and_fit_predict():
    X, truth = _blobs(40, 3, 4, gap=10.0, seed=0)
    model = SpectralMetacells(n_metacells=3, random_state=5, k=10)
    assert model.get_params()["random_state"] == 5 and model.get_params()["k"] == 10
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    labels = model.fit_predict(X)
    np.testing.assert_array_equal(labels, model.labels_)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert model.n_features_in_ == 4
    np.testing.assert_array_equal(twin.fit(X).labels_, labels)
    # a RandomState draws an int seed; None means 0 (deterministic by design)
    np.testing.assert_array_equal(SpectralMetacells(n_metacells=3, random_state=None).fit_predict(X),
                                  SpectralMetacells(n_metacells=3, random_state=0).fit_predict(X))
    assert SpectralMetacells(n_metacells=3, random_state=np.random.RandomState(1)).fit_predict(X).max() == 2


def test_seed_is_a_deprecated_alias_of_random_state():
    X, _ = _blobs(30, 3, 4, gap=3.0, seed=1)
    with pytest.warns(FutureWarning, match=r"seed=\.\.\.\) is deprecated; use random_state"):
        old = SpectralMetacells(n_metacells=7, seed=4).fit(X).labels_
    np.testing.assert_array_equal(old, SpectralMetacells(n_metacells=7, random_state=4).fit(X).labels_)


@pytest.mark.parametrize("params, message", [
    ({"n_metacells": 0}, "n_metacells must be None or an integer of at least 1, got 0"),
    ({"n_metacells": 2.5}, "n_metacells must be None or an integer of at least 1, got 2.5"),
    ({"cells_per_metacell": -1}, "cells_per_metacell must be positive, got -1"),
    ({"k": 1}, "k must be at least 2"),
    ({"diffusion_steps": 0}, "diffusion_steps must be at least 1, got 0"),
    ({"min_size_fraction": 1.0}, r"min_size_fraction must be in \[0, 1\), got 1.0"),
    ({"part_size": 1}, "part_size must be None or an integer of at least 2, got 1"),
    ({"knn_method": "hnsw"}, "knn_method must be one of auto, exact, approx, got 'hnsw'"),
    ({"random_state": "zero"}, "random_state must be None, an int or a numpy RandomState"),
])
def test_bad_parameters_raise_value_error_in_fit_not_init(params, message):
    model = SpectralMetacells(**params)  # storing never fails (scikit-learn convention)
    with pytest.raises(ValueError, match=message) as info:
        model.fit(np.random.default_rng(0).normal(size=(20, 3)))
    assert isinstance(info.value, CoemInputError)


# ----------------------------------------------------------------------------- command


@pytest.fixture
def embedded_h5mu(tmp_path, tiny_sim):
    """tiny_sim (200 cells) with labels and a stand-in embedding (state means + noise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = tiny_sim.mdata.copy()
    state = mdata.obs["state"].astype(str).to_numpy()
    mdata.obs["label"] = state
    codes = pd.factorize(state)[0]
    rng = np.random.default_rng(0)
    mdata.obsm["X_embedding"] = (np.eye(codes.max() + 1, 6)[codes] * 6 + rng.normal(size=(200, 6))).astype(np.float32)
    path = tmp_path / "S1.embed.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(str(path))
    return path


def test_cli_writes_metacells_sizes_and_multiqc(tmp_path, embedded_h5mu, monkeypatch):
    from coem.cli.metacells import main

    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S1", "--input", str(embedded_h5mu), "--prefix", "P", "--n-metacells", "8",
                 "--seed", "3"]) == 0
    import anndata

    out = anndata.read_h5ad("P.metacells.h5ad")  # only what the step adds: obs with the metacell, no counts
    assert out.obs["metacell"].nunique() == 8 and out.obs["metacell"].iloc[0] == "MC00001"
    assert out.X is None and out.n_obs == 200 and "label" in out.obs
    record = json.loads(out.uns["coem"]["metacells"])
    assert record["seed"] == 3 and record["params"]["n_metacells"] == 8 and record["params"]["k"] == 15
    assert record["params"]["coordinates"] == "diffusion" and record["params"]["diffusion_steps"] == 50 and record["params"]["min_size_fraction"] == pytest.approx(1 / 3)

    sizes = pd.read_csv("P.metacell_sizes.tsv", sep="\t")
    assert list(sizes.columns) == ["metacell", "size", "label", "label_fraction"]
    assert sizes["size"].sum() == 200 and len(sizes) == 8
    assert sizes["label_fraction"].between(0, 1).all()

    table = json.loads(Path("P_metacells_summary_mqc.json").read_text())
    assert table["id"] == "coem_metacells_summary" and table["plot_type"] == "table"
    row = table["data"]["S1"]
    assert row["cells"] == 200 and row["metacells"] == 8 and row["singletons"] == 0
    assert row["min_size"] == sizes["size"].min() and row["max_size"] == sizes["size"].max()
    assert row["seconds"] >= 0
    box = json.loads(Path("P_metacell_sizes_mqc.json").read_text())
    assert box["id"] == "coem_metacell_sizes" and box["plot_type"] == "boxplot"
    assert sorted(box["data"]["S1"]) == sorted(sizes["size"].astype(float).tolist())
    assert "COEM_METACELLS" in Path("versions.yml").read_text()
    # the report's 2-D pictures: every cell (200 < 1,500), coloured by metacell and by label
    by_mc = json.loads(Path("P_cells_2d_metacell_mqc.json").read_text())
    assert by_mc["id"] == "coem_cells_2d_metacell_S1" and by_mc["plot_type"] == "scatter"
    assert set(by_mc["data"]) == set(out.obs["metacell"]) and sum(map(len, by_mc["data"].values())) == 200
    assert "Good:" in by_mc["description"]
    by_label = json.loads(Path("P_cells_2d_label_mqc.json").read_text())
    assert set(by_label["data"]) == set(out.obs["label"])
    colours = {p["color"] for p in by_label["data"][sorted(by_label["data"])[0]]}
    assert len(colours) == 1  # one colour per label


def test_cli_too_few_cells_names_sample_and_numbers(tmp_path, embedded_h5mu, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.metacells import main

    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S9", "--input", str(embedded_h5mu), "--n-metacells", "500"]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: sample 'S9', file '{embedded_h5mu}': 500 metacells were asked for but there are only 200" in err
    assert not Path("S9.metacells.h5ad").exists()


def test_cli_missing_embedding_is_a_user_error(tmp_path, tiny_sim, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.metacells import main

    path = tmp_path / "noembed.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tiny_sim.mdata.write(str(path))
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S2", "--input", str(path)]) == 2
    assert "obsm has no 'X_embedding'" in capsys.readouterr().err


def test_cli_partitioned_path_records_its_design(tmp_path, embedded_h5mu, monkeypatch):
    from coem.cli.metacells import main

    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S1", "--input", str(embedded_h5mu), "--prefix", "P", "--n-metacells", "6",
                 "--exact-max-cells", "100", "--part-size", "60", "--neighbours", "global"]) == 0
    import anndata

    out = anndata.read_h5ad("P.metacells.h5ad")
    assert out.obs["metacell"].nunique() == 6
    record = json.loads(out.uns["coem"]["metacells"])
    assert record["strategy"] == "partitioned" and record["params"]["neighbours"] == "global"
    assert record["part_size"] == 60 and record["n_parts"] >= 3
    assert {"partition", "neighbours", "refine", "spectral", "metacells_s"} <= set(record["timings"])


def test_cli_rejects_a_part_size_below_two(tmp_path, embedded_h5mu, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.metacells import main

    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S3", "--input", str(embedded_h5mu), "--part-size", "1"]) == 2
    assert "--part-size must be at least 2, got 1" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--diffusion-steps", "0", "--diffusion-steps must be at least 1, got 0"),
    ("--min-size-fraction", "1", "--min-size-fraction must be in [0, 1), got 1.0"),
])
def test_cli_rejects_bad_diffusion_options(tmp_path, embedded_h5mu, monkeypatch, capsys, option, value, message):
    from coem.cli._common import run_cli
    from coem.cli.metacells import main

    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S3", "--input", str(embedded_h5mu), option, value]) == 2
    assert message in capsys.readouterr().err
