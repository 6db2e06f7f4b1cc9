"""Spectral metacells: exactly the requested number of non-empty groups, deterministically.

Pipeline on an embedding X (cells x d): kNN (k=15) -> SEACells adaptive RBF kernel ->
multiscale diffusion coordinates of the kernel graph -> k-means. In detail:

- the top m + 1 eigenvectors v of D^-1/2 W D^-1/2 (m metacells) give the random-walk
  eigenvectors D^-1/2 v, i.e. diffusion maps; the constant first one is dropped and each other
  one is weighted by sum_{t=1..50} lambda^t (``diffusion_weights``): Palantir's multiscale
  space (lambda / (1 - lambda), all times summed), stopped at 50 steps so that it stays finite
  for nearly disconnected groups;
- k-means there places metacells evenly over the diffusion geometry of the cell states, not
  evenly over cells: a compact, well-separated state gets few large metacells and a spread-out
  one many. The previous design, k-means on row-normalised eigenvectors (Ng-Jordan-Weiss),
  made metacells of even size whose neighbouring centroids sat close together; on three
  simulated 10,000-cell latents with overlapping states the diffusion coordinates raised
  separation by 30-66% and cut compactness by 39-56%, purity within 0.013 (docs/benchmarks.md);
- a metacell under a third of the mean size (a few outlying cells that diffusion distance puts
  far from everything) is merged into the metacell it shares most kernel weight with
  (``merge_small``).

SEACells can return fewer metacells than asked; here the count is exact:

- disconnected kernel graph: every connected component is clustered on its own with a share
  of the metacells (largest remainder, at least one each), so no metacell spans components;
- k-means returning fewer distinct clusters, or merged small metacells: the largest metacell
  is split at the median of its first principal axis until the count is reached.

Large inputs (more than ``exact_max_cells``) take the partitioned path, near-linear in n
with memory O(n * k):

1. MiniBatchKMeans on X cuts the cells into parts of about ``part_size`` cells;
2. every cell's neighbours are searched in its own part and the 3 parts next to it
   (``coem.graph.partition_knn``), or globally with ``neighbours='global'`` (pynndescent);
3. border cells move to the part holding most of their neighbours (``refine_partition``,
   a few majority-vote sweeps), so that most of a small, separate group of cells that
   k-means sliced between parts goes back to one part instead of leaving slivers that would
   join a foreign metacell;
4. each part gets its share of metacells (largest remainder, so the total is exact) and is
   clustered like the exact path, on a kernel from exact kNN inside the part whose bandwidths
   come from step 2 (which looks across the border).

Why 20,000 cells and parts of about 1,000: with one metacell per 75 cells the eigenproblem and
k-means both cost about n * m^2 with m proportional to n, i.e. n^3. With parts of 1,000 the
whole path costs about 0.1 s of CPU per 1,000 cells, but its metacells are less compact and
less separated (inside a part of 1,000 cells there is little diffusion geometry to spread
metacells over). On 20,000-cell simulated latents the exact path took 40-42 s of one core against
4 s, and gave separation +43-47%, compactness -27-43% and purity +0.004-0.007
(docs/benchmarks.md): worth it up to the sizes of a typical 10x Multiome sample, not at 10^5.
"""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from coem._logging import get_logger
from coem.errors import CoemInputError
from coem.graph import adaptive_bandwidth, knn, part_members, partition_knn, rbf_kernel

_log = get_logger("coem.metacells")

DENSE_EIGEN_MAX_CELLS = 1000
EIGEN_TOL_FLOAT32 = 1e-5
# k-means restarts on the spectral embedding: one restart was faster but lost purity at
# 10,000 cells on some simulated latents (0.905 vs 0.916; docs/benchmarks.md).
KMEANS_N_INIT = 3
# Up to this many cells one kernel over all cells (the exact path); above, the partitioned path.
EXACT_MAX_CELLS = 20_000
# Parts of the partitioned path: about this many metacells each, and at least MIN_PART_SIZE cells.
METACELLS_PER_PART = 13
MIN_PART_SIZE = 1_000
REFINE_SWEEPS = 3
FLAT_MAX_PARTS = 64
# Diffusion coordinates: random-walk steps summed (``diffusion_weights``); metacells under this
# fraction of the mean size are merged into a neighbour (``merge_small``), in at most
# MERGE_ROUNDS rounds. Both chosen on six simulated latents (docs/benchmarks.md).
DIFFUSION_STEPS = 50
MIN_SIZE_FRACTION = 1 / 3
MERGE_ROUNDS = 10
NEIGHBOURS = ("parts", "global")
COORDINATES = ("diffusion", "njw")


class MetacellCountError(CoemInputError, ValueError):
    """The metacell count cannot be honoured for this many cells (a ValueError too)."""


class MetacellParameterError(CoemInputError, ValueError):
    """A bad parameter or embedding for ``SpectralMetacells`` (a ValueError too, as scikit-learn expects)."""


def resolve_n_metacells(n_cells: int, n_metacells: int | None = None, cells_per_metacell: float = 75) -> int:
    """The number of metacells: given, or round(n_cells / cells_per_metacell), at least 1."""
    if n_metacells is None:
        if cells_per_metacell is None or cells_per_metacell <= 0:
            raise MetacellCountError(f"cells_per_metacell must be positive, got {cells_per_metacell}")
        n_metacells = max(1, int(round(n_cells / cells_per_metacell)))
    n_metacells = int(n_metacells)
    if n_metacells < 1:
        raise MetacellCountError(f"the number of metacells must be at least 1, got {n_metacells}")
    if n_metacells > n_cells:
        raise MetacellCountError(
            f"{n_metacells} metacells were asked for but there are only {n_cells} cells; "
            "lower --n-metacells or raise --cells-per-metacell"
        )
    return n_metacells


MIN_METACELLS = 3  # fewer leaves nothing to correlate across in peak-to-gene, nor to evaluate


def check_metacell_count(n_cells: int, n_metacells: int | None = None, cells_per_metacell: float | None = 75) -> int:
    """The pipeline's metacell count, checked as soon as the cell count is known (right after QC):
    at least ``MIN_METACELLS`` and at most the cells; the error names the parameter that set it."""
    if n_metacells is not None:
        source = f"--n_metacells {n_metacells}"
        count = int(n_metacells)
    else:
        if cells_per_metacell is None or cells_per_metacell <= 0:
            raise MetacellCountError(f"--cells_per_metacell must be positive, got {cells_per_metacell}")
        count = int(round(n_cells / cells_per_metacell))
        source = f"--cells_per_metacell {cells_per_metacell:g} ({n_cells:,} cells / {cells_per_metacell:g} = {count})"
    if count < MIN_METACELLS:
        fix = (f"raise --n_metacells to at least {MIN_METACELLS}" if n_metacells is not None else
               f"lower --cells_per_metacell to at most {n_cells / MIN_METACELLS:g}, or set --n_metacells")
        raise MetacellCountError(f"{source} gives {count} metacells; at least {MIN_METACELLS} are needed for "
                                 f"peak-to-gene and evaluation: {fix}")
    if count > n_cells:
        raise MetacellCountError(f"{source} asks for {count:,} metacells but only {n_cells:,} cells are left after "
                                 f"QC; lower --n_metacells to at most {n_cells:,} (or loosen QC)")
    return count


def allot(sizes, total: int) -> np.ndarray:
    """Split ``total`` over parts in proportion to ``sizes``: at least 1 and at most size each.

    Largest-remainder rounding, ties to the first part, so the sum is exactly ``total``.
    Needs len(sizes) <= total <= sum(sizes).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if not (len(sizes) <= total <= sizes.sum()):
        raise ValueError(f"cannot allot {total} over {len(sizes)} parts of total size {sizes.sum()}")
    quota = sizes * (total / sizes.sum())
    counts = np.clip(np.floor(quota).astype(np.int64), 1, sizes)
    while counts.sum() < total:
        gap = np.where(counts < sizes, quota - counts, -np.inf)
        counts[int(np.argmax(gap))] += 1
    while counts.sum() > total:
        excess = np.where(counts > 1, counts - quota, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    return counts


def relabel_by_first_occurrence(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..m-1 in order of first appearance (stable ids for a given input)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


def _split_largest(labels: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Split the largest group (lowest label on ties) in two at the median of its first PC."""
    sizes = np.bincount(labels)
    target = int(np.argmax(sizes))
    members = np.flatnonzero(labels == target)
    pts = X[members] - X[members].mean(axis=0)
    if np.any(pts):
        _, _, vt = np.linalg.svd(pts, full_matrices=False)
        axis = vt[0] * (np.sign(vt[0][np.argmax(np.abs(vt[0]))]) or 1.0)
        proj = pts @ axis
    else:
        proj = np.zeros(members.size)
    order = np.argsort(proj, kind="stable")
    labels = labels.copy()
    labels[members[order[members.size // 2:]]] = labels.max() + 1
    return labels


def repair_count(labels: np.ndarray, X: np.ndarray, n_metacells: int) -> np.ndarray:
    """Ensure exactly ``n_metacells`` non-empty groups by splitting the largest ones."""
    labels = relabel_by_first_occurrence(labels)
    while labels.max() + 1 < n_metacells:
        labels = _split_largest(labels, X)
    return labels


def _top_eigenpairs(A: sp.csr_matrix, n_vectors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_vectors`` largest eigenvalues and eigenvectors of the symmetric sparse A (ARPACK).

    Single precision first: the Lanczos basis of ~2 x n_vectors columns is re-orthogonalised at
    every step, which is bound by memory traffic, so float32 ran 2.8x faster (10,000 cells, 133
    vectors: 2.0 s vs 5.6 s of CPU) and spanned the same subspace (smallest principal cosine
    to the float64 result 1.00000). Double precision is the fallback if it does not converge.
    """
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, A.shape[0])
    try:
        vals, vecs = eigsh(A.astype(np.float32), k=n_vectors, which="LA", v0=v0.astype(np.float32),
                           tol=EIGEN_TOL_FLOAT32)
    except ArpackNoConvergence:
        _log.warning("single-precision eigensolver did not converge; retrying in double precision")
        vals, vecs = eigsh(A, k=n_vectors, which="LA", v0=v0, tol=1e-6)
    return vals, vecs


def _eigenpairs(A: sp.csr_matrix, n_vectors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_vectors`` largest eigenvalues of the symmetric A and their eigenvectors, largest first."""
    n = A.shape[0]
    if n <= DENSE_EIGEN_MAX_CELLS or n_vectors >= n // 2:
        vals, vecs = eigh(A.toarray(), subset_by_index=[n - n_vectors, n - 1])
    else:
        vals, vecs = _top_eigenpairs(A, n_vectors, seed)
    order = np.argsort(-vals, kind="stable")
    return vals[order].astype(np.float64), vecs[:, order].astype(np.float64)


def diffusion_weights(eigenvalues: np.ndarray, steps: int = DIFFUSION_STEPS) -> np.ndarray:
    """sum_{t=1..steps} lambda^t for each eigenvalue (negative ones count as 0).

    Palantir's multiscale space weighs each diffusion component by lambda / (1 - lambda), the
    sum over all times; stopping at ``steps`` keeps the weight finite (at most ``steps``) for
    eigenvalues next to 1, i.e. for nearly disconnected groups of cells.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, 1.0)
    weights = np.full(lam.shape, float(steps))
    below = lam < 1.0
    lb = lam[below]
    weights[below] = lb * (1.0 - lb ** steps) / (1.0 - lb)
    return weights


def _normalised_kernel(W: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """D^-1/2 W D^-1/2 (symmetric, same eigenvalues as the random walk D^-1 W) and D^-1/2."""
    deg = np.asarray(W.sum(axis=1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(deg, 1e-300))
    return (sp.diags(dinv) @ W @ sp.diags(dinv)).tocsr(), dinv


def _njw_coordinates(W: sp.csr_matrix, n_vectors: int, seed: int) -> np.ndarray:
    """Top eigenvectors of D^-1/2 W D^-1/2, rows normalised to unit length (Ng-Jordan-Weiss):
    the coordinates before the diffusion ones, kept as ``coordinates='njw'``."""
    _, vecs = _eigenpairs(_normalised_kernel(W)[0], n_vectors, seed)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


def _diffusion_coordinates(W: sp.csr_matrix, n_vectors: int, seed: int, steps: int = DIFFUSION_STEPS) -> np.ndarray:
    """Multiscale diffusion coordinates of the kernel graph: ``n_vectors`` columns.

    The top eigenvectors v of D^-1/2 W D^-1/2 give the random-walk eigenvectors D^-1/2 v
    (diffusion maps); the first, constant, is dropped and the others are weighted by
    ``diffusion_weights``. Euclidean distance there is a diffusion distance summed over 1..steps
    random-walk steps, so k-means centroids spread evenly over the cell-state manifold rather
    than evenly over cells (see the module docstring for what this changed).
    """
    A, dinv = _normalised_kernel(W)
    vals, vecs = _eigenpairs(A, min(n_vectors + 1, W.shape[0]), seed)
    return vecs[:, 1:] * dinv[:, None] * diffusion_weights(vals[1:], steps)


def merge_small(labels: np.ndarray, W: sp.csr_matrix, X: np.ndarray, n_metacells: int, min_size: float) -> np.ndarray:
    """Merge every metacell under ``min_size`` cells into the metacell it shares most kernel
    weight with, splitting the largest ones to keep exactly ``n_metacells``.

    Diffusion coordinates put a few outlying cells far from all others, and k-means then gives
    them a metacell of their own (1-2 cells were seen): such a group joins its best-connected
    neighbour instead. A group with no edge out of itself (a whole connected component) stays.
    """
    labels = relabel_by_first_occurrence(labels)
    W = W.tocsr()
    for _ in range(MERGE_ROUNDS):
        sizes = np.bincount(labels)
        small = np.flatnonzero(sizes < min_size)
        merged = False
        for group in small[np.argsort(sizes[small], kind="stable")]:
            members = np.flatnonzero(labels == group)
            if members.size == 0 or members.size >= min_size:
                continue
            rows = W[members]
            weight = np.bincount(labels[rows.indices], weights=rows.data, minlength=labels.max() + 1)
            weight[group] = 0.0
            if weight.max() > 0:
                labels[members] = int(np.argmax(weight))
                merged = True
        if not merged:
            break
        labels = repair_count(labels, X, n_metacells)
    return labels


def _spectral_connected(W: sp.csr_matrix, X: np.ndarray, n_metacells: int, seed: int, coordinates: str = "diffusion",
                        steps: int = DIFFUSION_STEPS, min_size_fraction: float = MIN_SIZE_FRACTION) -> np.ndarray:
    """Spectral clustering of one connected kernel into exactly ``n_metacells`` groups."""
    n = W.shape[0]
    if n_metacells == 1:
        return np.zeros(n, dtype=np.int64)
    if n_metacells == n:
        return np.arange(n, dtype=np.int64)
    if coordinates == "njw":
        U = _njw_coordinates(W, n_metacells, seed)
    else:
        U = _diffusion_coordinates(W, n_metacells, seed, steps)
    # Elkan's k-means gives Lloyd's labels (same iterations) while skipping distances the
    # triangle inequality rules out: 3.8 s instead of 6.0 s at 10,000 cells x 133 metacells.
    km = KMeans(n_clusters=n_metacells, n_init=KMEANS_N_INIT, random_state=seed, algorithm="elkan")
    labels = repair_count(km.fit_predict(U), X, n_metacells)
    return merge_small(labels, W, X, n_metacells, min_size_fraction * n / n_metacells)


def spectral_from_kernel(W: sp.csr_matrix, X: np.ndarray, n_metacells: int, seed: int = 0, **options) -> np.ndarray:
    """Exactly ``n_metacells`` groups from a kernel, clustering connected components apart.

    ``options`` (``_spectral_connected``): ``coordinates`` ('diffusion' or 'njw'), ``steps``
    (random-walk steps summed in the diffusion coordinates), ``min_size_fraction`` (metacells
    under this fraction of the mean size are merged; 0 turns merging off).
    """
    n_comp, comp = connected_components(W, directed=False)
    if n_comp == 1 or n_metacells < n_comp:
        labels = _spectral_connected(W, X, n_metacells, seed, **options)
        return relabel_by_first_occurrence(labels)
    comp = relabel_by_first_occurrence(comp)
    shares = allot(np.bincount(comp), n_metacells)
    labels = np.empty(W.shape[0], dtype=np.int64)
    offset = 0
    for c, share in enumerate(shares):
        members = np.flatnonzero(comp == c)
        sub = W[members][:, members].tocsr()
        labels[members] = _spectral_connected(sub, X[members], int(share), seed, **options) + offset
        offset += int(share)
    return relabel_by_first_occurrence(labels)


def coarse_partition(X: np.ndarray, part_size: int, seed: int) -> np.ndarray:
    """Parts of about ``part_size`` cells (MiniBatchKMeans); parts over 1.5x are cut again.

    The cost inside a part grows as its size cubed, so oversized parts are what matter. More
    than ``FLAT_MAX_PARTS`` parts are made in two levels (about sqrt(parts) groups, then each
    group into its parts): MiniBatchKMeans costs n x clusters per pass, and one level of 1,035
    clusters on 10^6 x 30 cells took 38 s of CPU.
    """
    n = X.shape[0]
    n_parts = max(1, int(np.ceil(n / part_size)))
    if n_parts == 1:
        return np.zeros(n, dtype=np.int64)
    if n_parts > FLAT_MAX_PARTS:
        groups = MiniBatchKMeans(n_clusters=int(np.ceil(np.sqrt(n_parts))), random_state=seed, n_init=3,
                                 batch_size=4096).fit_predict(X)
        parts = np.empty(n, dtype=np.int64)
        offset = 0
        for members in part_members(groups):
            sub = coarse_partition(X[members], part_size, seed)
            parts[members] = sub + offset
            offset += int(sub.max()) + 1
        return relabel_by_first_occurrence(parts)
    km = MiniBatchKMeans(n_clusters=n_parts, random_state=seed, n_init=3, batch_size=4096)
    parts = relabel_by_first_occurrence(km.fit_predict(X))
    sizes = np.bincount(parts)
    for p in np.flatnonzero(sizes > 1.5 * part_size):
        members = np.flatnonzero(parts == p)
        sub = coarse_partition(X[members], part_size, seed)
        parts[members[sub > 0]] = parts.max() + sub[sub > 0]
    return relabel_by_first_occurrence(parts)


def refine_partition(parts: np.ndarray, indices: np.ndarray, sweeps: int = REFINE_SWEEPS) -> tuple[np.ndarray, int]:
    """Move every cell to the part that holds most of its neighbours (self included).

    A cell moves only when another part holds strictly more of its neighbours than its own
    (ties stay), for at most ``sweeps`` synchronous sweeps, stopping early when nothing moves.
    This puts back most of a small group that k-means sliced between parts: its cells'
    neighbours are mostly each other, wherever the slices went. (Moving whole connected
    fragments instead was tried and did worse on such groups: one stray neighbour edge glues a
    fragment to its host.) Returns the parts (renumbered by first cell, empty parts dropped)
    and the number of cells that moved in total.
    """
    parts = np.asarray(parts, dtype=np.int64).copy()
    indices = np.asarray(indices)
    start = parts.copy()
    for _ in range(int(sweeps)):
        best, best_count = _row_mode(parts[indices])
        moved = best_count > (parts[indices] == parts[:, None]).sum(axis=1)
        if not moved.any():
            break
        parts[moved] = best[moved]
    return relabel_by_first_occurrence(parts), int((parts != start).sum())


def _row_mode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent value of each row (the smallest on ties) and how often it occurs."""
    v = np.sort(values, axis=1)
    n, k = v.shape
    new_run = np.ones((n, k), dtype=bool)
    new_run[:, 1:] = v[:, 1:] != v[:, :-1]
    run_id = np.cumsum(new_run, axis=1) - 1
    # Length of the run each entry belongs to: count entries per (row, run).
    flat = (np.arange(n)[:, None] * k + run_id).ravel()
    length = np.bincount(flat, minlength=n * k).reshape(n, k)
    best_run = np.argmax(length, axis=1)  # first (smallest value) among equally long runs
    first = np.argmax(run_id == best_run[:, None], axis=1)
    return v[np.arange(n), first], length[np.arange(n), best_run]


def default_part_size(n_cells: int, n_metacells: int) -> int:
    """About ``METACELLS_PER_PART`` metacells per part, and at least ``MIN_PART_SIZE`` cells."""
    return max(MIN_PART_SIZE, int(round(METACELLS_PER_PART * n_cells / n_metacells)))


def _spectral_part(X: np.ndarray, n_metacells: int, k: int, seed: int, sigma: np.ndarray, **spectral) -> np.ndarray:
    """One part: exact kNN inside it, the kernel with the given bandwidths, then the spectral step."""
    if n_metacells == X.shape[0]:
        return np.arange(X.shape[0], dtype=np.int64)
    idx, dist = knn(X, k=k, method="exact")
    return spectral_from_kernel(rbf_kernel(idx, dist, sigma=sigma), X, n_metacells, seed, **spectral)


def size_summary(labels: np.ndarray) -> dict:
    """Cells, metacells, min/median/max metacell size and the number of singletons."""
    sizes = np.bincount(labels)
    return {
        "n_cells": int(labels.size),
        "n_metacells": int(sizes.size),
        "min_size": int(sizes.min()),
        "median_size": float(np.median(sizes)),
        "max_size": int(sizes.max()),
        "n_singletons": int((sizes == 1).sum()),
    }


def metacell_names(labels: np.ndarray) -> np.ndarray:
    """Ids ``MC00001``, ``MC00002``, ... for labels 0, 1, ..."""
    width = max(5, len(str(int(labels.max()) + 1)))
    return np.array([f"MC{i + 1:0{width}d}" for i in labels], dtype=object)


class SpectralMetacells(ClusterMixin, BaseEstimator):
    """Spectral clustering of the SEACells kernel into exactly ``n_metacells`` metacells.

    A scikit-learn estimator (``BaseEstimator`` + ``ClusterMixin``: ``get_params``,
    ``set_params``, ``clone``, ``fit_predict``): the constructor only stores its parameters,
    ``fit`` validates them (bad ones raise ``ValueError``; the subclass
    ``MetacellParameterError``/``MetacellCountError`` is also a ``CoemInputError``).

    ``fit(X)`` sets ``labels_`` (0..n-1, numbered in order of first cell), ``names_``
    (``MC00001`` ...), ``n_metacells_``, ``n_features_in_``, ``summary_`` (sizes),
    ``seconds_``, ``timings_`` (seconds per stage) and ``strategy_`` ('exact' or 'partitioned';
    the latter also sets ``parts_``, ``n_parts_``, ``part_size_`` and ``n_moved_``, the cells
    moved across borders).

    ``random_state``: int (default 0), ``numpy.random.RandomState`` (an int is drawn from it) or
    None, which here means 0 (metacells are deterministic by design, so a pipeline re-run gives
    the same ids). ``seed`` is the former name, kept as a deprecated alias (FutureWarning).
    ``part_size`` None: ``default_part_size`` (about 13 metacells, at least 1,000 cells).
    ``neighbours`` (partitioned path): 'parts' searches each cell's own and next nearest part
    (``partition_knn``); 'global' uses ``knn(method=knn_method)`` over all cells, i.e.
    pynndescent from ``AUTO_APPROX_MIN_CELLS`` cells (three times the CPU time at 10^6 cells).
    ``diffusion_steps``: random-walk steps summed in the diffusion coordinates (more: metacells
    follow the coarse structure more, fewer: closer to even sizes); ``min_size_fraction``:
    metacells under this fraction of the mean size are merged into a neighbour (0: never).
    ``coordinates``: 'diffusion' (default) or 'njw', the row-normalised eigenvectors used before
    (even metacell sizes; on sci-CAR's PCA+LSI z its metacells were tighter in RNA space and
    looser in ATAC space, docs/results.md).
    """

    def __init__(
        self,
        n_metacells: int | None = None,
        cells_per_metacell: float = 75,
        k: int = 15,
        random_state=0,
        exact_max_cells: int = EXACT_MAX_CELLS,
        part_size: int | None = None,
        knn_method: str = "auto",
        n_threads: int | None = 1,
        neighbours: str = "parts",
        diffusion_steps: int = DIFFUSION_STEPS,
        min_size_fraction: float = MIN_SIZE_FRACTION,
        coordinates: str = "diffusion",
        seed: int | None = None,
    ):
        self.n_metacells = n_metacells
        self.cells_per_metacell = cells_per_metacell
        self.k = k
        self.random_state = random_state
        self.exact_max_cells = exact_max_cells
        self.part_size = part_size
        self.knn_method = knn_method
        self.n_threads = n_threads
        self.neighbours = neighbours
        self.diffusion_steps = diffusion_steps
        self.min_size_fraction = min_size_fraction
        self.coordinates = coordinates
        self.seed = seed

    def fit(self, X, y=None) -> "SpectralMetacells":
        """Cluster X (cells x dims) into exactly the resolved number of metacells (``y`` is ignored).

        BLAS and OpenMP run with ``n_threads`` threads (None: the libraries' default). One is
        the default because every stage works on thin blocks or small batches where threads
        mostly synchronise: measured on a busy 2-core machine, 5,000 cells x 67 dims k-means
        took 4.9 s threaded and 1.0 s single-threaded, ARPACK 10 s and 1.9 s, MiniBatchKMeans
        on 100,000 cells 3.4 s and 0.5 s.
        """
        self._validate_params()
        X = self._validate_X(X)
        with threadpool_limits(limits=self.n_threads):
            return self._fit(X)

    def _resolve_seed(self) -> int:
        if self.seed is not None:
            warnings.warn("SpectralMetacells(seed=...) is deprecated; use random_state=...", FutureWarning,
                          stacklevel=4)
            return int(self.seed)
        if self.random_state is None:
            return 0
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _validate_params(self) -> None:
        def bad(problem):
            raise MetacellParameterError(problem)

        if self.n_metacells is not None and (not isinstance(self.n_metacells, numbers.Integral)
                                             or self.n_metacells < 1):
            bad(f"n_metacells must be None or an integer of at least 1, got {self.n_metacells!r}")
        if self.n_metacells is None and (not isinstance(self.cells_per_metacell, numbers.Real)
                                         or not self.cells_per_metacell > 0):
            bad(f"cells_per_metacell must be positive, got {self.cells_per_metacell!r}")
        if not isinstance(self.k, numbers.Integral) or self.k < 2:
            bad(f"k must be at least 2 (self plus one neighbour), got {self.k}")
        if not isinstance(self.exact_max_cells, numbers.Integral) or self.exact_max_cells < 1:
            bad(f"exact_max_cells must be an integer of at least 1, got {self.exact_max_cells!r}")
        if self.part_size is not None and (not isinstance(self.part_size, numbers.Integral) or self.part_size < 2):
            bad(f"part_size must be None or an integer of at least 2, got {self.part_size!r}")
        if self.knn_method not in ("auto", "exact", "approx"):
            bad(f"knn_method must be one of auto, exact, approx, got {self.knn_method!r}")
        if self.n_threads is not None and (not isinstance(self.n_threads, numbers.Integral) or self.n_threads < 1):
            bad(f"n_threads must be None or an integer of at least 1, got {self.n_threads!r}")
        if self.coordinates not in COORDINATES:
            bad(f"coordinates must be one of {', '.join(COORDINATES)}, got {self.coordinates!r}")
        if not isinstance(self.diffusion_steps, numbers.Integral) or self.diffusion_steps < 1:
            bad(f"diffusion_steps must be at least 1, got {self.diffusion_steps}")
        if not isinstance(self.min_size_fraction, numbers.Real) or not 0 <= float(self.min_size_fraction) < 1:
            bad(f"min_size_fraction must be in [0, 1), got {self.min_size_fraction}")
        if self.neighbours not in NEIGHBOURS:
            bad(f"neighbours must be one of {', '.join(NEIGHBOURS)}, got {self.neighbours!r}")
        if self.random_state is not None and not isinstance(self.random_state, (numbers.Integral,
                                                                                np.random.RandomState)):
            bad(f"random_state must be None, an int or a numpy RandomState, got {self.random_state!r}")

    def _validate_X(self, X) -> np.ndarray:
        """A finite, dense float64 cells x dims array (sets ``n_features_in_``); ValueError otherwise."""
        try:
            return validate_data(self, X, dtype=np.float64, ensure_min_samples=2, ensure_all_finite=True)
        except ValueError as err:
            if isinstance(err, CoemInputError):
                raise
            message = str(err)
            if "NaN" in message or "infinity" in message:
                message = f"the embedding contains NaN or infinite values ({message})"
            raise MetacellParameterError(message) from err

    def _fit(self, X: np.ndarray) -> "SpectralMetacells":
        self._seed = self._resolve_seed()
        n = X.shape[0]
        n_mc = resolve_n_metacells(n, self.n_metacells, self.cells_per_metacell)
        self.timings_ = {}
        start = time.perf_counter()
        if n <= self.exact_max_cells:
            self.strategy_ = "exact"
            labels = self._fit_exact(X, n_mc)
        else:
            self.strategy_ = "partitioned"
            labels = self._fit_partitioned(X, n_mc)
        self.labels_ = relabel_by_first_occurrence(labels)
        self.names_ = metacell_names(self.labels_)
        self.n_metacells_ = n_mc
        self.summary_ = size_summary(self.labels_)
        self.seconds_ = time.perf_counter() - start
        s = self.summary_
        _log.info(
            "%d metacells from %d cells (%s) in %.1f s; sizes min %d, median %.1f, max %d",
            n_mc, n, self.strategy_, self.seconds_, s["min_size"], s["median_size"], s["max_size"],
        )
        if s["n_singletons"]:
            _log.warning("%d metacells hold a single cell (outliers far from every other cell)", s["n_singletons"])
        return self

    def _stage(self, name: str, since: float, message: str = "", *args) -> float:
        """Record and log the seconds of one stage; returns the time now (the next stage's start)."""
        now = time.perf_counter()
        self.timings_[name] = round(now - since, 3)
        _log.info("%s: %.1f s" + (f"; {message}" if message else ""), name, now - since, *args)
        return now

    def _spectral_options(self) -> dict:
        return {"coordinates": self.coordinates, "steps": int(self.diffusion_steps),
                "min_size_fraction": float(self.min_size_fraction)}

    def _fit_exact(self, X: np.ndarray, n_mc: int) -> np.ndarray:
        """One kNN graph and kernel over all of X, then the spectral step."""
        if n_mc == X.shape[0]:
            return np.arange(X.shape[0], dtype=np.int64)
        since = time.perf_counter()
        idx, dist = knn(X, k=self.k, method=self.knn_method, seed=self._seed)
        W = rbf_kernel(idx, dist)
        since = self._stage("neighbours", since, "kNN graph and kernel over %d cells", X.shape[0])
        labels = spectral_from_kernel(W, X, n_mc, self._seed, **self._spectral_options())
        self._stage("spectral", since)
        return labels

    def _fit_partitioned(self, X: np.ndarray, n_mc: int) -> np.ndarray:
        """Coarse parts, border cells moved by their neighbours, the spectral step inside each part."""
        n = X.shape[0]
        self.part_size_ = int(self.part_size or default_part_size(n, n_mc))
        since = time.perf_counter()
        parts = coarse_partition(X, self.part_size_, self._seed)
        since = self._stage("partition", since, "%d parts of about %d cells", parts.max() + 1, self.part_size_)
        self.n_moved_ = 0
        if parts.max() + 1 > n_mc:
            # Metacells larger than a part (thousands of cells each): the coarse clusters, n_mc
            # of them, are the metacells.
            km = MiniBatchKMeans(n_clusters=n_mc, random_state=self._seed, n_init=3, batch_size=4096)
            labels = repair_count(km.fit_predict(X), X, n_mc)
            self.parts_, self.n_parts_ = labels, n_mc
            return labels
        if self.neighbours == "parts":
            idx, dist = partition_knn(X, parts, self.k)
        else:
            idx, dist = knn(X, k=self.k, method=self.knn_method, seed=self._seed)
        since = self._stage("neighbours", since, "%s", self.neighbours)
        parts, self.n_moved_ = refine_partition(parts, idx)
        sigma = adaptive_bandwidth(dist)
        del idx, dist
        since = self._stage("refine", since, "%d cells moved to the part of most of their neighbours", self.n_moved_)
        shares = allot(np.bincount(parts), n_mc)
        self.parts_, self.n_parts_ = parts, int(shares.size)
        labels = np.empty(n, dtype=np.int64)
        offset = 0
        for members, share in zip(part_members(parts), shares):
            labels[members] = _spectral_part(X[members], int(share), self.k, self._seed, sigma[members],
                                             **self._spectral_options()) + offset
            offset += int(share)
        self._stage("spectral", since, "%d parts", shares.size)
        return labels
