"""Row-chunked access to count matrices that need not fit in memory, and the linear algebra on it.

A step that reads counts sees them through a :class:`SparseSource`: an in-memory matrix
(:class:`CSRSource`) or a CSR group inside an ``.h5ad``/``.h5mu`` read row by row
(:class:`H5CSRSource`). :class:`ChunkedMatrix` puts a per-chunk transform on top (TF-IDF,
log-normalisation, a column subset) and offers what PCA, LSI and aggregation need: ``A @ X``,
``A.T @ Y`` and column sums, one pass over the rows each. Memory is one chunk plus the
cells x components results, whatever the number of cells; when the transformed chunks fit in
``cache_bytes`` they are kept after the first pass, so small data costs no more than in memory.
Results are the same whether the rows come from memory or disk, and with or without the cache:
the same chunks meet the same arithmetic.

:func:`truncated_svd` is scikit-learn's ``TruncatedSVD(algorithm='randomized')`` (Halko et al.
2011, with LU-normalised power iterations) written on these passes, so LSI of a million cells
needs no more memory than a chunk and a few cells x 60 matrices.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from coem._logging import get_logger
from coem.errors import CoemInputError

# Rows per chunk (COEM_CHUNK_ROWS overrides): 10,000 cells x 120,000 peaks at 5% open is 60 M
# entries, about 700 MB as float64 CSR.
CHUNK_ROWS = int(os.environ.get("COEM_CHUNK_ROWS", "10000"))
# Transformed chunks kept in memory after the first pass, when they fit (bytes; COEM_CHUNK_CACHE_GB
# overrides, 0 = always read again): 4 GiB keeps 10^5-cell samples in memory and streams
# 10^6-cell ones from disk.
CACHE_BYTES = int(float(os.environ.get("COEM_CHUNK_CACHE_GB", "4")) * 2**30)


@runtime_checkable
class SparseSource(Protocol):
    """Row access to a cells x features count matrix."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def __len__(self) -> int: ...

    def get_rows(self, idx: np.ndarray) -> sp.csr_matrix:
        """CSR rows ``idx`` (sorted ascending, unique) in that order, all features."""
        ...


class CSRSource:
    """A :class:`SparseSource` over an in-memory scipy sparse matrix (kept as float32 CSR)."""

    def __init__(self, matrix):
        if not sp.issparse(matrix):
            matrix = sp.csr_matrix(np.asarray(matrix))
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def get_rows(self, idx: np.ndarray) -> sp.csr_matrix:
        return self.matrix[np.asarray(idx, dtype=np.int64)]


class H5CSRSource:
    """A :class:`SparseSource` over an anndata-encoded CSR group in an HDF5 file.

    Only ``indptr`` is held in memory (8 bytes per cell); each batch reads its rows, merging
    runs of consecutive rows into one read. ``group`` is e.g. ``"X"`` for an .h5ad or
    ``"mod/rna/X"`` for an .h5mu. ``shape`` is given for a group that has the same three arrays
    without anndata's encoding: a 10x ``/matrix`` (features x cells CSC, that is cells x
    features CSR), whose shape is ``(cells, features)``.
    """

    def __init__(self, path, group: str = "X", shape: tuple[int, int] | None = None):
        import h5py

        self._file = h5py.File(path, "r")
        node = self._file[group]
        if shape is None:
            encoding = node.attrs.get("encoding-type", "")
            if isinstance(encoding, bytes):
                encoding = encoding.decode()
            if not isinstance(node, h5py.Group) or encoding != "csr_matrix":
                raise CoemInputError(f"{group} is not a CSR matrix (encoding {encoding!r}); store counts as CSR",
                                     file=path)
            shape = node.attrs["shape"]
        self._data = node["data"]
        self._indices = node["indices"]
        self._indptr = node["indptr"][:].astype(np.int64)
        self._shape = tuple(int(v) for v in shape)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def nnz(self) -> int:
        """Stored entries (what the matrix would hold in memory)."""
        return int(self._data.shape[0])

    def get_rows(self, idx: np.ndarray) -> sp.csr_matrix:
        idx = np.asarray(idx, dtype=np.int64)
        starts, ends = self._indptr[idx], self._indptr[idx + 1]
        data, indices = [], []
        for run in np.split(np.arange(idx.size), np.flatnonzero(np.diff(idx) != 1) + 1):
            if run.size:
                lo, hi = starts[run[0]], ends[run[-1]]
                data.append(self._data[lo:hi])
                indices.append(self._indices[lo:hi])
        indptr = np.concatenate([[0], np.cumsum(ends - starts)])
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
        return sp.csr_matrix(
            (cat(data, np.float32), cat(indices, np.int64), indptr), shape=(idx.size, self._shape[1])
        )

    def close(self) -> None:
        self._file.close()


def as_source(matrix) -> SparseSource:
    """Wrap a (sparse or dense) matrix as a :class:`CSRSource`; pass sources through."""
    return matrix if isinstance(matrix, SparseSource) and not sp.issparse(matrix) else CSRSource(matrix)


def iter_chunks(source: SparseSource, chunk_rows: int = CHUNK_ROWS) -> Iterator[sp.csr_matrix]:
    """All rows of a source, ``chunk_rows`` at a time."""
    for start in range(0, len(source), chunk_rows):
        yield source.get_rows(np.arange(start, min(start + chunk_rows, len(source))))




class _MatrixRows:
    """Row slices of an in-memory sparse matrix without a copy (a CSR row slice is a view of its
    index ranges), as a :class:`SparseSource`."""

    def __init__(self, matrix):
        self.matrix = matrix if sp.isspmatrix_csr(matrix) else sp.csr_matrix(matrix)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def get_rows(self, idx: np.ndarray) -> sp.csr_matrix:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and idx[-1] - idx[0] + 1 == idx.size:
            return self.matrix[int(idx[0]) : int(idx[-1]) + 1]
        return self.matrix[idx]


def _row_view(block: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a CSR matrix as a view of its arrays (scipy's row slice copies them)."""
    lo, hi = block.indptr[start], block.indptr[stop]
    return sp.csr_matrix((block.data[lo:hi], block.indices[lo:hi], block.indptr[start : stop + 1] - lo),
                         shape=(stop - start, block.shape[1]), copy=False)


def rows_of(matrix) -> SparseSource:
    """A :class:`SparseSource` for a matrix or a source (sources pass through; no copy of a CSR)."""
    if isinstance(matrix, SparseSource) and not sp.issparse(matrix):
        return matrix
    if not sp.issparse(matrix):
        matrix = sp.csr_matrix(np.asarray(matrix))
    return _MatrixRows(matrix)


# Long computations log their progress from this many rows (cells).
PROGRESS_MIN_ROWS = 200_000
_log = get_logger("coem.chunked")

# Rows per slice of a chunk in the sparse products; fixed, so results do not depend on the threads.
SLICE_ROWS = 1024


def threads() -> int:
    """Threads for the chunked products and the per-metacell tests: ``OMP_NUM_THREADS`` when set
    (the pipeline sets it to the task's cpus), else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _pool():
    """A thread pool of ``threads()`` workers, or None for one thread."""
    n = threads()
    if n <= 1:
        yield None
        return
    with ThreadPoolExecutor(n) as pool:
        yield pool


# A chunk transform: (rows as float64 CSR, index of the first row) -> the transformed rows (CSR).
Transform = Callable[[sp.csr_matrix, int], sp.csr_matrix]


class ChunkedMatrix:
    """``transform(rows)`` of a count matrix, read ``chunk_rows`` rows at a time.

    ``source`` is a sparse matrix or a :class:`SparseSource`; ``transform`` maps each chunk (float64
    CSR, and the index of its first row) to the matrix's rows, e.g. TF-IDF with precomputed peak
    totals. The transformed chunks are kept after the first complete pass while they fit in
    ``cache_bytes`` (default ``CACHE_BYTES``; 0 = always read again).
    """

    def __init__(self, source, transform: Transform | None = None, chunk_rows: int = CHUNK_ROWS,
                 cache_bytes: int | None = None):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.source = rows_of(source)
        self.transform = transform
        self.chunk_rows = int(chunk_rows)
        self.cache_bytes = CACHE_BYTES if cache_bytes is None else int(cache_bytes)
        self._cache: list[tuple[int, sp.csr_matrix]] | None = None
        self._n_cols: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        if self._n_cols is None:  # a transform may select columns: ask the first chunk
            self._n_cols = next(self.blocks())[1].shape[1] if self.transform else self.source.shape[1]
        return len(self.source), self._n_cols

    def blocks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, transformed chunk) for every chunk, from the cache when it holds them."""
        if self._cache is not None:
            yield from self._cache
            return
        cache, size = [], 0
        n = len(self.source)
        for start in range(0, n, self.chunk_rows):
            rows = self.source.get_rows(np.arange(start, min(start + self.chunk_rows, n)))
            block = sp.csr_matrix(rows, dtype=np.float64)
            if self.transform is not None:
                block = sp.csr_matrix(self.transform(block, start))
            if cache is not None:
                size += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
                cache = cache + [(start, block)] if size <= self.cache_bytes else None
            yield start, block
        if cache is not None:  # only a complete pass fills the cache
            self._cache = cache

    def _slices(self, function, block: sp.csr_matrix, pool) -> list:
        """``function(first row, rows)`` on ``SLICE_ROWS``-row slices of a chunk, on the pool's threads
        (scipy's sparse products release the GIL); results in row order."""
        starts = list(range(0, block.shape[0], SLICE_ROWS))
        pieces = [_row_view(block, s, min(s + SLICE_ROWS, block.shape[0])) for s in starts]
        return list(pool.map(function, starts, pieces)) if pool else list(map(function, starts, pieces))

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """``A @ X`` (rows x k), one pass."""
        with _pool() as pool:
            return np.vstack([part for _, block in self.blocks()
                              for part in self._slices(lambda _, rows: np.asarray(rows @ X), block, pool)])

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        """``A.T @ Y`` (columns x k), one pass; slices are added in row order whatever the threads."""
        out = np.zeros((self.shape[1], Y.shape[1]))
        with _pool() as pool:
            for start, block in self.blocks():
                rows_of_y = Y[start : start + block.shape[0]]
                for part in self._slices(lambda s, rows: np.asarray(rows.T @ rows_of_y[s : s + rows.shape[0]]),
                                         block, pool):
                    out += part
        return out

    def column_sums(self, squares: bool = False) -> np.ndarray:
        """Sum over rows of every column (of the squared values with ``squares``), one pass."""
        total = np.zeros(self.shape[1])
        for _, block in self.blocks():
            values = block.data * block.data if squares else block.data
            total += np.bincount(block.indices, weights=values, minlength=total.size)
        return total

    def row_sums(self) -> np.ndarray:
        """Sum of every row, one pass."""
        return np.concatenate([np.asarray(block.sum(axis=1)).ravel() for _, block in self.blocks()])

    def gram(self, dense_entries: int = 4_000_000) -> np.ndarray:
        """``A.T @ A`` (columns x columns, dense) from row blocks of at most ``dense_entries`` values
        made dense one at a time: BLAS, not a sparse product."""
        p = self.shape[1]
        step = max(1, dense_entries // max(p, 1))
        gram = np.zeros((p, p))
        for _, block in self.blocks():
            for start in range(0, block.shape[0], step):
                dense = block[start : start + step].toarray()
                gram += dense.T @ dense
        return gram


def truncated_svd(A: ChunkedMatrix, n_components: int, n_iter: int = 7, n_oversamples: int = 10,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ``TruncatedSVD(n_components, algorithm='randomized', n_iter, n_oversamples,
    random_state=seed).fit_transform`` on row passes: (scores ``A @ V``, singular values, ``V.T``).

    The same random start (``RandomState(seed).normal``), LU-normalised power iterations, QR and
    small SVD as scikit-learn 1.x, the same sign rule (the largest-magnitude entry of each
    component positive), so the scores equal scikit-learn's on an in-memory matrix to rounding;
    2 * n_iter + 3 passes over the rows.
    """
    from functools import partial

    from scipy import linalg

    import time

    n, p = A.shape
    if not 1 <= n_components < min(n, p):
        raise CoemInputError(f"truncated SVD needs 1 <= n_components < min(rows, columns) = {min(n, p)}, "
                             f"got {n_components}")
    transpose = n < p  # as scikit-learn: factor the wider orientation M = A.T
    m_times, mt_times = (A.rmatmat, A.matmat) if transpose else (A.matmat, A.rmatmat)
    Q = np.random.RandomState(seed).normal(size=(n if transpose else p, n_components + n_oversamples))
    normalise = partial(linalg.lu, permute_l=True, check_finite=False) if n_iter > 2 else (lambda x: (x, None))
    start = time.perf_counter()
    for iteration in range(n_iter):
        Q, _ = normalise(m_times(Q))
        Q, _ = normalise(mt_times(Q))
        if n >= PROGRESS_MIN_ROWS:  # minutes per pass at a million cells: say where it is
            _log.info("randomised SVD of %d x %d: power iteration %d of %d (%.0f s)", n, p, iteration + 1, n_iter,
                      time.perf_counter() - start)
    Q, _ = linalg.qr(m_times(Q), mode="economic", check_finite=False)
    B = mt_times(Q).T  # Q.T @ M
    U_hat, s, Vt = linalg.svd(B, full_matrices=False, lapack_driver="gesdd")
    U = Q @ U_hat
    components = U[:, :n_components].T if transpose else Vt[:n_components]
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(n_components), largest])
    signs[signs == 0] = 1
    components = components * signs[:, None]
    return A.matmat(components.T), s[:n_components], components
