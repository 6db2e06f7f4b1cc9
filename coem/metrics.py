"""Metacell quality metrics with SEACells' definitions (DESIGN.md section 6).

The COEM paper compares methods with SEACells' ``evaluate.py``; to make our numbers comparable
we reproduce its definitions exactly, including Palantir's diffusion maps on which compactness
and separation are measured:

- diffusion components: Palantir ``run_diffusion_maps`` (adaptive anisotropic kernel on a
  ``knn`` graph, row-normalised Markov matrix, ARPACK ``eigs`` with Palantir's tolerance and
  starting vector) then ``determine_multiscale_space(n_eigs)`` (eigenvectors ``1..n_eigs-1``
  scaled by ``lambda / (1 - lambda)``);
- compactness: per metacell, the mean over components of the within-metacell variance
  (ddof=1); a singleton metacell has no variance, so its compactness is NaN, and NaN is
  skipped by the summaries (pandas ``mean``), as in SEACells;
- separation: distance from a metacell's centroid to the nearest other centroid;
- purity: fraction of a metacell's labelled cells that carry its most frequent label.

Next to SEACells' means, robust summaries a reader can use (issue 16):

- medians over metacells of compactness and separation;
- a per-modality flag for a nearly disconnected diffusion graph (``disconnection_flag``): when
  the kNN graph falls apart, eigenvalues next to 1 scale a few metacells' components by
  lambda / (1 - lambda) ~ 1e12 and SEACells' means reach 1e+25 (seen on the demo's ATAC). The
  rule: any per-metacell compactness or separation above ``LARGE_VALUE`` (1e6), or a mean
  above ``MEAN_MEDIAN_RATIO`` (100) times the median; the report then shows the medians and a
  plain sentence instead of the means;
- cell-weighted purity (one vote per cell: the fraction of all labelled cells that carry their
  metacell's majority label) beside the per-metacell mean;
- size balance: the largest metacell's share of the cells and the Gini coefficient of the sizes
  (0: all equal; 1: one metacell holds everything).

Compute the diffusion components once per dataset and modality and reuse them for every
method compared. This module knows nothing about files.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigs
from sklearn.neighbors import NearestNeighbors

from coem._logging import get_logger
from coem.errors import CoemInputError

_log = get_logger("coem.metrics")

# Palantir's eigen solver settings (run_diffusion_maps); kept so our components match its own.
_EIGS_TOL = 1e-4
_EIGS_MAXITER = 1000
# scanpy (Palantir's kNN backend) uses exact brute-force neighbours below this many cells.
_BRUTE_MAX_CELLS = 8192
# Eigenvalues this close to 1 (scaled by >= 1e6) mean a (nearly) disconnected kNN graph;
# ARPACK at Palantir's tol gets a repeated eigenvalue 1 only to about 1e-9.
_DISCONNECTED_EPS = 1e-6


# Robust summaries: a metric is "blown up" (nearly disconnected diffusion graph) when any value
# exceeds LARGE_VALUE or its mean exceeds MEAN_MEDIAN_RATIO times its median.
LARGE_VALUE = 1e6
MEAN_MEDIAN_RATIO = 100.0


# --------------------------------------------------------------------------- diffusion maps


def _check_embedding(X, knn: int, n_components: int) -> np.ndarray:
    """Dense float64 cells x dims; enough cells for the kNN graph and the eigen solver."""
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise CoemInputError(f"the embedding must be a cells x dimensions matrix, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise CoemInputError("the embedding contains NaN or infinite values; recompute it from finite counts")
    n = X.shape[0]
    if knn < 3:
        raise CoemInputError(f"knn must be at least 3 (it sets the adaptive bandwidth knn // 3), got {knn}")
    if n <= knn:
        raise CoemInputError(
            f"diffusion maps need more cells than knn: {n} cells, knn={knn}; lower knn or use more cells"
        )
    if n_components < 2 or n_components >= n - 1:
        raise CoemInputError(f"n_components must be in [2, {n - 2}] for {n} cells, got {n_components}")
    # Palantir runs in the input's precision; we always use float64 so results do not depend on it.
    return X.astype(np.float64, copy=False)


def _neighbours(X: np.ndarray, knn: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the ``knn - 1`` nearest other cells: exact below
    ``coem.graph.AUTO_APPROX_MIN_CELLS`` cells, pynndescent's approximate neighbours from there
    (an exact search of 10^6 cells x 50 dimensions takes hours)."""
    from coem import graph

    n = X.shape[0]
    if n >= graph.AUTO_APPROX_MIN_CELLS and graph.approx_knn_backend() is not None:
        idx, dists = graph.knn(X, k=knn, method="approx", seed=seed)  # self first, then knn - 1 others
        return dists[:, 1:], idx[:, 1:]
    algorithm = "brute" if n < _BRUTE_MAX_CELLS else "auto"
    return NearestNeighbors(n_neighbors=knn - 1, algorithm=algorithm).fit(X).kneighbors()


def adaptive_kernel(X: np.ndarray, knn: int = 30, seed: int = 0) -> sparse.csr_matrix:
    """Palantir's adaptive anisotropic kernel, symmetric and sparse (no dense n x n).

    Palantir takes the ``knn - 1`` nearest other cells (scanpy's neighbour graph drops self),
    sets each cell's bandwidth to the distance of its ``floor(knn / 3)``-th neighbour and
    weighs an edge ``exp(-d_ij / sigma_i)`` (distance, not squared); ``W + W.T`` makes it
    symmetric (mutual neighbours get both terms). Neighbours are exact (brute force below
    ``_BRUTE_MAX_CELLS`` cells, as scanpy does) up to ``coem.graph.AUTO_APPROX_MIN_CELLS``
    cells, approximate (pynndescent, seeded) from there; scanpy switches to pynndescent from
    8,192 cells, where the two may differ slightly.
    """
    n = X.shape[0]
    dists, idx = _neighbours(X, knn, seed)
    sigma = dists[:, knn // 3 - 1]
    if np.any(sigma <= 0):
        # Palantir divides by zero here; such cells have >= knn/3 exact duplicates.
        raise CoemInputError(
            f"{int(np.sum(sigma <= 0))} cells have at least {knn // 3} exact duplicates in the embedding, "
            "so their kernel bandwidth is 0; remove duplicate cells or recompute the embedding"
        )
    rows = np.repeat(np.arange(n), knn - 1)
    # scanpy drops explicit zeros (duplicate cells) from its distance graph; so do we.
    keep = dists.ravel() > 0
    weights = np.exp(-dists.ravel()[keep] / sigma[rows[keep]])
    W = sparse.csr_matrix((weights, (rows[keep], idx.ravel()[keep])), shape=(n, n))
    return (W + W.T).tocsr()


def diffusion_maps(X, n_components: int = 10, knn: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Palantir ``run_diffusion_maps`` (alpha=0): eigenvalues (descending) and unit eigenvectors.

    The Markov matrix ``T = D^-1 K`` is solved with ARPACK ``eigs`` exactly as Palantir does
    (same tolerance, iteration cap and starting vector ``default_rng(seed).random(n)``, as in
    Palantir 1.4.5, the version SEACells 0.3.3 installs), so both give the same vectors up to
    sign and rounding. No global random state is touched.
    """
    X = _check_embedding(X, knn, n_components)
    n = X.shape[0]
    kernel = adaptive_kernel(X, knn, seed)
    degree = np.ravel(kernel.sum(axis=1))
    inv = np.zeros_like(degree)
    inv[degree != 0] = 1.0 / degree[degree != 0]
    T = sparse.diags(inv).dot(kernel).tocsr()
    v0 = np.random.default_rng(seed).random(n)
    vals, vecs = eigs(T, n_components, tol=_EIGS_TOL, maxiter=_EIGS_MAXITER, v0=v0)
    vals, vecs = np.real(vals), np.real(vecs)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    vecs = vecs / np.linalg.norm(vecs, axis=0, keepdims=True)
    # Parts: eigenvalues next to 1, or connected components of the kernel graph (exact; ARPACK at
    # Palantir's tolerance can return a repeated eigenvalue 1 only once).
    n_graph = int(connected_components(kernel, directed=False)[0])
    n_unit = max(int(np.sum(vals > 1.0 - _DISCONNECTED_EPS)), n_graph)
    if n_unit > 1:
        # Each connected component of the kNN graph adds an eigenvalue 1, whose lambda/(1-lambda)
        # scaling explodes; Palantir proceeds silently, we at least say so.
        _log.warning(
            "the %d-NN graph has %d (nearly) disconnected parts (eigenvalue 1 repeated): diffusion components "
            "are dominated by them; metrics still follow SEACells' definition", knn, n_unit)
    return vals, vecs


def multiscale_space(eigenvalues: np.ndarray, eigenvectors: np.ndarray, n_eigs: int = 10) -> np.ndarray:
    """Palantir ``determine_multiscale_space(n_eigs)``: drop the trivial eigenvector 0, keep
    eigenvectors ``1..n_eigs-1`` scaled by ``lambda / (1 - lambda)`` (the sum over all diffusion
    times, so slow components weigh more)."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if not 2 <= n_eigs <= len(eigenvalues):
        raise CoemInputError(f"n_eigs must be in [2, {len(eigenvalues)}] (the eigenvectors computed), got {n_eigs}")
    lam = eigenvalues[1:n_eigs]
    return np.asarray(eigenvectors)[:, 1:n_eigs] * (lam / (1.0 - lam))


def diffusion_components(X, n_components: int = 10, knn: int = 30, n_eigs: int = 10, seed: int = 0) -> np.ndarray:
    """SEACells' evaluation space: Palantir diffusion maps then the multiscale space
    (cells x ``n_eigs - 1``). ``X`` is the RNA PCA or the ATAC LSI."""
    vals, vecs = diffusion_maps(X, n_components=n_components, knn=knn, seed=seed)
    return multiscale_space(vals, vecs, n_eigs=n_eigs)


# --------------------------------------------------------------------------- per-metacell metrics


def _frame(components: np.ndarray, metacells) -> tuple[pd.DataFrame, pd.Series]:
    """Components as a DataFrame and metacell ids as a Series; cells without a metacell are
    dropped (SEACells' join + groupby does the same)."""
    components = np.asarray(components, dtype=np.float64)
    metacells = pd.Series(np.asarray(metacells, dtype=object))
    if components.ndim != 2 or components.shape[0] != len(metacells):
        raise CoemInputError(
            f"components ({components.shape}) and metacell labels ({len(metacells)}) must have one row per cell"
        )
    keep = metacells.notna().to_numpy()
    return pd.DataFrame(components[keep]), metacells[keep].reset_index(drop=True).rename("metacell")


def compactness(components: np.ndarray, metacells) -> pd.DataFrame:
    """Per metacell: mean over components of the within-metacell variance (ddof=1).

    Lower is better. A singleton's variance is undefined, so its compactness is NaN (as in
    SEACells, whose pandas ``mean`` then leaves it out of summaries).
    """
    df, mc = _frame(components, metacells)
    var = df.groupby(mc.to_numpy(), sort=True).var(ddof=1)
    out = var.mean(axis=1, skipna=True).rename("compactness").to_frame()
    out.index.name = "metacell"
    return out


def centroids(components: np.ndarray, metacells) -> pd.DataFrame:
    """Mean of each metacell's cells in component space (rows sorted by metacell id)."""
    df, mc = _frame(components, metacells)
    out = df.groupby(mc.to_numpy(), sort=True).mean()
    out.index.name = "metacell"
    return out


def separation(components: np.ndarray, metacells) -> pd.DataFrame:
    """Per metacell: Euclidean distance from its centroid to the nearest other centroid, and
    which metacell that is. Higher is better. NaN when there is only one metacell (SEACells
    fails there)."""
    cent = centroids(components, metacells)
    out = pd.DataFrame(index=cent.index, columns=["separation", "nearest_metacell"])
    if len(cent) < 2:
        out["separation"] = np.nan
        return out.astype({"separation": float})
    dist, nbr = NearestNeighbors(n_neighbors=1).fit(cent.to_numpy()).kneighbors()
    out["separation"] = dist[:, 0]
    out["nearest_metacell"] = cent.index.to_numpy()[nbr[:, 0]]
    return out.astype({"separation": float})


def purity(labels_true, metacells) -> pd.DataFrame:
    """Per metacell: its most frequent label and the fraction of its labelled cells carrying it.

    As in SEACells' ``compute_celltype_purity``, unlabelled cells (NaN) are not counted; a
    metacell with no labelled cell gets label NaN and purity NaN (SEACells fails there). Ties
    go to the label seen first in cell order.
    """
    labels = pd.Series(np.asarray(labels_true, dtype=object))
    mc = pd.Series(np.asarray(metacells, dtype=object))
    if len(labels) != len(mc):
        raise CoemInputError(f"labels ({len(labels)}) and metacell ids ({len(mc)}) must have one entry per cell")
    cells = pd.DataFrame({"metacell": mc, "label": labels})
    cells = cells[cells["metacell"].notna()]
    ids = np.sort(cells["metacell"].unique())
    labelled = cells[cells["label"].notna()].assign(pos=lambda d: np.arange(len(d)))
    counts = (
        labelled.groupby(["metacell", "label"], sort=False)
        .agg(n=("pos", "size"), first=("pos", "min"))
        .reset_index()
        .sort_values(["metacell", "n", "first"], ascending=[True, False, True], kind="stable")
    )
    top = counts.drop_duplicates("metacell").set_index("metacell")
    totals = labelled.groupby("metacell").size()
    out = pd.DataFrame(index=pd.Index(ids, name="metacell"))
    out["label"] = top["label"].reindex(ids)
    out["purity"] = (top["n"] / totals).reindex(ids).astype(float)
    return out


def sizes(metacells) -> pd.Series:
    """Cells per metacell (sorted by metacell id); cells without a metacell are not counted."""
    mc = pd.Series(np.asarray(metacells, dtype=object)).dropna()
    out = mc.value_counts().sort_index().rename("size")
    out.index.name = "metacell"
    return out


def gini(values) -> float | None:
    """Gini coefficient of non-negative values: 0 when all are equal, (n-1)/n when one holds all."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        return None
    i = np.arange(1, x.size + 1)
    return float(np.sum((2 * i - x.size - 1) * x) / (x.size * x.sum()))


def size_summary(metacells) -> dict:
    """Number of metacells and how many cells they hold (mean, sd, min, median, max, singletons),
    and their balance: the largest metacell's share of the cells and the Gini of the sizes."""
    s = sizes(metacells)
    return {
        "n_cells": int(s.sum()),
        "n_metacells": int(len(s)),
        "n_singletons": int((s == 1).sum()),
        "size_mean": _finite(s.mean()),
        "size_sd": _finite(s.std(ddof=1)),
        "size_min": int(s.min()) if len(s) else None,
        "size_median": _finite(s.median()),
        "size_max": int(s.max()) if len(s) else None,
        "largest_share": _finite(s.max() / s.sum()) if len(s) else None,
        "size_gini": gini(s.to_numpy()),
    }


def cell_weighted_purity(labels_true, metacells) -> float | None:
    """Purity with one vote per cell: the fraction of labelled cells that carry their metacell's
    majority label (the per-metacell mean gives a 2-cell metacell the weight of a 200-cell one)."""
    pur = purity(labels_true, metacells)
    labels = pd.Series(np.asarray(labels_true, dtype=object))
    mc = pd.Series(np.asarray(metacells, dtype=object))
    keep = labels.notna() & mc.notna()
    if not keep.any():
        return None
    majority = mc[keep].map(pur["label"])
    return float((labels[keep].to_numpy() == majority.to_numpy()).mean())


# --------------------------------------------------------------------------- evaluation


def _finite(value) -> float | None:
    """A JSON-safe float: NaN (e.g. no values) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def mean_sd(values) -> dict:
    """Mean +- sd (ddof=1) over the finite values (NaN skipped, as pandas does), and how many."""
    v = pd.Series(np.asarray(values, dtype=np.float64)).dropna()
    return {"mean": _finite(v.mean()), "sd": _finite(v.std(ddof=1)), "n": int(len(v))}


def robust_summary(values) -> dict:
    """``mean_sd`` plus the median (NaN skipped)."""
    v = pd.Series(np.asarray(values, dtype=np.float64)).dropna()
    return {**mean_sd(v), "median": _finite(v.median())}


def disconnection_flag(mod: str, compactness_values, separation_values) -> dict:
    """Whether SEACells' means of one modality are blown up by a nearly disconnected diffusion graph.

    Flagged when any compactness or separation value exceeds ``LARGE_VALUE`` or a mean exceeds
    ``MEAN_MEDIAN_RATIO`` times its median. Returns ``{"nearly_disconnected": bool, "reason":
    str | None, "sentence": str | None}``; the sentence is what the report prints.
    """
    reasons = []
    for metric, values in (("compactness", compactness_values), ("separation", separation_values)):
        v = pd.Series(np.asarray(values, dtype=np.float64)).dropna()
        if v.empty:
            continue
        mean, median, top = float(v.mean()), float(v.median()), float(v.max())
        if top > LARGE_VALUE:
            reasons.append(f"{metric} up to {top:.3g} (median {median:.3g})")
        elif median > 0 and mean > MEAN_MEDIAN_RATIO * median:
            reasons.append(f"mean {metric} {mean:.3g} is {mean / median:.0f} x its median {median:.3g}")
    if not reasons:
        return {"nearly_disconnected": False, "reason": None, "sentence": None}
    reason = "; ".join(reasons)
    sentence = (f"{mod.upper()}: the diffusion graph is nearly disconnected ({reason}), so SEACells' means are "
                f"dominated by a few metacells in or across its isolated parts; read the medians.")
    return {"nearly_disconnected": True, "reason": reason, "sentence": sentence}


def evaluate_metacells(
    metacells,
    components: Mapping[str, np.ndarray],
    labels=None,
) -> tuple[pd.DataFrame, dict]:
    """All metrics for one assignment.

    ``components``: {modality: cells x components (from ``diffusion_components``)}; ``labels``:
    optional cell labels for purity. Returns the per-metacell table (size, then
    ``compactness_<mod>``, ``separation_<mod>``, ``nearest_<mod>`` per modality, then ``label``
    and ``purity``) and the summary: sizes (with ``largest_share`` and ``size_gini``),
    mean/sd/n/median of every metric, ``purity_cells`` (cell-weighted purity) and ``diffusion``
    ({modality: ``disconnection_flag``}).
    """
    table = sizes(metacells).to_frame()
    summary: dict = {"sizes": size_summary(metacells)}
    flags = {}
    for mod, comp in components.items():
        comp_df = compactness(comp, metacells)["compactness"]
        sep_df = separation(comp, metacells)
        table[f"compactness_{mod}"] = comp_df
        table[f"separation_{mod}"] = sep_df["separation"]
        table[f"nearest_{mod}"] = sep_df["nearest_metacell"]
        summary[f"compactness_{mod}"] = robust_summary(table[f"compactness_{mod}"])
        summary[f"separation_{mod}"] = robust_summary(table[f"separation_{mod}"])
        flags[mod] = disconnection_flag(mod, table[f"compactness_{mod}"], table[f"separation_{mod}"])
        if flags[mod]["nearly_disconnected"]:
            _log.warning("%s", flags[mod]["sentence"])
    if labels is not None:
        pur = purity(labels, metacells)
        table["label"] = pur["label"]
        table["purity"] = pur["purity"]
        summary["purity"] = robust_summary(table["purity"])
        summary["purity_cells"] = cell_weighted_purity(labels, metacells)
    summary["diffusion"] = flags
    return table, summary
