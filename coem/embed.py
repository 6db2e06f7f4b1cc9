"""The classical joint embedding: RNA PCA + ATAC LSI, each block standardised, concatenated.

This is the non-VAE baseline embedding (and what evaluation computes per modality): it is
fast, deterministic and needs no GPU. Everything stays sparse; only cells x components
matrices are ever dense.

RNA: library-size normalisation to 1e4 + log1p, highly variable genes by the Seurat v3
rule (variance of clipped standardised raw counts against a loess fit of log variance on log
mean), genes scaled to unit variance, PCA computed exactly from the gene x gene correlation
matrix (so the centring stays implicit and the sparse matrix is never densified).

ATAC: TF-IDF exactly as Signac's ``RunTFIDF`` default (method 1):
``log1p(x_ij / sum_j x_ij * n_cells / sum_i x_ij * 1e4)`` (term frequency per cell times
inverse document frequency per peak, scaled by 1e4), then truncated SVD (LSI). The component
most correlated with log sequencing depth (|r| > 0.5, usually the first) is dropped, as
Signac/ArchR users do by hand.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from threadpoolctl import threadpool_limits

from coem.chunked import CHUNK_ROWS, ChunkedMatrix, truncated_svd
from coem.errors import CoemInputError

TARGET_SUM = 1e4
DEPTH_R_THRESHOLD = 0.5
# Values per dense row block when forming X.T @ X (4e6 float64 = 32 MB).
GRAM_CHUNK_ENTRIES = 4_000_000


# ----------------------------------------------------------------------------- RNA

def normalize_log1p(counts, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """Counts per ``target_sum`` then log1p, kept sparse (zero-count cells stay zero)."""
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    np.log1p(X.data, out=X.data)
    return X


def _mean_var(X: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and unbiased variance of a sparse matrix without densifying it."""
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    var = (sq - mean**2) * n / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def _loess(x: np.ndarray, y: np.ndarray, span: float = 0.3, n_grid: int = 256) -> np.ndarray:
    """Local quadratic regression (tricube weights, like R's loess degree=2) of y on x.

    Fitted on a grid of ``n_grid`` quantiles of x and linearly interpolated, so the cost is
    O(n_grid * n) instead of O(n^2); with hundreds of grid points the curve is smooth enough
    for ranking genes.
    """
    n = x.size
    q = max(int(np.ceil(span * n)), min(n, 3))
    grid = np.unique(np.quantile(x, np.linspace(0, 1, min(n_grid, n))))
    fitted = np.empty(grid.size)
    for g, x0 in enumerate(grid):
        dist = np.abs(x - x0)
        h = np.partition(dist, q - 1)[q - 1]
        h = h if h > 0 else 1.0
        w = np.clip(1 - (dist / (h * 1.0000001)) ** 3, 0, None) ** 3
        keep = w > 0
        dx = x[keep] - x0
        design = np.column_stack([np.ones_like(dx), dx, dx * dx])
        sw = np.sqrt(w[keep])
        coef, *_ = np.linalg.lstsq(design * sw[:, None], y[keep] * sw, rcond=None)
        fitted[g] = coef[0]
    if grid.size == 1:
        return np.full(n, fitted[0])
    return np.interp(x, grid, fitted)


def _raw_rows(counts, chunk_rows: int = CHUNK_ROWS, cache_bytes: int | None = None) -> ChunkedMatrix:
    """Counts (a sparse matrix, a ``coem.chunked`` source or a ``ChunkedMatrix``) as row chunks."""
    if isinstance(counts, ChunkedMatrix):
        return counts
    return ChunkedMatrix(counts, chunk_rows=chunk_rows, cache_bytes=cache_bytes)


def highly_variable_genes(counts, n_top: int = 2000, span: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Seurat v3 highly variable genes on raw counts (a matrix, a source or a ``ChunkedMatrix``).

    Returns (indices of the top genes, in decreasing order of standardised variance;
    standardised variance of every gene, 0 for constant genes). Each gene's counts are
    standardised by the loess-expected standard deviation for its mean and clipped at
    sqrt(n_cells), as Seurat's ``FindVariableFeatures(selection.method = 'vst')``. Two passes
    over the rows: mean and variance, then the clipped sum.
    """
    rows = _raw_rows(counts)
    n, n_genes = rows.shape
    mean = rows.column_sums() / max(n, 1)
    var = np.maximum((rows.column_sums(squares=True) / max(n, 1) - mean**2) * n / max(n - 1, 1), 0.0)
    not_const = var > 0
    if not np.any(not_const):
        raise CoemInputError("every gene has the same count in all cells; no variable genes to embed on")
    reg_std = np.ones_like(mean)
    fit = _loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span)
    reg_std[not_const] = np.sqrt(10.0**fit)
    clip = mean + reg_std * np.sqrt(n)
    # sum over cells of ((min(x, clip) - mean) / reg_std)^2, zeros contributing mean^2.
    sq_nz, nnz = np.zeros(n_genes), np.zeros(n_genes)
    for _, block in rows.blocks():
        clipped = np.minimum(block.data, clip[block.indices])
        sq_nz += np.bincount(block.indices, weights=(clipped - mean[block.indices]) ** 2, minlength=n_genes)
        nnz += np.bincount(block.indices, minlength=n_genes)
    total = sq_nz + (n - nnz) * mean**2
    norm_var = np.where(not_const, total / (max(n - 1, 1) * reg_std**2), 0.0)
    n_top = int(min(n_top, int(not_const.sum())))
    order = np.lexsort((np.arange(norm_var.size), -norm_var))  # ties: lower index first
    return order[:n_top], norm_var


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive (reproducible signs)."""
    idx = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[idx, np.arange(components.shape[1])])
    signs[signs == 0] = 1
    return components * signs


def sparse_gram(X, chunk_entries: int | None = None) -> np.ndarray:
    """``X.T @ X`` (features x features, dense) from row blocks densified one at a time.

    scipy's sparse-sparse product is the wrong tool here: HVG counts are 10-35% non-zero and
    its cost grows as the squared non-zeros per row (100,000 cells x 2,000 HVGs took over 10
    minutes); a dense block product is BLAS, 100,000 x 2,000 in seconds, with one block of
    ``chunk_entries`` values (default ``GRAM_CHUNK_ENTRIES``, 32 MB) in memory at a time.
    ``X``: a sparse matrix or a ``ChunkedMatrix``.
    """
    return _raw_rows(X).gram(chunk_entries or GRAM_CHUNK_ENTRIES)


def sparse_pca(X, n_components: int, scale: bool = True) -> tuple[np.ndarray, dict]:
    """Exact PCA of a sparse matrix (or ``ChunkedMatrix``) with implicit centring (and unit-variance
    scaling).

    The feature x feature covariance is formed from ``X.T @ X`` (small: features are the
    HVGs), so centred data are never materialised; three passes over the rows (column sums,
    Gram matrix, scores). Returns (cells x n_components scores, info).
    """
    X = _raw_rows(X)
    n, p = X.shape
    mean = X.column_sums() / max(n, 1)
    gram = sparse_gram(X)
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    std[std == 0] = 1.0
    if scale:
        cov = cov / np.outer(std, std)
    else:
        std = np.ones(p)
    # A few-thousand-square eigenproblem: single-threaded BLAS takes ~1 s and is immune to the
    # oversubscription that made it take 17 s on a busy 2-core machine.
    with threadpool_limits(limits=1, user_api="blas"):
        evals, evecs = eigh(cov, subset_by_index=[p - n_components, p - 1])
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], _fix_signs(evecs[:, order])
    loadings = evecs / std[:, None]
    scores = X.matmat(loadings) - mean @ loadings
    info = {
        "explained_variance": evals.tolist(),
        "explained_variance_ratio": (evals / max(np.trace(cov), 1e-300)).tolist(),
    }
    return scores, info


def rna_pca(counts, n_hvg: int = 2000, n_pcs: int = 30, chunk_rows: int = CHUNK_ROWS,
            cache_bytes: int | None = None) -> tuple[np.ndarray, dict]:
    """RNA block: normalise + log1p, Seurat v3 HVGs, scaled PCA. Returns (scores, info).

    ``counts``: a sparse matrix or a ``coem.chunked`` source (e.g. the counts on disk); read in
    chunks of ``chunk_rows`` cells, so memory is a chunk plus cells x n_pcs.
    """
    raw = _raw_rows(counts, chunk_rows, cache_bytes)
    n_cells = raw.shape[0]
    hvg, _ = highly_variable_genes(raw, n_top=n_hvg)
    del raw  # its cached chunks (if any) go before the normalised ones come
    n_pcs_used = int(min(n_pcs, hvg.size - 1, n_cells - 1))
    if n_pcs_used < 1:
        raise CoemInputError(
            f"RNA PCA needs at least 2 cells and 2 variable genes; got {n_cells} cells and {hvg.size} "
            "variable genes. Check the QC thresholds."
        )
    hvg_sorted = np.sort(hvg)
    source = counts.source if isinstance(counts, ChunkedMatrix) else counts
    logn = ChunkedMatrix(source, lambda block, _: normalize_log1p(block)[:, hvg_sorted], chunk_rows, cache_bytes)
    scores, info = sparse_pca(logn, n_pcs_used)
    info.update({"hvg_index": hvg_sorted.tolist(), "n_hvg": int(hvg.size), "n_pcs": n_pcs_used})
    return scores, info


# ----------------------------------------------------------------------------- ATAC

def tfidf_rows(idf: np.ndarray, scale_factor: float = TARGET_SUM):
    """The TF-IDF of a chunk of cells, given every peak's IDF (``n_cells / peak total``, 0 for
    empty peaks): a ``coem.chunked`` transform. TF needs only the chunk's own rows."""

    def transform(block: sp.csr_matrix, _start: int = 0) -> sp.csr_matrix:
        X = sp.csr_matrix(block, dtype=np.float64, copy=True)
        cell_tot = np.asarray(X.sum(axis=1)).ravel()
        tf = np.divide(1.0, cell_tot, out=np.zeros_like(cell_tot), where=cell_tot > 0)
        X.data *= np.repeat(tf, np.diff(X.indptr)) * idf[X.indices] * scale_factor
        np.log1p(X.data, out=X.data)
        return X

    return transform


def inverse_document_frequency(n_cells: int, peak_totals: np.ndarray) -> np.ndarray:
    """``n_cells / peak total`` per peak (0 for peaks with no counts)."""
    return np.divide(n_cells, peak_totals, out=np.zeros_like(peak_totals, dtype=np.float64), where=peak_totals > 0)


def tfidf(counts, scale_factor: float = TARGET_SUM) -> sp.csr_matrix:
    """Signac ``RunTFIDF`` method 1: log1p(TF * IDF * scale_factor).

    TF = count / cell total; IDF = n_cells / peak total. Cells or peaks with no counts give
    zero rows/columns (no division by zero).
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    idf = inverse_document_frequency(X.shape[0], np.asarray(X.sum(axis=0)).ravel())
    return tfidf_rows(idf, scale_factor)(X)


def depth_correlations(scores: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Pearson r of each component with log1p(depth); 0 where either side is constant."""
    logd = np.log1p(np.asarray(depth, dtype=np.float64))
    dc = logd - logd.mean()
    sc = scores - scores.mean(axis=0)
    denom = np.sqrt((dc**2).sum() * (sc**2).sum(axis=0))
    num = dc @ sc
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def atac_lsi(counts, n_lsi: int = 30, seed: int = 0, depth_r: float = DEPTH_R_THRESHOLD,
             chunk_rows: int = CHUNK_ROWS, cache_bytes: int | None = None) -> tuple[np.ndarray, dict]:
    """ATAC block: TF-IDF + truncated SVD with n_lsi + 1 components, one of them dropped.

    The dropped component is the one most correlated with log depth when |r| > ``depth_r``;
    otherwise the last one, so the block always has ``n_lsi`` columns. ``counts``: a sparse
    matrix or a ``coem.chunked`` source; one pass for the totals, then the randomised SVD's
    passes over TF-IDF chunks (``coem.chunked.truncated_svd``: scikit-learn's ``TruncatedSVD``,
    7 power iterations, seeded).
    """
    raw = ChunkedMatrix(counts, chunk_rows=chunk_rows, cache_bytes=0)
    n_cells, n_peaks = raw.shape
    n_comp = int(min(n_lsi + 1, n_peaks - 1, n_cells - 1))
    if n_comp < 2:
        raise CoemInputError(
            f"ATAC LSI needs at least 3 cells and 3 peaks; got {n_cells} cells and {n_peaks} peaks."
        )
    depth, peak_totals = np.zeros(n_cells), np.zeros(n_peaks)
    for start, block in raw.blocks():
        depth[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        peak_totals += np.bincount(block.indices, weights=block.data, minlength=n_peaks)
    rows = ChunkedMatrix(raw.source, tfidf_rows(inverse_document_frequency(n_cells, peak_totals)), chunk_rows,
                         cache_bytes)
    scores, singular_values, _ = truncated_svd(rows, n_comp, n_iter=7, seed=seed)
    r = depth_correlations(scores, depth)
    best = int(np.argmax(np.abs(r)))
    drop = best if abs(r[best]) > depth_r else n_comp - 1
    keep = [i for i in range(n_comp) if i != drop]
    info = {
        "tfidf": "Signac RunTFIDF method 1: log1p(count / cell_total * n_cells / peak_total * 1e4)",
        "n_lsi": len(keep),
        "depth_correlations": r.tolist(),
        "dropped_component": drop,
        "dropped_for_depth": bool(drop == best and abs(r[best]) > depth_r),
        "singular_values": singular_values.tolist(),
    }
    return scores[:, keep], info


# ----------------------------------------------------------------------------- joint

def standardize_block(Y: np.ndarray) -> np.ndarray:
    """Centre every column and scale the block to total variance 1 (sum of column variances).

    Both modalities then contribute the same expected squared distance between cells,
    whatever their number of components; the within-block variance ratios are kept.
    """
    Y = np.asarray(Y, dtype=np.float64)
    Yc = Y - Y.mean(axis=0)
    total = (Yc**2).sum() / max(Y.shape[0] - 1, 1)
    return Yc / np.sqrt(total) if total > 0 else Yc


def _in_obs_order(mdata, mod: str):
    """The modality with cells in ``mdata.obs_names`` order (subset only when it differs)."""
    adata = mdata.mod[mod]
    return adata if adata.obs_names.equals(mdata.obs_names) else adata[mdata.obs_names]


def pca_lsi_embedding(mdata, n_hvg: int = 2000, n_pcs: int = 30, n_lsi: int = 30, seed: int = 0):
    """Joint embedding ``[standardised RNA PCA | standardised ATAC LSI]`` of a multiome MuData.

    Returns (embedding: cells x (n_pcs + n_lsi) float32, info) where info holds the blocks
    (``X_pca``, ``X_lsi``) and per-modality details (HVG names, dropped LSI component, ...).
    Cells are taken in ``mdata.obs_names`` order.
    """
    for mod in ("rna", "atac"):
        if mod not in mdata.mod:
            raise CoemInputError(f"modality '{mod}' is missing; the embedding needs both 'rna' and 'atac'")
    rna, atac = (_in_obs_order(mdata, mod) for mod in ("rna", "atac"))
    pcs, rna_info = rna_pca(rna.X, n_hvg=n_hvg, n_pcs=n_pcs)
    lsi, atac_info = atac_lsi(atac.X, n_lsi=n_lsi, seed=seed)
    rna_info["hvg"] = rna.var_names[rna_info.pop("hvg_index")].tolist()
    embedding = np.hstack([standardize_block(pcs), standardize_block(lsi)]).astype(np.float32)
    info = {
        "rna": rna_info,
        "atac": atac_info,
        "X_pca": pcs.astype(np.float32),
        "X_lsi": lsi.astype(np.float32),
        "block_standardisation": "columns centred, each block scaled to total variance 1",
    }
    return embedding, info
