"""k-nearest-neighbour graph and SEACells' adaptive RBF kernel on an embedding.

Kernel semantics (SEACells ``build_graph.py``, ``SEACellGraph.rbf``): scanpy's kNN with
``n_neighbors=k`` stores k-1 non-self distances per cell; ``kth_neighbor_distance(.., k//2)``
then picks the (k//2)-th smallest of those, i.e. the (k//2)-th nearest *other* cell. With our
self-first neighbour lists (self = column 0) that is column ``k//2``: for k=15 the 7th
neighbour. Neighbourhoods (self included) are symmetrised by union and the similarity on
an edge is ``exp(-d_ij^2 / (sigma_i * sigma_j))``; the diagonal is 1 and non-edges are 0.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from coem._logging import get_logger

_log = get_logger("coem.graph")

# Hook for approximate kNN at large n: a callable (X, k, seed) -> (indices, distances) with
# self first, registered by a module that wraps an ANN library (see ``register_approx_knn``).
_APPROX_KNN: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]] | None = None
AUTO_APPROX_MIN_CELLS = 50_000


def register_approx_knn(fn: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]] | None) -> None:
    """Install (or remove, with None) the approximate kNN backend used by ``method='approx'``."""
    global _APPROX_KNN
    _APPROX_KNN = fn


def _exact_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean kNN; self is forced into column 0 even when duplicates tie with it."""
    n = X.shape[0]
    if k == 1:
        return np.arange(n)[:, None], np.zeros((n, 1))
    # kneighbors() without X leaves each point out of its own list, then self is prepended.
    nn = NearestNeighbors(n_neighbors=k - 1, metric="euclidean").fit(X)
    dist, idx = nn.kneighbors()
    idx = np.hstack([np.arange(n)[:, None], idx])
    dist = np.hstack([np.zeros((n, 1)), dist])
    return idx.astype(np.int64), dist.astype(np.float64)


def knn(X, k: int = 15, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row of X (self included as neighbour 0).

    ``method``: 'exact' (sklearn), 'approx' (the registered backend; falls back to exact with
    a warning when none is registered), 'auto' (approx above ``AUTO_APPROX_MIN_CELLS`` cells
    when a backend exists). k is capped at n. Returns (indices int64 n x k, distances n x k).
    """
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"knn method must be 'auto', 'exact' or 'approx', got {method!r}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"knn needs a non-empty 2-D array, got shape {X.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(int(k), X.shape[0])
    use_approx = method == "approx" or (method == "auto" and X.shape[0] >= AUTO_APPROX_MIN_CELLS)
    if use_approx and _APPROX_KNN is not None:
        return _APPROX_KNN(X, k, seed)
    if method == "approx":
        _log.warning("no approximate kNN backend registered; using exact kNN")
    return _exact_knn(X, k)


def adaptive_bandwidth(distances: np.ndarray) -> np.ndarray:
    """sigma_i = distance to neighbour k//2 (self = neighbour 0), SEACells' 'median distance'.

    A zero sigma (k//2 or more exact duplicates) would divide by zero; it is replaced by the
    smallest positive sigma (1 when all are zero), so duplicates get a very sharp kernel.
    """
    distances = np.asarray(distances, dtype=np.float64)
    sigma = distances[:, distances.shape[1] // 2].copy()
    positive = sigma[sigma > 0]
    sigma[sigma <= 0] = positive.min() if positive.size else 1.0
    return sigma


def rbf_kernel(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """SEACells' adaptive RBF kernel on the union-symmetrised kNN graph (CSR, symmetric).

    Needs no coordinates: an edge of the union graph is in at least one of the two cells'
    neighbour lists, which carries its distance.
    """
    indices = np.asarray(indices)
    distances = np.asarray(distances, dtype=np.float64)
    n, k = indices.shape
    sigma = adaptive_bandwidth(distances)
    rows = np.repeat(np.arange(n), k)
    cols = indices.ravel()
    sim = np.exp(-distances.ravel() ** 2 / (sigma[rows] * sigma[cols]))
    directed = sp.csr_matrix((sim, (rows, cols)), shape=(n, n))
    directed.sum_duplicates()
    # Same value in both directions (d and sigma_i*sigma_j are symmetric): max == union.
    kernel = directed.maximum(directed.T).tocsr()
    kernel.setdiag(1.0)
    kernel.sort_indices()
    return kernel
