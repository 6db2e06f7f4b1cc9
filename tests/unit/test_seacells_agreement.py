"""Our metrics agree with SEACells 0.3.3's own functions (and Palantir's diffusion maps).

Runs only where SEACells and Palantir import (the optional benchmark/test environment:
``pip install seacells==0.3.3 ipywidgets``); elsewhere it is skipped with the reason.
The same input goes to both: a connected point cloud as the embedding, metacells along it
(one singleton and one with unlabelled cells, the edge cases of the definitions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

SEACells = pytest.importorskip(
    "SEACells", reason="SEACells 0.3.3 not installed (pip install seacells==0.3.3 ipywidgets)"
)
palantir = pytest.importorskip("palantir", reason="palantir (installed with SEACells) not available")
anndata = pytest.importorskip("anndata", reason="anndata not installed")

from coem import metrics  # noqa: E402

RTOL = 1e-6


def _embedding(n: int = 240, seed: int = 0) -> np.ndarray:
    """A noisy curve in 8-D (one connected kNN graph, as real PCA/LSI spaces are)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 6, n))
    curve = np.column_stack([t, np.sin(t), np.cos(2 * t), 0.3 * t ** 1.5, np.zeros((n, 4))])
    return curve + 0.15 * rng.normal(size=(n, 8))


def _assignments(n: int) -> np.ndarray:
    """Consecutive runs of 12 cells along the curve, plus cell 0 as a singleton."""
    ids = np.array([f"SEACell-{1 + (i - 1) // 12}" for i in range(n)], dtype=object)
    ids[0] = "SEACell-0"
    return ids


def _labels(n: int) -> np.ndarray:
    """Three cell types by position; a few unlabelled cells (NaN) inside SEACell-2."""
    labels = np.array(["early", "mid", "late"], dtype=object)[np.minimum(np.arange(n) * 3 // n, 2)]
    labels[[13, 14, 15]] = np.nan
    labels[[16, 17, 18, 19]] = "mid"  # SEACell-2: 5 early, 4 mid, 3 unlabelled -> purity 5/9
    return labels


@pytest.fixture(scope="module")
def data():
    X = _embedding()
    obs = pd.DataFrame({"SEACell": _assignments(len(X)), "celltype": _labels(len(X))},
                       index=[f"cell{i}" for i in range(len(X))])
    ad = anndata.AnnData(obs=obs)
    ad.obsm["X_pca"] = X
    return X, ad


def test_diffusion_components_match_palantir_up_to_sign(data):
    X, ad = data
    res = palantir.utils.run_diffusion_maps(pd.DataFrame(X, index=ad.obs_names))
    theirs = palantir.utils.determine_multiscale_space(res, n_eigs=10).to_numpy()
    vals, vecs = metrics.diffusion_maps(X, n_components=10, knn=30, seed=0)
    ours = metrics.multiscale_space(vals, vecs, n_eigs=10)
    np.testing.assert_allclose(vals, res["EigenValues"].to_numpy(), rtol=RTOL)
    assert ours.shape == theirs.shape == (len(X), 9)
    for j in range(ours.shape[1]):
        sign = np.sign(ours[:, j] @ theirs[:, j])
        np.testing.assert_allclose(sign * ours[:, j], theirs[:, j], rtol=RTOL,
                                   atol=RTOL * np.abs(theirs[:, j]).max(), err_msg=f"component {j}")


def test_compactness_matches_seacells(data):
    X, ad = data
    theirs = SEACells.evaluate.compactness(ad, "X_pca", "SEACell")["compactness"]
    ours = metrics.compactness(metrics.diffusion_components(X), ad.obs["SEACell"].to_numpy())["compactness"]
    assert list(ours.index) == list(theirs.index)
    assert np.isnan(theirs["SEACell-0"]) and np.isnan(ours["SEACell-0"])  # the singleton
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=RTOL)
    assert ours.mean() == pytest.approx(theirs.mean(), rel=RTOL)  # summaries skip the NaN alike


def test_separation_matches_seacells(data):
    X, ad = data
    theirs = SEACells.evaluate.separation(ad, "X_pca", SEACells_label="SEACell")["separation"]
    ours = metrics.separation(metrics.diffusion_components(X), ad.obs["SEACell"].to_numpy())["separation"]
    assert list(ours.index) == list(theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=RTOL)


def test_purity_matches_seacells(data):
    _, ad = data
    theirs = SEACells.evaluate.compute_celltype_purity(ad, "celltype")
    ours = metrics.purity(ad.obs["celltype"].to_numpy(), ad.obs["SEACell"].to_numpy())
    assert list(ours.index) == list(theirs.index)
    assert ours["label"].tolist() == theirs["celltype"].tolist()
    np.testing.assert_allclose(ours["purity"].to_numpy(), theirs["celltype_purity"].to_numpy(), rtol=1e-12)
    assert ours.loc["SEACell-2", "purity"] == pytest.approx(5 / 9)
