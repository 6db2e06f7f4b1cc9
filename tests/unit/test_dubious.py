"""Dubious-metacell flags (coem.dubious): mixed metacells are flagged, pure ones are not."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from coem import dubious
from coem.errors import CoemInputError


@pytest.fixture(scope="module")
def planted():
    """1,200 simulated cells of 4 types; 8 pure metacells of 50 cells (2 per type) and 4 mixed
    ones of 25 + 25 cells from two types; the MuData holds just those 600 cells."""
    from coem.simulate import simulate_multiome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sim = simulate_multiome(n_cells=1200, n_genes=500, n_peaks=3000, n_types=4, trajectory_fraction=0.0, seed=0)
    mdata = sim.mdata
    state = mdata.obs["state"].astype(str).to_numpy()
    types = np.unique(state)
    rng = np.random.default_rng(0)
    pools = {t: list(rng.permutation(np.flatnonzero(state == t))) for t in types}
    cells, ids = [], []
    for i in range(8):
        t = types[i % 4]
        cells += [pools[t].pop() for _ in range(50)]
        ids += [f"pure{i}"] * 50
    for i, (a, b) in enumerate([(0, 1), (1, 2), (2, 3), (3, 0)]):
        cells += [pools[types[a]].pop() for _ in range(25)] + [pools[types[b]].pop() for _ in range(25)]
        ids += [f"mixed{i}"] * 50
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sub = mdata[np.asarray(cells)].copy()
    sub.obs["metacell"] = ids
    return sub


def test_mixed_metacells_are_flagged_and_pure_ones_are_not(planted):
    table = dubious.dubious_metacells(planted, n_permutations=50, seed=0)
    assert list(table.columns) == ["excess_rna", "p_rna", "q_rna", "dubious_rna",
                                   "excess_atac", "p_atac", "q_atac", "dubious_atac", "dubious"]
    mixed = table.index.str.startswith("mixed")
    assert table.loc[mixed, "dubious"].all(), table
    assert not table.loc[~mixed, "dubious"].any(), table
    # the pure metacells' remaining correlation is small; every mixture is far above it in one modality
    assert (table.loc[~mixed, ["excess_rna", "excess_atac"]] < dubious.MIN_EXCESS).all().all()
    # (types 0 and 1 are twins in ATAC: that mixture shows in RNA only, excess 0.009)
    assert (table.loc[mixed, ["excess_rna", "excess_atac"]].max(axis=1) > 1.5 * dubious.MIN_EXCESS).all()
    s = dubious.summary(table)
    assert s["n_metacells"] == 12 and s["n_dubious"] == 4 and s["pct_dubious"] == pytest.approx(100 / 3)
    # seeded: the same call gives the same numbers
    again = dubious.dubious_metacells(planted, n_permutations=50, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_mean_squared_correlation_by_hand():
    # two identical columns and one independent-by-construction column (orthogonal, centred)
    Z = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    # correlations: r12 = 1, r13 = r23 = 0 -> mean of squared off-diagonals = 2 * 1 / 6
    assert dubious.mean_squared_correlation(Z) == pytest.approx(1 / 3)
    assert dubious.mean_squared_correlation(Z.T.copy().T[:, :2]) == pytest.approx(1.0)
    # a constant column is left out
    assert dubious.mean_squared_correlation(np.c_[Z[:, :2], np.ones(4)]) == pytest.approx(1.0)
    # batched over permutations: same as one by one
    batch = np.stack([Z, Z[:, [0, 2, 1]]])
    np.testing.assert_allclose(dubious.mean_squared_correlation(batch), [1 / 3, 1 / 3])


def test_benjamini_hochberg_by_hand():
    q = dubious.benjamini_hochberg([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted p 0.01, 0.03, 0.04, 0.5 (m = 4): p * m / rank = 0.04, 0.06, 0.0533, 0.5, then the
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.5
    np.testing.assert_allclose(q[[0, 1, 2, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[3])


def test_small_metacells_are_not_tested_and_bad_options_fail():
    X = np.random.default_rng(0).poisson(2.0, size=(12, 30))
    ids = np.array(["a"] * 3 + ["b"] * 9)
    out = dubious.homogeneity_test(X, ids, n_features=20, n_permutations=20)
    assert np.isnan(out.loc["a", "p"]) and not out.loc["a", "dubious"] and out.loc["b", "n_cells"] == 9
    with pytest.raises(CoemInputError, match="n_permutations >= 1"):
        dubious.homogeneity_test(X, ids, n_permutations=0)
