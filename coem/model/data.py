"""Minibatches for the joint VAE from sparse count matrices, densified one batch at a time.

Memory is the sparse matrices plus one dense batch, so the model trains on a million cells
on a laptop-sized machine. Rows come from a :class:`SparseSource`: an in-memory CSR matrix
(:class:`CSRSource`) or a CSR group inside an ``.h5ad``/``.h5mu`` file read row by row
(:class:`H5CSRSource`, for data larger than memory). Feature selection (top-variance genes,
peaks open in at most ``max_peak_fraction`` of cells) is computed in row chunks
over the source and applied per batch, so no filtered copy of the matrix is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from coem.chunked import CHUNK_ROWS, CSRSource, H5CSRSource, SparseSource, as_source, iter_chunks  # noqa: F401
from coem.errors import CoemInputError

# The most often open peaks kept for the VAE (of those open in <= max_peak_fraction of cells):
# cuts the ATAC layers' cost and drops peaks seen in a handful of cells (docs/results.md).
N_PEAKS = 10_000
# Peaks open in more than this fraction of cells are dropped as ubiquitous (scMVP's rule). On
# real sci-CAR data 10% gave purer metacells than 50% in 6 of 6 paired runs; on dense data (our
# simulator opens more than half of its open peaks in more than 10% of cells) it drops the markers of abundant
# states and 0.5 is better: docs/results.md, "the peak filter".
MAX_PEAK_FRACTION = 0.1


def gene_variances(source: SparseSource, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Per-gene variance of log1p(counts per 10k): ranks genes without the raw-count bias
    toward highly expressed genes. Computed in chunks (two running sums per gene)."""
    n_cells, n_genes = source.shape
    total, total_sq = np.zeros(n_genes), np.zeros(n_genes)
    for chunk in iter_chunks(source, chunk_rows):
        lib = np.asarray(chunk.sum(axis=1)).ravel()
        scale = np.repeat(1e4 / np.maximum(lib, 1.0), np.diff(chunk.indptr))
        values = np.log1p(chunk.data.astype(np.float64) * scale)
        total += np.bincount(chunk.indices, weights=values, minlength=n_genes)
        total_sq += np.bincount(chunk.indices, weights=values**2, minlength=n_genes)
    mean = total / max(n_cells, 1)
    return total_sq / max(n_cells, 1) - mean**2


def open_fraction(source: SparseSource, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Fraction of cells in which each feature is non-zero."""
    n_cells, n_features = source.shape
    counts = np.zeros(n_features, dtype=np.int64)
    for chunk in iter_chunks(source, chunk_rows):
        counts += np.bincount(chunk.indices[chunk.data > 0], minlength=n_features)
    return counts / max(n_cells, 1)


def select_genes(source: SparseSource, n_genes: int | None, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Column indices (ascending) of the ``n_genes`` most variable genes; all genes when
    ``n_genes`` is None/0 or not smaller than the number of genes."""
    total = source.shape[1]
    if not n_genes or n_genes >= total:
        return np.arange(total)
    order = np.argsort(-gene_variances(source, chunk_rows), kind="stable")
    return np.sort(order[:n_genes])


def select_peaks(source: SparseSource, max_peak_fraction: float, chunk_rows: int = CHUNK_ROWS,
                 n_peaks: int | None = None) -> np.ndarray:
    """Column indices (ascending) of peaks open in at least one cell and in at most
    ``max_peak_fraction`` of cells (ubiquitous peaks carry no cell-state information; see
    ``MAX_PEAK_FRACTION``); with ``n_peaks``, only the ``n_peaks`` most often open of those
    (peaks open in a handful of cells are mostly noise, and the ATAC layers' cost grows with
    the peaks)."""
    frac = open_fraction(source, chunk_rows)
    keep = np.flatnonzero((frac > 0) & (frac <= max_peak_fraction))
    if keep.size == 0:
        raise CoemInputError(
            f"no ATAC peak is open in more than 0% and at most {max_peak_fraction:.0%} of cells "
            f"({frac.size} peaks, {int((frac > max_peak_fraction).sum())} above the limit); "
            "raise --max-peak-fraction (1.0 keeps every peak)"
        )
    if n_peaks and n_peaks < keep.size:
        keep = np.sort(keep[np.argsort(-frac[keep], kind="stable")[:n_peaks]])
    return keep


def split_rows(n_obs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/validation split (validation empty when the fraction rounds to 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n_obs)
    n_val = int(round(n_obs * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class MultiomeData:
    """Paired RNA/ATAC sources with the selected features and the train/validation split."""

    rna: SparseSource
    atac: SparseSource
    gene_idx: np.ndarray
    peak_idx: np.ndarray
    binarize_atac: bool = True
    train_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_obs(self) -> int:
        return len(self.rna)

    @property
    def n_genes(self) -> int:
        return int(self.gene_idx.size)

    @property
    def n_peaks(self) -> int:
        return int(self.peak_idx.size)

    def _dense(self, source: SparseSource, rows: np.ndarray, cols: np.ndarray, binarize: bool) -> torch.Tensor:
        block = source.get_rows(rows)
        if cols.size != block.shape[1]:
            block = block[:, cols]
        dense = block.toarray().astype(np.float32, copy=False)
        if binarize:
            dense = (dense > 0).astype(np.float32)
        return torch.from_numpy(dense)

    def get_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense float32 tensors (RNA counts, ATAC counts or 0/1) for ``rows`` (sorted here)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        return (
            self._dense(self.rna, rows, self.gene_idx, False),
            self._dense(self.atac, rows, self.peak_idx, self.binarize_atac),
        )

    def batches(
        self, rows: np.ndarray, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over ``rows``; shuffled with ``generator`` when given, in order otherwise."""
        rows = np.asarray(rows, dtype=np.int64)
        if generator is not None:
            rows = rows[torch.randperm(rows.size, generator=generator).numpy()]
        for start in range(0, rows.size, batch_size):
            chunk = rows[start : start + batch_size]
            if generator is None:
                yield self._ordered_batch(chunk)
            else:
                yield self.get_batch(chunk)

    def _ordered_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch in the given row order (embedding output must follow the caller's order)."""
        order = np.argsort(rows, kind="stable")
        x_rna, x_atac = self.get_batch(rows)
        inverse = torch.from_numpy(np.argsort(order, kind="stable"))
        return x_rna[inverse], x_atac[inverse]


def _check_counts(source: SparseSource, name: str, chunk_rows: int) -> None:
    """Negative values mean the matrix is not counts (e.g. scaled data): say so early."""
    for chunk in iter_chunks(source, chunk_rows):
        if chunk.data.size and float(chunk.data.min()) < 0:
            raise CoemInputError(f"{name} matrix has negative values; the VAE needs raw counts")
        return  # the first chunk is enough to catch a transformed matrix


def prepare_data(
    rna,
    atac,
    n_genes: int | None = 2000,
    max_peak_fraction: float = MAX_PEAK_FRACTION,
    n_peaks: int | None = N_PEAKS,
    binarize_atac: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> MultiomeData:
    """Select features, split cells and wrap everything for training.

    ``rna``/``atac``: cells x features matrices (scipy sparse, dense, or a SparseSource) with
    the same cells in the same order.
    """
    rna, atac = as_source(rna), as_source(atac)
    if len(rna) != len(atac):
        raise CoemInputError(f"RNA has {len(rna)} cells but ATAC has {len(atac)}; pair the modalities first")
    if len(rna) < 2:
        raise CoemInputError(f"the VAE needs at least 2 cells, got {len(rna)}")
    _check_counts(rna, "RNA", chunk_rows)
    _check_counts(atac, "ATAC", chunk_rows)
    gene_idx = select_genes(rna, n_genes, chunk_rows)
    peak_idx = select_peaks(atac, max_peak_fraction, chunk_rows, n_peaks=n_peaks)
    train_idx, val_idx = split_rows(len(rna), val_fraction, seed)
    return MultiomeData(rna, atac, gene_idx, peak_idx, binarize_atac, train_idx, val_idx)
