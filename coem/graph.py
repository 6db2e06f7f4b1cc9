"""k-nearest-neighbour graph and SEACells' adaptive RBF kernel on an embedding.

Kernel semantics (SEACells ``build_graph.py``, ``SEACellGraph.rbf``): scanpy's kNN with
``n_neighbors=k`` stores k-1 non-self distances per cell; ``kth_neighbor_distance(.., k//2)``
then picks the (k//2)-th smallest of those, i.e. the (k//2)-th nearest *other* cell. With our
self-first neighbour lists (self = column 0) that is column ``k//2``: for k=15 the 7th
neighbour. Neighbourhoods (self included) are symmetrised by union and the similarity on
an edge is ``exp(-d_ij^2 / (sigma_i * sigma_j))``; the diagonal is 1 and non-edges are 0.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from coem._logging import get_logger

_log = get_logger("coem.graph")

KnnBackend = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]

# Hook for approximate kNN at large n: a callable (X, k, seed) -> (indices, distances) with
# self first. ``pynndescent_knn`` is installed below when pynndescent is importable.
_APPROX_KNN: KnnBackend | None = None
# 'auto' switches to the approximate backend from this many cells. pynndescent compiles its
# numba kernels in every new process (about 55 s of CPU, measured), while exact kNN grows as
# n^2: 100,000 x 30 took 124 s of CPU with sklearn's brute force, 50,000 about a quarter of it.
AUTO_APPROX_MIN_CELLS = 100_000
# pynndescent is asked for k + this many neighbours and the first k are kept: its recall of
# the 15 nearest on 100,000 x 30 rose from 0.86 (asked for 15) to 0.94 (asked for 20).
ANN_EXTRA_NEIGHBOURS = 5


def register_approx_knn(fn: KnnBackend | None) -> None:
    """Install (or remove, with None) the approximate kNN backend used by ``method='approx'``."""
    global _APPROX_KNN
    _APPROX_KNN = fn


def approx_knn_backend() -> KnnBackend | None:
    """The approximate kNN backend now installed (None when there is none)."""
    return _APPROX_KNN


def self_first(indices: np.ndarray, distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists with self in column 0 (distance 0) and the k-1 nearest others after it.

    An approximate search may list self anywhere (ties with duplicates) or miss it; the other
    entries keep their order, and a row without self loses its last entry.
    """
    indices = np.asarray(indices)
    n = indices.shape[0]
    me = np.arange(n)[:, None]
    order = np.argsort(indices == me, axis=1, kind="stable")[:, : k - 1]  # self sorts last
    idx = np.hstack([me, np.take_along_axis(indices, order, axis=1)]).astype(np.int64)
    dist = np.hstack([np.zeros((n, 1)), np.take_along_axis(np.asarray(distances), order, axis=1)])
    return idx, dist.astype(np.float64)


def pynndescent_knn(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate Euclidean kNN with pynndescent (scanpy's backend), self first.

    Deterministic for a seed: ``random_state`` fixes the random-projection trees and the
    search order, and ``n_jobs=1`` keeps numba's threads from racing (numba's global thread
    count is restored afterwards). float32 halves the memory of the index.
    """
    import numba
    from pynndescent import NNDescent

    n = X.shape[0]
    threads = numba.get_num_threads()
    try:
        index = NNDescent(np.asarray(X, dtype=np.float32), n_neighbors=min(n, k + ANN_EXTRA_NEIGHBOURS),
                          metric="euclidean", random_state=seed, n_jobs=1, low_memory=True, verbose=False)
        indices, distances = index.neighbor_graph
    finally:
        numba.set_num_threads(threads)
    if np.any(indices < 0):  # lists pynndescent could not fill (tiny or degenerate inputs)
        _log.warning("pynndescent left neighbour lists unfilled; using exact kNN")
        return _exact_knn(np.asarray(X, dtype=np.float64), k)
    return self_first(indices, distances, k)


if importlib.util.find_spec("pynndescent") is not None:
    register_approx_knn(pynndescent_knn)


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


def rbf_kernel(indices: np.ndarray, distances: np.ndarray, sigma: np.ndarray | None = None) -> sp.csr_matrix:
    """SEACells' adaptive RBF kernel on the union-symmetrised kNN graph (CSR, symmetric).

    Needs no coordinates: an edge of the union graph is in at least one of the two cells'
    neighbour lists, which carries its distance. ``sigma`` (one bandwidth per cell) overrides
    ``adaptive_bandwidth(distances)``: the partitioned metacell path builds a part's kernel
    from neighbours inside the part but takes each cell's bandwidth from a graph that looks
    across part borders, so border cells are not given a wider kernel than interior ones.
    """
    indices = np.asarray(indices)
    distances = np.asarray(distances, dtype=np.float64)
    n, k = indices.shape
    sigma = adaptive_bandwidth(distances) if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (n,) or np.any(sigma <= 0):
        raise ValueError(f"sigma must hold one positive bandwidth per cell ({n}), got shape {sigma.shape}")
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


def part_members(parts: np.ndarray) -> list[np.ndarray]:
    """Cell indices of each part 0..max, in increasing order."""
    parts = np.asarray(parts)
    order = np.argsort(parts, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(parts))])
    return [order[bounds[p]:bounds[p + 1]] for p in range(bounds.size - 1)]


def _nearest_other_part(X: np.ndarray, parts: np.ndarray, n_parts: int, chunk: int = 65_536) -> np.ndarray:
    """For every cell, the part other than its own whose centre (mean of its cells) is nearest."""
    sizes = np.bincount(parts, minlength=n_parts).astype(np.float64)
    indicator = sp.csr_matrix((np.ones(parts.size), (parts, np.arange(parts.size))), shape=(n_parts, parts.size))
    centres = (indicator @ X) / np.maximum(sizes, 1.0)[:, None]
    csq = np.where(sizes > 0, (centres ** 2).sum(axis=1), np.inf)  # an empty part is never nearest
    other = np.empty(parts.size, dtype=np.int64)
    for start in range(0, parts.size, chunk):
        block = slice(start, start + chunk)
        d2 = csq[None, :] - 2.0 * (X[block] @ centres.T)  # + |x|^2, the same for every centre
        d2[np.arange(d2.shape[0]), parts[block]] = np.inf
        other[block] = np.argmin(d2, axis=1)
    return other


def _top_k(d2: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest candidates (``cand[j]`` is column j's cell; or one row per row of
    d2), sorted by squared distance; padded with -1 / inf where there are fewer than k."""
    rows, cols = d2.shape
    cand = np.broadcast_to(cand, (rows, cols)) if cand.ndim == 1 else cand
    if cols < k:
        d2 = np.hstack([d2, np.full((rows, k - cols), np.inf)])
        cand = np.hstack([cand, np.full((rows, k - cols), -1)])
    top = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.tile(np.arange(k), (rows, 1))
    vals = np.take_along_axis(d2, top, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(cand, top, axis=1), np.take_along_axis(vals, order, axis=1)


def _sq_dist(X: np.ndarray, sq: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between cells a and cells b (BLAS; may round slightly below 0)."""
    return sq[a][:, None] + sq[b][None, :] - 2.0 * (X[a] @ X[b].T)


def partition_knn(X, parts, k: int = 15, probes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """kNN of every cell searched in its own part and the ``probes - 1`` parts next to it.

    An inverted-file search, exact inside the probed parts. The parts probed for a part's
    cells are the ones most often nearest to them after their own (ranked by the distance
    from each cell to the part centres), the same for the whole part so that one matrix
    product serves it: the cost is about ``probes`` times that of kNN inside the parts
    (n * part size distances). Probing per cell found slightly more neighbours but spent its
    time in tens of thousands of small products: 451 s at 10^6 cells against 13 s at 10^5.
    It exists for the partitioned metacell path, where the parts are known, each cell's own
    part holds most of its neighbours and the probes find the rest for cells near a border,
    instead of a global approximate search (pynndescent: about 100 s of CPU on 10^6 x 30 cells
    plus about 55 s compiling, measured). Neighbours in parts not probed are missed, so it is
    an approximate kNN, used for decisions across borders (moving border cells to the part of
    most of their neighbours, and their kernel bandwidth), not as the kernel graph. A cell
    whose probed parts hold fewer than k cells is searched against all cells. Returns
    (indices int64 n x k, distances n x k), self first, k capped at n.
    """
    X = np.asarray(X, dtype=np.float64)
    parts = np.asarray(parts, dtype=np.int64)
    n = X.shape[0]
    k = min(int(k), n)
    n_parts = int(parts.max()) + 1
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    if n_parts == 1:
        return _exact_knn(X, k)
    members = part_members(parts)
    nearest = _nearest_other_part(X, parts, n_parts) if probes > 1 else None
    sq = (X ** 2).sum(axis=1)
    idx = np.full((n, k), -1, dtype=np.int64)
    d2 = np.full((n, k), np.inf)
    for p, own in enumerate(members):
        if own.size == 0:
            continue
        probed = [own]
        if nearest is not None:
            votes = np.bincount(nearest[own], minlength=n_parts)
            votes[p] = 0
            ranked = np.argsort(-votes, kind="stable")[: probes - 1]
            probed += [members[q] for q in ranked if votes[q] > 0]
        cand = np.concatenate(probed)
        idx[own], d2[own] = _top_k(_sq_dist(X, sq, own, cand), cand, k)
    short = np.flatnonzero(np.isinf(d2[:, -1]))
    if short.size:  # probed parts with fewer than k cells in all
        dist, nb = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X[short])
        idx[short], d2[short] = nb, dist ** 2
    return self_first(idx, np.sqrt(np.maximum(d2, 0.0)), k)
