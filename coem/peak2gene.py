"""Peak-to-gene links: correlate each gene with the peaks near its TSS across metacells, and
test each correlation against matched background peaks.

Why metacells: single cells are too sparse for a peak and a gene to co-vary visibly; summing
counts over ~75 similar cells gives profiles whose correlation reflects regulation.

Definitions (docs/output.md, "Peak-to-gene links", says the same for users):

- candidates: peaks whose centre ``(start + end) // 2`` lies within ``+-window`` of the gene's
  TSS (``anchor='tss'``, COEM/ArchR) or of its body ``[start - window, end + window]``
  (``anchor='gene_body'``, SEACells); both ends inclusive. ``distance`` = peak centre - TSS,
  sign flipped for ``-`` strand genes, so positive means downstream in transcription direction.
- values: ``log1p(count * 1e6 / library size)`` per observation. Library sizes: the
  modality's ``obs['library_size']`` when it has one (e.g. sci-CAR's UMIs over all genes,
  summed per metacell by :mod:`coem.aggregate`), else the median-of-ratios size factors of
  DESeq (``normalisation='median_ratio'``, default; robust to the composition shifts that make
  CPM correlate unrelated features), or plain totals (``'cpm'``). Spearman ranks those values
  per feature (average ranks for ties).
- skipped: a pair whose gene or peak does not vary across the observations cannot be
  correlated; it is dropped from the table and counted (``n_pairs_skipped_constant``).
- ``r``: Pearson (default) or Spearman correlation across observations.
- background (Signac's LinkPeaks, after SHARE-seq; :mod:`coem.background`): for a pair, the
  gene's correlations with ``n_background`` (default 200) peaks on *other chromosomes* than
  the gene, matched to the tested peak on mean accessibility, fraction of observations where
  it is open and width (nested quantile bins), and on GC content when the genome is given.
  ``bg_mean``/``bg_sd``/``bg_n`` are their mean, sd and count.
- ``z = (r - bg_mean) / bg_sd``; a pair with fewer than 20 background peaks (or half of
  ``n_background``, if smaller) gets no z.
- ``p``: the upper tail of z (``alternative='greater'``, default: regulatory links sought are
  positive, as in SEACells) or both tails (``'two-sided'``, Signac), under the **pooled
  empirical null** of background z-scores (:class:`coem.background.PooledNull`; default) or
  the standard normal (``null='gaussian'``, Signac's choice, which is too liberal when a
  gene's background has heavy tails).
- ``weight``: a distance prior ``~ 1 / (1 + |distance| / 10 kb)`` (mean 1 over the tested
  pairs; ``distance_scale=0`` switches it off); ``fdr``: weighted Benjamini-Hochberg over every
  tested pair (BH on ``p / weight``), which controls the FDR like BH and favours pairs near
  the TSS, where regulatory links concentrate. Rank links by ``p / weight``.
- without a background (``n_background=0``), ``p`` is Student's t p-value of r with
  ``n - 2`` degrees of freedom (what ``scipy.stats.pearsonr`` gives) and ``z`` is NaN.
- significant links: ``fdr <= 0.1`` and ``r >= 0.1`` by default (:func:`significant_links`).

Deterministic for a seed and input. Normalisation is O(nnz) on the sparse matrix; correlation
runs over blocks of genes: the pairs' r as row-wise dot products of unit-norm columns, the
background as one genes x pool product per block (single precision), so at most about
``obs x (genes of a block + pairs of a sub-chunk)`` values plus the pool's ``obs x pool``
float32 values are ever dense.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from coem import background
from coem._logging import get_logger
from coem.errors import CoemInputError

log = get_logger(__name__)

ANCHORS = ("tss", "gene_body")
METHODS = ("pearson", "spearman")
# dense values allowed per block (float64): 4M values = 32 MB
_BLOCK_VALUES = 4_000_000
_MIN_OBS = 3
# genes per block / pairs per sub-chunk at most
_MAX_CHUNK_PAIRS = 4096
ALTERNATIVES = ("two-sided", "greater")
NULL_MODELS = ("empirical", "gaussian")
NORMALISATIONS = ("median_ratio", "cpm")
# Features used for the median-of-ratios library sizes at most.
_MEDIAN_RATIO_FEATURES = 5000
# Distance prior for the FDR (weighted BH), bp; 0 switches it off.
DISTANCE_SCALE = 10_000
# obs column with each observation's library size (e.g. UMIs over all genes, summed per metacell)
LIBRARY_SIZE = "library_size"
# Background peaks per tested peak (Signac's LinkPeaks default).
N_BACKGROUND = 200
# Significant links: BH FDR at most 0.1 and r at least 0.1 (a positive link, above noise).
FDR_THRESHOLD = 0.1
MIN_R = 0.1
# A feature whose normalised values vary less than this across observations is constant.
_MIN_VARIANCE = 1e-12
# Strata hold at least 2 x n_background peaks; a pool takes up to 2 x n_background of them,
# enough for n_background after dropping the gene's chromosome.
_STRATUM_SIZE_FACTOR = 2
_POOL_SIZE_FACTOR = 2
# A z-score needs at least this many background correlations (or half of n_background if smaller).
_MIN_BACKGROUND = 20
# genes x pool values per block of the background product (about 350 MB of temporaries)
_BG_BLOCK_VALUES = 8_000_000
# obs x pool values up to which the background pool is held dense (float32, about 200 MB)
_DENSE_POOL_VALUES = 50_000_000
# Fine histogram of background r for the report (re-binned there).
_BG_BINS = 200


# ----------------------------------------------------------------------------- candidates


def _as_str_chrom(values) -> np.ndarray:
    """Chromosome names as an object array of str, None where unknown (categoricals, NaN, <NA>)."""
    series = pd.Series(values, copy=False).astype(object)
    out = series.astype(str).to_numpy(dtype=object)
    out[series.isna().to_numpy()] = None
    return out


def _numeric(values: pd.Series) -> np.ndarray:
    """Float array; nullable ints / strings / NA become NaN."""
    return pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()


def _gene_table(genes_var: pd.DataFrame) -> pd.DataFrame:
    """chrom/tss/strand of each gene; raises when no gene has a usable TSS."""
    missing = [c for c in ("chrom", "tss") if c not in genes_var.columns]
    if missing:
        raise CoemInputError(
            f"no gene has TSS information: the RNA var table lacks column(s) {missing}; "
            "add an annotation column 'chrom' and a 1-based 'tss' per gene (e.g. from a gene TSS table "
            "such as annotation/hg38_gene_tss.tsv, or the 10x 'interval' feature column; in the pipeline: the "
            "samplesheet's 'annotation' column)"
        )
    table = pd.DataFrame(index=genes_var.index)
    table["chrom"] = _as_str_chrom(genes_var["chrom"])
    table["tss"] = _numeric(genes_var["tss"])
    strand = genes_var["strand"].astype(object).to_numpy() if "strand" in genes_var.columns else None
    table["sign"] = 1.0 if strand is None else np.where(strand == "-", -1.0, 1.0)
    usable = table["chrom"].notna() & np.isfinite(table["tss"].to_numpy())
    if not usable.any():
        raise CoemInputError(
            f"no gene has TSS information ({len(table)} genes, all with missing 'chrom' or 'tss'); "
            "add an annotation column 'tss' (1-based) and 'chrom' per gene, e.g. from a gene TSS table "
            "matching the genome build (in the pipeline: the samplesheet's 'annotation' column, a GTF or TSS table)"
        )
    return table


def check_gene_tss(genes_var: pd.DataFrame) -> None:
    """Raise the peak-to-gene step's error now when no gene has a usable TSS.

    QC calls this so that a sample without gene positions fails in seconds, before the
    embedding and metacell steps, instead of at peak-to-gene.
    """
    _gene_table(genes_var)


def _peak_table(peaks_var: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("chrom", "start", "end") if c not in peaks_var.columns]
    if missing:
        raise CoemInputError(
            f"the ATAC var table lacks column(s) {missing}; peaks need 'chrom', 'start', 'end' "
            "(parse them from peak names like 'chr1:100-600')"
        )
    table = pd.DataFrame(index=peaks_var.index)
    table["chrom"] = _as_str_chrom(peaks_var["chrom"])
    start, end = _numeric(peaks_var["start"]), _numeric(peaks_var["end"])
    ok = np.isfinite(start) & np.isfinite(end)
    centre = np.full(len(table), np.nan)
    centre[ok] = (start[ok].astype(np.int64) + end[ok].astype(np.int64)) // 2
    table["centre"] = centre
    table["width"] = np.where(ok, end - start, np.nan)
    return table


def _intervals(genes_var: pd.DataFrame, genes: pd.DataFrame, window: int, anchor: str):
    """Left/right search bounds per gene (inclusive)."""
    tss = genes["tss"].to_numpy()
    if anchor == "gene_body":
        if {"start", "end"} <= set(genes_var.columns):
            gs, ge = _numeric(genes_var["start"]), _numeric(genes_var["end"])
            body = np.isfinite(gs) & np.isfinite(ge)
            lo = np.where(body, np.fmin(gs, ge), tss)
            hi = np.where(body, np.fmax(gs, ge), tss)
            n_fallback = int((~body & np.isfinite(tss)).sum())
            if n_fallback:
                log.warning("gene_body anchor: %d genes lack start/end, using their TSS", n_fallback)
            return lo - window, hi + window
        log.warning("gene_body anchor asked for but the RNA var has no 'start'/'end' columns; using TSS +- window")
    return tss - window, tss + window


def _no_pairs_error(genes: pd.DataFrame, peaks: pd.DataFrame, window: int, anchor: str) -> CoemInputError:
    gchrom = sorted({c for c in genes["chrom"] if c is not None})
    pchrom = sorted({c for c in peaks["chrom"] if c is not None})
    shared = set(gchrom) & set(pchrom)
    hint = (
        f"gene chromosomes look like {gchrom[:3]}, peak chromosomes like {pchrom[:3]}"
        + ("" if shared else " -- no chromosome name is shared: check the naming (e.g. 'chr1' vs '1') "
           "and that genes and peaks use the same genome build")
    )
    return CoemInputError(
        f"no peak lies within {window} bp of any gene (anchor '{anchor}'); {hint}; "
        "a larger --window or a matching annotation may help"
    )


def candidate_pairs(
    genes_var: pd.DataFrame, peaks_var: pd.DataFrame, window: int = 100_000, anchor: str = "tss"
) -> pd.DataFrame:
    """Gene-peak pairs whose peak centre lies in the gene's window (sort + searchsorted per chromosome).

    Returns columns ``gene``, ``peak``, ``distance`` (int, bp, strand-signed), ``chrom`` and the
    positional indices ``gene_idx``/``peak_idx`` into the two var tables, sorted by gene
    (var order) then peak centre. Genes without chrom/TSS are skipped.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    genes, peaks = _gene_table(genes_var), _peak_table(peaks_var)
    left, right = _intervals(genes_var, genes, window, anchor)
    gchrom, pchrom = genes["chrom"].to_numpy(), peaks["chrom"].to_numpy()
    centre = peaks["centre"].to_numpy()
    usable = pd.notna(gchrom) & np.isfinite(genes["tss"].to_numpy())

    gene_parts, peak_parts = [], []
    peak_ok = pd.notna(pchrom) & np.isfinite(centre)
    for chrom in sorted(set(gchrom[usable]) & set(pchrom[peak_ok])):
        g_idx = np.flatnonzero(usable & (gchrom == chrom))
        p_idx = np.flatnonzero(peak_ok & (pchrom == chrom))
        order = p_idx[np.argsort(centre[p_idx], kind="stable")]
        sorted_c = centre[order]
        lo = np.searchsorted(sorted_c, left[g_idx], side="left")
        hi = np.searchsorted(sorted_c, right[g_idx], side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            continue
        run_start = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(total) - run_start
        gene_parts.append(np.repeat(g_idx, counts))
        peak_parts.append(order[np.repeat(lo, counts) + within])

    if not gene_parts:
        raise _no_pairs_error(genes, peaks, window, anchor)
    g = np.concatenate(gene_parts)
    p = np.concatenate(peak_parts)
    distance = ((centre[p] - genes["tss"].to_numpy()[g]) * genes["sign"].to_numpy()[g]).astype(np.int64)
    order = np.lexsort((centre[p], g))
    g, p, distance = g[order], p[order], distance[order]
    return pd.DataFrame(
        {
            "gene": genes.index.to_numpy()[g].astype(str),
            "peak": peaks.index.to_numpy()[p].astype(str),
            "distance": distance,
            "chrom": gchrom[g].astype(str),
            "gene_idx": g,
            "peak_idx": p,
        }
    )


# ----------------------------------------------------------------------------- values


class _Normalised:
    """``log1p(count * 1e6 / total)`` per observation, sparse, as CSC for fast column slices.

    Only stored entries are transformed (log1p(0) = 0), so normalising costs O(nnz) and the
    matrix is never dense; blocks of columns are densified on demand. Observations with zero
    total stay all-zero.
    """

    def __init__(self, counts, library_size=None):
        X = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
        X.eliminate_zeros()
        totals = np.asarray(X.sum(axis=1)).ravel() if library_size is None else np.asarray(library_size, np.float64)
        scale = np.divide(1e6, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        self.X = X.tocsc()
        self.shape = X.shape

    def columns(self, cols: np.ndarray) -> np.ndarray:
        return self.X[:, cols].toarray()

    def column_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, variance (ddof=0) and fraction of observations with a non-zero value, per column."""
        n = max(1, self.shape[0])
        mean = np.asarray(self.X.sum(axis=0)).ravel() / n
        sq = self.X.copy()
        sq.data **= 2
        var = np.asarray(sq.sum(axis=0)).ravel() / n - mean * mean
        return mean, np.clip(var, 0.0, None), np.diff(self.X.indptr) / n


def median_ratio_library(counts) -> np.ndarray:
    """Library sizes robust to composition (DESeq's median of ratios, Anders & Huber 2010).

    CPM divides by the total, so when a few strongly expressed state markers rise, every
    other feature's CPM falls and unrelated features correlate. The median ratio of a
    profile to the geometric-mean profile, over features seen in every observation, is not
    moved by a minority of changing features (at most 5,000 of them, evenly spaced, are used).
    Falls back to totals with fewer than 20 such features. Scaled to the median total, so values stay counts-per-million-like.
    """
    X = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    X.sum_duplicates()
    X.eliminate_zeros()
    totals = np.asarray(X.sum(axis=1)).ravel()
    everywhere = np.flatnonzero(np.bincount(X.indices, minlength=X.shape[1]) == X.shape[0])
    if everywhere.size < 20:
        return totals
    if everywhere.size > _MEDIAN_RATIO_FEATURES:  # evenly spaced: plenty for a median, bounded cost
        everywhere = everywhere[np.linspace(0, everywhere.size - 1, _MEDIAN_RATIO_FEATURES).astype(np.int64)]
    logs = np.log(X[:, everywhere].toarray())
    factors = np.exp(np.median(logs - logs.mean(axis=0, keepdims=True), axis=1))
    return factors * np.median(totals) / np.median(factors)


def _library(counts, normalisation: str, given=None):
    """Library sizes: given ones (e.g. UMIs over all genes) win; else totals (cpm) or median ratios."""
    if given is not None:
        given = np.asarray(given, dtype=np.float64)
        if given.shape != (counts.shape[0],) or not np.all(np.isfinite(given)) or np.any(given <= 0):
            raise CoemInputError(f"library sizes must be positive numbers, one per observation ({counts.shape[0]})")
        return given
    return None if normalisation == "cpm" else median_ratio_library(counts)


def cpm_log1p(counts) -> np.ndarray:
    """CPM + log1p of a whole (small) matrix, dense; what :func:`correlate_pairs` correlates."""
    norm = _Normalised(counts)
    return norm.columns(np.arange(norm.shape[1]))


def _dense_block(X: _Normalised, cols: np.ndarray, method: str) -> np.ndarray:
    """Columns -> dense float64, ranked for Spearman, then centred and scaled to unit norm.

    With unit-norm centred columns a dot product is the correlation. Constant columns get NaN.
    """
    block = X.columns(cols)
    if method == "spearman":
        block = stats.rankdata(block, axis=0, method="average")
    block -= block.mean(axis=0, keepdims=True)
    norm = np.sqrt((block * block).sum(axis=0, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        block /= np.where(norm > 0, norm, np.nan)
    return block


class _SparseColumns:
    """Columns kept sparse for correlation with dense centred unit-norm columns.

    Centring a sparse column would fill it, but it is not needed: for centred ``g``,
    ``g . (x - mean) = g . x``, so ``r = g . x / ||x - mean||``. For Spearman, ``x`` holds the
    average ranks minus the rank shared by the zeros, so zeros stay zero.
    """

    def __init__(self, X: _Normalised, cols: np.ndarray, method: str):
        S = X.X[:, cols].tocsc(copy=True)
        n = S.shape[0]
        if method == "spearman":
            for j in range(S.shape[1]):
                lo, hi = S.indptr[j], S.indptr[j + 1]
                n_zero = n - (hi - lo)
                if hi > lo:  # ranks among all n values, minus the zeros' average rank (n_zero + 1) / 2
                    S.data[lo:hi] = n_zero + stats.rankdata(S.data[lo:hi]) - (n_zero + 1) / 2.0
        mean = np.asarray(S.sum(axis=0)).ravel() / n
        sq = S.copy()
        sq.data **= 2
        centred_ss = np.asarray(sq.sum(axis=0)).ravel() - n * mean * mean
        norm = np.sqrt(np.clip(centred_ss, 0.0, None))
        self.inv_norm = np.divide(1.0, norm, out=np.full_like(norm, np.nan), where=norm > 0)
        self.T = S.T.tocsr()

    def correlate(self, zg: np.ndarray) -> np.ndarray:
        return (self.T @ zg).T * self.inv_norm[None, :]


def t_test_p(r: np.ndarray, n_obs: int) -> np.ndarray:
    """Two-sided p for correlation r with n observations (t with n - 2 df, as scipy does)."""
    r = np.asarray(r, dtype=np.float64)
    df = n_obs - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(df / np.clip(1.0 - r * r, 0.0, None))
    p = 2.0 * stats.t.sf(np.abs(t), df)
    return np.where(np.isnan(r), np.nan, np.clip(p, 0.0, 1.0))


def z_test_p(z: np.ndarray, alternative: str = "greater") -> np.ndarray:
    """p of a background z-score: two-sided (Signac) or one-sided for positive links ('greater')."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    z = np.asarray(z, dtype=np.float64)
    p = 2.0 * stats.norm.sf(np.abs(z)) if alternative == "two-sided" else stats.norm.sf(z)
    return np.where(np.isnan(z), np.nan, np.clip(p, 0.0, 1.0))


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p (q-values); NaN p stay NaN and do not count as tests."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def distance_weights(distance: np.ndarray, scale: float) -> np.ndarray | None:
    """Weights of the distance prior, mean 1 over the given pairs (None when ``scale`` is 0).

    ``w ~ 1 / (1 + |distance| / scale)``: the chromatin-contact decay that the ABC model uses
    (Fulco et al. 2019), so a peak at the promoter weighs about ``1 + window / scale`` times
    one at the window's edge. Fixed before any p-value is seen, as weighted BH requires.
    """
    if scale <= 0:
        return None
    raw = 1.0 / (1.0 + np.abs(np.asarray(distance, dtype=np.float64)) / scale)
    return raw / raw.mean() if raw.size else raw


def weighted_bh_fdr(p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Benjamini-Hochberg (Genovese, Roeder & Wasserman 2006): BH on ``p / w``.

    With a-priori weights of mean 1 over the tests it controls the FDR like BH, and gives
    more power to the pairs the prior favours. ``weights`` are renormalised over the finite p.
    """
    p = np.asarray(p, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(p) & (w > 0)
    scaled = np.full_like(p, np.nan)
    if ok.any():
        w_ok = w[ok] / w[ok].mean()
        scaled[ok] = p[ok] / w_ok
    return bh_fdr(scaled)


# ----------------------------------------------------------------------------- correlation


def _gene_blocks(gene_idx: np.ndarray, genes_per_block: int) -> list[np.ndarray]:
    """Pair positions grouped by gene: each block holds all pairs of at most genes_per_block genes."""
    order = np.argsort(gene_idx, kind="stable")
    g = gene_idx[order]
    run_starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    bounds = run_starts[:: max(1, genes_per_block)]
    return np.split(order, bounds[1:])


def _weighted_median(centres: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    if total <= 0:
        return float("nan")
    return float(centres[np.searchsorted(np.cumsum(weights), total / 2.0)])


class LinkTester:
    """Correlations of gene-peak pairs with a matched-background z-test, on one data set.

    Built once per data set (normalisation, feature variance, peak features, strata and
    background pools); :meth:`test` then scores any set of pairs. See :mod:`coem.background`
    for how the background is matched and the module docstring for the statistics.

    ``peak_chrom`` (one per ATAC column) is needed for a background; with ``n_background=0`` or
    without it, ``z`` is NaN and ``p`` is Student's t p-value of r (no background).
    """

    def __init__(self, rna_counts, atac_counts, method: str = "pearson", n_background: int = N_BACKGROUND,
                 seed: int = 0, peak_chrom=None, peak_width=None, gc=None, alternative: str = "greater",
                 normalisation: str = "median_ratio", null: str = "empirical", rna_library=None, atac_library=None,
                 distance_scale: float = DISTANCE_SCALE):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if alternative not in ALTERNATIVES:
            raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
        if n_background < 0:
            raise ValueError(f"n_background must be >= 0, got {n_background}")
        n_obs = rna_counts.shape[0]
        if atac_counts.shape[0] != n_obs:
            raise CoemInputError(f"RNA has {n_obs} observations but ATAC has {atac_counts.shape[0]}; they must match")
        if n_obs < _MIN_OBS:
            raise CoemInputError(
                f"peak-to-gene correlation needs at least {_MIN_OBS} observations (metacells), got {n_obs}; "
                "use fewer cells per metacell or more cells"
            )
        if null not in NULL_MODELS:
            raise ValueError(f"null must be one of {NULL_MODELS}, got {null!r}")
        if not distance_scale >= 0:
            raise ValueError(f"distance_scale must be >= 0 (0 = no distance prior), got {distance_scale}")
        self.method, self.alternative, self.n_obs, self.null_model = method, alternative, n_obs, null
        self.distance_scale = float(distance_scale)
        self.n_background = int(n_background)
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.R = _Normalised(rna_counts, _library(rna_counts, normalisation, rna_library))
        self.A = _Normalised(atac_counts, _library(atac_counts, normalisation, atac_library))
        _, gene_var, _ = self.R.column_stats()
        peak_mean, peak_var, open_fraction = self.A.column_stats()
        self.gene_varies = gene_var > _MIN_VARIANCE
        self.peak_varies = peak_var > _MIN_VARIANCE
        self.pools = None
        self.features = None
        if self.n_background > 0 and peak_chrom is not None:
            width = np.full(self.A.shape[1], np.nan) if peak_width is None else np.asarray(peak_width, np.float64)
            self.features = background.peak_match_features(peak_mean, open_fraction, width, gc)
            self._build_background(_as_str_chrom(np.asarray(peak_chrom, dtype=object)), seed)

    def _build_background(self, peak_chrom: np.ndarray, seed: int) -> None:
        """Strata over the peaks that vary, one pool per stratum, and the pool's dense values."""
        varying = np.flatnonzero(self.peak_varies & pd.notna(peak_chrom))
        stratum = np.full(self.A.shape[1], -1, dtype=np.int64)
        min_size = _STRATUM_SIZE_FACTOR * self.n_background
        stratum[varying] = background.nested_strata(self.features.iloc[varying], min_size)
        rng = np.random.default_rng(seed)
        self.pools = background.build_pools(np.maximum(stratum, 0), peak_chrom, self.n_background,
                                            _POOL_SIZE_FACTOR * self.n_background, rng, candidates=varying)
        self.pools.stratum = stratum
        if self.n_obs * len(self.pools.columns) <= _DENSE_POOL_VALUES:
            self.pool_z, self.pool_sparse = _dense_block(self.A, self.pools.columns, self.method).astype(np.float32), None
        else:  # many observations (single cells): keep the pool sparse, never obs x pool dense
            self.pool_z, self.pool_sparse = None, _SparseColumns(self.A, self.pools.columns, self.method)

    def _pool_correlations(self, zg: np.ndarray) -> np.ndarray:
        """genes x pool correlations of the unit-norm centred gene columns ``zg`` with the pool."""
        if self.pool_z is not None:
            return zg.T.astype(np.float32) @ self.pool_z  # single precision is plenty for a null
        return self.pool_sparse.correlate(zg).astype(np.float32)

    @property
    def n_strata(self) -> int:
        return 0 if self.pools is None else self.pools.n_strata

    def test(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Score ``pairs`` (integer ``gene_idx``/``peak_idx``; ``chrom`` = the gene's chromosome).

        Pairs with a gene or peak that does not vary across observations are dropped (counted
        in ``attrs``). Returns a copy of the kept pairs with ``r, z, p, fdr, bg_mean, bg_sd, bg_n``.
        """
        for col in ("gene_idx", "peak_idx"):
            if col not in pairs.columns:
                raise ValueError(f"pairs needs integer column '{col}' (as candidate_pairs returns)")
        g_all = pairs["gene_idx"].to_numpy(np.int64)
        p_all = pairs["peak_idx"].to_numpy(np.int64)
        testable = self.gene_varies[g_all] & self.peak_varies[p_all]
        use_bg = self.pools is not None and "chrom" in pairs.columns
        kept = pairs.loc[testable].reset_index(drop=True)
        g_all, p_all = g_all[testable], p_all[testable]
        cols = {name: np.full(len(kept), np.nan) for name in ("r", "bg_mean", "bg_sd", "bg_n")}
        bg_hist = np.zeros(_BG_BINS)
        self.null = background.PooledNull()
        if use_bg:  # one background selection per gene chromosome (genes x pool rows by code)
            chrom_names, chrom_code = np.unique(kept["chrom"].astype(str).to_numpy(), return_inverse=True)
            by_chrom = self.pools.selection(chrom_names.astype(object))
        for block in self._blocks(g_all):
            genes, g_local = np.unique(g_all[block], return_inverse=True)
            zg = _dense_block(self.R, genes, self.method)
            cols["r"][block] = self._pair_r(zg, g_local, p_all[block])
            if use_bg:
                first = block[np.unique(g_local, return_index=True)[1]]
                self._background_block(zg, by_chrom[chrom_code[first]], g_local, p_all[block], block, cols, bg_hist)
        return self._finish(pairs, kept, testable, cols, bg_hist)

    def _blocks(self, g_all: np.ndarray) -> list[np.ndarray]:
        """Gene blocks within the dense budget (pair columns, and genes x pool for the background)."""
        per_part = int(np.clip(_BLOCK_VALUES // (4 * self.n_obs), 1, _MAX_CHUNK_PAIRS))
        if self.pools is not None and len(self.pools.columns):
            per_part = max(1, min(per_part, _BG_BLOCK_VALUES // len(self.pools.columns)))
        self._per_part = per_part
        return _gene_blocks(g_all, per_part)

    def _pair_r(self, zg: np.ndarray, g_local: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        """Row-wise dot products of unit-norm columns (no genes x peaks product)."""
        r = np.empty(len(peaks))
        for start in range(0, len(peaks), self._per_part):
            part = slice(start, start + self._per_part)
            zp = _dense_block(self.A, peaks[part], self.method)
            r[part] = np.einsum("ij,ij->j", zg[:, g_local[part]], zp)
        return np.clip(r, -1.0, 1.0)

    def _background_block(self, zg, selected, g_local, peaks, block, cols, bg_hist) -> None:
        """Each gene's correlations with its background in every stratum, then per pair.

        ``selected``: genes x pool, the background of each gene (by its chromosome).
        """
        pools = self.pools
        corr = self._pool_correlations(zg)
        n, mean, sd = background.segment_stats(corr, selected, pools.starts)
        stratum = pools.stratum[peaks]
        has = stratum >= 0  # peaks without a chromosome have no stratum
        rows, strata, where = g_local[has], stratum[has], block[has]
        cols["bg_n"][where] = n[rows, strata]
        cols["bg_mean"][where] = mean[rows, strata]
        cols["bg_sd"][where] = sd[rows, strata]
        # the background r (for the report) and z (the pooled null) distributions over the
        # (gene, stratum) backgrounds in use, each weighted as often as tested pairs use it
        uses = np.zeros(n.shape)
        np.add.at(uses, (rows, strata), 1.0)
        r_idx, c_idx = np.nonzero(selected & (uses[:, pools.column_stratum] > 0))
        st = pools.column_stratum[c_idx]
        values = corr[r_idx, c_idx].astype(np.float64)
        weights = uses[r_idx, st] / n[r_idx, st]
        bins = np.clip(((values + 1.0) * (_BG_BINS / 2.0)).astype(np.int64), 0, _BG_BINS - 1)
        bg_hist += np.bincount(bins, weights=weights, minlength=_BG_BINS)
        with np.errstate(invalid="ignore", divide="ignore"):
            z_bg = (values - mean[r_idx, st]) / sd[r_idx, st]
        fine = np.isfinite(z_bg)
        self.null.add(z_bg[fine], weights[fine])

    def _finish(self, pairs, kept, testable, cols, bg_hist) -> pd.DataFrame:
        out = kept.copy()
        r, bg_n = cols["r"], cols["bg_n"]
        out["r"] = r
        if self.pools is not None and "chrom" in pairs.columns:
            need = max(3, min(_MIN_BACKGROUND, -(-self.n_background // 2)))
            ok = np.isfinite(r) & (bg_n >= need) & (cols["bg_sd"] > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.where(ok, (r - cols["bg_mean"]) / cols["bg_sd"], np.nan)
            if self.null_model == "empirical":
                p, test = self.null.p_values(z, self.alternative), "matched background z, pooled empirical null"
            else:
                p, test = z_test_p(z, self.alternative), "matched background z, Gaussian null"
        else:
            z, p, test = np.full(len(out), np.nan), t_test_p(r, self.n_obs), "Student's t (no background)"
        out["z"] = z
        out["p"] = p
        weights = distance_weights(out["distance"].to_numpy(), self.distance_scale) if "distance" in out.columns else None
        out["fdr"] = bh_fdr(p) if weights is None else weighted_bh_fdr(p, weights)
        out["bg_mean"] = cols["bg_mean"]
        out["bg_sd"] = cols["bg_sd"]
        out["bg_n"] = np.nan_to_num(bg_n, nan=0).astype(np.int64)
        out["weight"] = 1.0 if weights is None else weights
        g_all = pairs["gene_idx"].to_numpy(np.int64)
        p_all = pairs["peak_idx"].to_numpy(np.int64)
        centres = np.linspace(-1 + 1 / _BG_BINS, 1 - 1 / _BG_BINS, _BG_BINS)
        out.attrs["test"] = {
            "test": test,
            "alternative": self.alternative,
            "n_candidate_pairs": int(len(pairs)),
            "n_pairs_skipped_constant": int((~testable).sum()),
            "n_genes_constant": int(np.unique(g_all[~self.gene_varies[g_all]]).size),
            "n_peaks_constant": int(np.unique(p_all[~self.peak_varies[p_all]]).size),
            "n_pairs_without_background": int((np.isnan(z) & np.isfinite(r)).sum()) if test != "Student's t (no background)" else 0,
            "n_strata": self.n_strata,
            "n_background": self.n_background,
            "n_null_values": self.null.n_values if self.pools is not None else 0,
            "background_hist": bg_hist.tolist(),
            "background_median_r": _weighted_median(centres, bg_hist),
        }
        return out


def correlate_pairs(
    rna_counts,
    atac_counts,
    pairs: pd.DataFrame,
    method: str = "pearson",
    n_background: int = N_BACKGROUND,
    seed: int = 0,
    peak_chrom=None,
    peak_width=None,
    gc=None,
    alternative: str = "greater",
    normalisation: str = "median_ratio",
    null: str = "empirical",
    rna_library=None,
    atac_library=None,
    distance_scale: float = DISTANCE_SCALE,
) -> pd.DataFrame:
    """r, background z, p and BH FDR for each gene-peak pair (a one-shot :class:`LinkTester`).

    ``rna_counts``/``atac_counts``: raw counts, observations x features (sparse or dense).
    ``pairs``: integer ``gene_idx``/``peak_idx`` (columns of the two matrices) and ``chrom``
    (the gene's chromosome), as :func:`candidate_pairs` returns. Pairs whose gene or peak is
    constant are dropped and counted in ``result.attrs['test']``.
    """
    tester = LinkTester(rna_counts, atac_counts, method=method, n_background=n_background, seed=seed,
                        peak_chrom=peak_chrom, peak_width=peak_width, gc=gc, alternative=alternative,
                        normalisation=normalisation, null=null, rna_library=rna_library, atac_library=atac_library,
                        distance_scale=distance_scale)
    return tester.test(pairs)


# ----------------------------------------------------------------------------- top level


def rank_score(links: pd.DataFrame) -> np.ndarray:
    """The score links are ranked by (higher = stronger): ``-log10(p / weight)``, what the weighted FDR orders."""
    ratio = (links["p"] / links["weight"]).to_numpy(dtype=np.float64) if "weight" in links else links["p"].to_numpy()
    return -np.log10(np.clip(np.nan_to_num(ratio, nan=1.0), 1e-300, None))


def significant_links(links: pd.DataFrame, fdr: float = FDR_THRESHOLD, min_r: float = MIN_R) -> pd.DataFrame:
    """Positive links that pass both cut-offs: ``fdr <= fdr`` and ``r >= min_r``, sorted by gene then p."""
    keep = (links["fdr"].to_numpy() <= fdr) & (links["r"].to_numpy() >= min_r)
    return links.loc[keep].sort_values(["gene", "p", "distance"], kind="stable").reset_index(drop=True)


def summarise(links: pd.DataFrame, fdr: float = FDR_THRESHOLD, min_r: float = MIN_R) -> dict[str, Any]:
    """The numbers the report shows: pairs tested/skipped, significant links, r of pairs and background."""
    r = links["r"].to_numpy()
    n = len(links)
    test = links.attrs.get("test", {})
    significant = significant_links(links, fdr, min_r)
    return {
        "n_candidate_pairs": int(test.get("n_candidate_pairs", n)),
        "n_pairs": int(n),
        "n_pairs_skipped_constant": int(test.get("n_pairs_skipped_constant", 0)),
        "n_genes_constant": int(test.get("n_genes_constant", 0)),
        "n_peaks_constant": int(test.get("n_peaks_constant", 0)),
        "n_pairs_without_background": int(test.get("n_pairs_without_background", 0)),
        "n_genes": int(links["gene"].nunique()),
        "n_peaks": int(links["peak"].nunique()),
        "n_significant": int(len(significant)),
        "n_significant_genes": int(significant["gene"].nunique()),
        "fraction_negative": float((r < 0).mean()) if n else float("nan"),
        "fraction_significant": float(len(significant) / n) if n else float("nan"),
        "median_r": float(np.median(r)) if n else float("nan"),
        "background_median_r": float(test.get("background_median_r", float("nan"))),
        "median_bg_sd": float(np.nanmedian(links["bg_sd"])) if n and np.isfinite(links["bg_sd"]).any() else float("nan"),
        "test": test.get("test", ""),
        "alternative": test.get("alternative", ""),
        "n_strata": int(test.get("n_strata", 0)),
        "fdr_threshold": float(fdr),
        "min_r": float(min_r),
    }


def peak_to_gene(
    mdata_aggregated,
    window: int = 100_000,
    method: str = "pearson",
    anchor: str = "tss",
    n_background: int = N_BACKGROUND,
    seed: int = 0,
    gc=None,
    alternative: str = "greater",
    normalisation: str = "median_ratio",
    null: str = "empirical",
    distance_scale: float = DISTANCE_SCALE,
    fdr: float = FDR_THRESHOLD,
    min_r: float = MIN_R,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Peak-to-gene links on an aggregated MuData (obs = metacells; works on cells too).

    ``gc``: optional GC fraction per ATAC feature (array in var order, or a Series indexed by
    peak name), e.g. from :func:`coem.genome.peak_gc`. Returns (links, summary): links has
    gene, peak, chrom, distance, r, z, p, fdr, bg_mean, bg_sd, bg_n (sorted by gene then
    distance; ``links.attrs['test']`` holds the test's counts and the background r histogram);
    summary is :func:`summarise` plus the parameters and the number of observations.
    """
    for mod in ("rna", "atac"):
        if mod not in mdata_aggregated.mod:
            raise CoemInputError(f"the MuData has no '{mod}' modality (found {list(mdata_aggregated.mod)})")
    rna, atac = mdata_aggregated.mod["rna"], mdata_aggregated.mod["atac"]
    if rna.n_obs < _MIN_OBS:
        raise CoemInputError(
            f"peak-to-gene correlation needs at least {_MIN_OBS} observations (metacells), got {rna.n_obs}; "
            "use fewer cells per metacell or more cells"
        )
    if rna.n_obs != atac.n_obs or not np.array_equal(rna.obs_names, atac.obs_names):
        raise CoemInputError("RNA and ATAC observations differ; both modalities must hold the same metacells in order")
    pairs = candidate_pairs(rna.var, atac.var, window=window, anchor=anchor)
    peaks = _peak_table(atac.var)
    if isinstance(gc, pd.Series):
        gc = gc.reindex(atac.var_names).to_numpy(dtype=np.float64)
    links = correlate_pairs(
        rna.X, atac.X, pairs, method=method, n_background=n_background, seed=seed,
        peak_chrom=peaks["chrom"].to_numpy(), peak_width=peaks["width"].to_numpy(), gc=gc, alternative=alternative,
        normalisation=normalisation, null=null,
        rna_library=_obs_library(rna), atac_library=_obs_library(atac), distance_scale=distance_scale,
    )
    test = links.attrs.get("test", {})
    links = links.sort_values(["gene", "distance"], kind="stable").reset_index(drop=True)
    links = links.drop(columns=["gene_idx", "peak_idx"])
    links.attrs["test"] = test
    summary = summarise(links, fdr, min_r)
    summary.update({"n_obs": int(rna.n_obs), "window": int(window), "method": method, "anchor": anchor,
                    "n_background": int(n_background), "gc_matched": gc is not None, "seed": int(seed)})
    return links, summary


def _obs_library(adata):
    """``obs['library_size']`` when the modality carries one (else None: computed from the counts)."""
    return adata.obs[LIBRARY_SIZE].to_numpy(dtype=np.float64) if LIBRARY_SIZE in adata.obs else None


def r_histogram(r: np.ndarray, bins: int = 40) -> dict[float, float]:
    """Fraction of pairs per r bin on [-1, 1], keyed by bin centre (for the MultiQC line graph)."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    counts, edges = np.histogram(r, bins=bins, range=(-1.0, 1.0))
    frac = counts / max(1, r.size)
    centres = (edges[:-1] + edges[1:]) / 2
    return {round(float(c), 4): float(f) for c, f in zip(centres, frac)}


def rebin_histogram(counts, bins: int = 40) -> dict[float, float]:
    """A fine histogram on [-1, 1] (e.g. ``attrs['test']['background_hist']``) as fractions in ``bins`` bins."""
    counts = np.asarray(counts, dtype=np.float64)
    factor = len(counts) // bins
    coarse = counts[: factor * bins].reshape(bins, factor).sum(axis=1)
    frac = coarse / max(coarse.sum(), 1e-300)
    centres = np.linspace(-1 + 1 / bins, 1 - 1 / bins, bins)
    return {round(float(c), 4): float(f) for c, f in zip(centres, frac)}
