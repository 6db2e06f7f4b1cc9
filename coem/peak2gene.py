"""Peak-to-gene links: correlate each gene with the peaks near its TSS across metacells.

Why metacells: single cells are too sparse for a peak and a gene to co-vary visibly; summing
counts over ~75 similar cells gives profiles whose correlation reflects regulation. The COEM
paper's headline number is the fraction of *negative* correlations (few = good metacells).

Definitions (DESIGN.md section 6):

- candidates: peaks whose centre ``(start + end) // 2`` lies within ``+-window`` of the gene's
  TSS (``anchor='tss'``, COEM/ArchR) or of its body ``[start - window, end + window]``
  (``anchor='gene_body'``, SEACells); both ends inclusive. ``distance`` = peak centre - TSS,
  sign flipped for ``-`` strand genes, so positive means downstream in transcription direction.
- values: counts per observation scaled to counts per million, then ``log1p``;
  Spearman ranks those values per feature (average ranks for ties).
- Pearson/Spearman p: two-sided, from Student's t with ``n - 2`` degrees of freedom (what
  ``scipy.stats.pearsonr`` / ``spearmanr`` give); BH FDR over every tested pair.
- empirical null (ArchR's idea): each gene against ``n_null`` random peaks from OTHER
  chromosomes (which cannot be cis links), drawn from one seeded random pool of peaks;
  ``p_empirical = (1 + #{null r >= r}) / (1 + n_valid_null)``, one-sided like SEACells,
  because the links sought are positive. Deterministic for a seed and input.
- pairs with a constant feature (e.g. a peak closed in every metacell) get NaN r/p/fdr and
  are not counted as tests.

Normalisation is O(nnz) on the sparse matrix; correlation runs over blocks of genes and
sub-chunks of their pairs, so at most ``obs x (genes of a block + 2 x pairs of a sub-chunk)``
values (about 32 MB) plus ``obs x pool`` (the null pool, float32) are ever dense.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

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

    def __init__(self, counts):
        X = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(1e6, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        self.X = X.tocsc()
        self.shape = X.shape

    def columns(self, cols: np.ndarray) -> np.ndarray:
        return self.X[:, cols].toarray()


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


def t_test_p(r: np.ndarray, n_obs: int) -> np.ndarray:
    """Two-sided p for correlation r with n observations (t with n - 2 df, as scipy does)."""
    r = np.asarray(r, dtype=np.float64)
    df = n_obs - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(df / np.clip(1.0 - r * r, 0.0, None))
    p = 2.0 * stats.t.sf(np.abs(t), df)
    return np.where(np.isnan(r), np.nan, np.clip(p, 0.0, 1.0))


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


# ----------------------------------------------------------------------------- correlation


def _gene_blocks(gene_idx: np.ndarray, genes_per_block: int) -> list[np.ndarray]:
    """Pair positions grouped by gene: each block holds all pairs of at most genes_per_block genes."""
    order = np.argsort(gene_idx, kind="stable")
    g = gene_idx[order]
    run_starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    bounds = run_starts[:: max(1, genes_per_block)]
    return np.split(order, bounds[1:])


def _null_pool(n_peaks: int, n_null: int, rng: np.random.Generator) -> np.ndarray:
    """Random peaks the null draws from (a uniform subset, so each draw stays uniform).

    A shared pool turns the null into one genes x pool product per block of genes.
    """
    size = min(n_peaks, max(3 * n_null, 300))
    return np.sort(rng.choice(n_peaks, size=size, replace=False))


def _null_for_genes(zg, pool_z, pool_chrom, gene_chrom, n_null, rng):
    """n_null correlations per gene with pool peaks on other chromosomes (NaN where unavailable).

    Single precision is plenty for a null distribution and halves the cost of the product.
    """
    corr = (zg.T.astype(np.float32) @ pool_z).astype(np.float64)  # genes x pool
    keys = rng.random(corr.shape)
    keys[pool_chrom[None, :] == gene_chrom[:, None]] = np.inf
    keys[np.isnan(corr)] = np.inf
    take = np.argsort(keys, axis=1)[:, :n_null]
    rows = np.arange(corr.shape[0])[:, None]
    null = corr[rows, take]
    null[~np.isfinite(keys[rows, take])] = np.nan
    return null


def _row_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof=1) per row ignoring NaN; NaN where a row has too few values."""
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    filled = np.where(finite, values, 0.0)
    mean = np.divide(filled.sum(axis=1), n, out=np.full(len(n), np.nan), where=n > 0)
    dev = np.where(finite, values - mean[:, None], 0.0)
    var = np.divide((dev * dev).sum(axis=1), n - 1, out=np.full(len(n), np.nan), where=n > 1)
    return mean, np.sqrt(var)


def correlate_pairs(
    rna_counts,
    atac_counts,
    pairs: pd.DataFrame,
    method: str = "pearson",
    n_null: int = 100,
    seed: int = 0,
    peak_chrom=None,
) -> pd.DataFrame:
    """Correlation, p, BH FDR and empirical p for each gene-peak pair.

    ``rna_counts``/``atac_counts``: raw counts, observations x features (sparse or dense).
    ``pairs``: needs integer ``gene_idx``/``peak_idx`` (columns of the two matrices), as
    :func:`candidate_pairs` returns. The empirical null needs ``pairs['chrom']`` (the gene's
    chromosome) and ``peak_chrom`` (one per ATAC column); without them, or with ``n_null=0``,
    ``p_empirical``/``null_mean``/``null_sd`` are NaN. Returns a copy of ``pairs`` with
    ``r, p, fdr, p_empirical, null_mean, null_sd``; ``result.attrs['null']`` holds the pooled
    null's mean, sd and size.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_obs = rna_counts.shape[0]
    if atac_counts.shape[0] != n_obs:
        raise CoemInputError(f"RNA has {n_obs} observations but ATAC has {atac_counts.shape[0]}; they must match")
    if n_obs < _MIN_OBS:
        raise CoemInputError(
            f"peak-to-gene correlation needs at least {_MIN_OBS} observations (metacells), got {n_obs}; "
            "use fewer cells per metacell or more cells"
        )
    for col in ("gene_idx", "peak_idx"):
        if col not in pairs.columns:
            raise ValueError(f"pairs needs integer column '{col}' (as candidate_pairs returns)")
    R, A = _Normalised(rna_counts), _Normalised(atac_counts)
    g_all = pairs["gene_idx"].to_numpy(np.int64)
    p_all = pairs["peak_idx"].to_numpy(np.int64)

    use_null = n_null > 0 and peak_chrom is not None and "chrom" in pairs.columns
    rng = np.random.default_rng(seed)
    if use_null:
        peak_chrom = _as_str_chrom(np.asarray(peak_chrom, dtype=object))
        pool = _null_pool(A.shape[1], n_null, rng)
        pool_z = _dense_block(A, pool, method).astype(np.float32)
        pool_chrom = peak_chrom[pool]
        gene_chrom_all = pairs["chrom"].astype(str).to_numpy()

    r = np.full(len(pairs), np.nan)
    p_emp = np.full(len(pairs), np.nan)
    null_mean = np.full(len(pairs), np.nan)
    null_sd = np.full(len(pairs), np.nan)
    null_values = []
    # dense budget: genes of a block + peaks of a sub-chunk + their gathered gene columns
    per_part = int(np.clip(_BLOCK_VALUES // (4 * n_obs), 1, _MAX_CHUNK_PAIRS))
    for block in _gene_blocks(g_all, per_part):
        genes, g_local = np.unique(g_all[block], return_inverse=True)
        zg = _dense_block(R, genes, method)
        for start in range(0, len(block), per_part):
            part = slice(start, start + per_part)
            zp = _dense_block(A, p_all[block[part]], method)
            # row-wise dot products (no genes x peaks product, no BLAS threads to contend for)
            r[block[part]] = np.einsum("ij,ij->j", zg[:, g_local[part]], zp)
        r[block] = np.clip(r[block], -1.0, 1.0)
        if use_null:
            first = block[np.unique(g_local, return_index=True)[1]]
            null = _null_for_genes(zg, pool_z, pool_chrom, gene_chrom_all[first], n_null, rng)
            null_values.append(null[np.isfinite(null)])
            g_mean, g_sd = _row_stats(null)
            per_pair = null[g_local]
            n_valid = np.isfinite(per_pair).sum(axis=1)
            with np.errstate(invalid="ignore"):
                n_ge = (per_pair >= r[block][:, None]).sum(axis=1)
            ok = (n_valid > 0) & np.isfinite(r[block])
            p_emp[block] = np.where(ok, (1.0 + n_ge) / (1.0 + n_valid), np.nan)
            null_mean[block] = g_mean[g_local]
            null_sd[block] = g_sd[g_local]

    out = pairs.copy()
    out["r"] = r
    out["p"] = t_test_p(r, n_obs)
    out["fdr"] = bh_fdr(out["p"].to_numpy())
    out["p_empirical"] = p_emp
    out["null_mean"] = null_mean
    out["null_sd"] = null_sd
    pooled = np.concatenate(null_values) if null_values else np.array([])
    out.attrs["null"] = {
        "n": int(pooled.size),
        "mean": float(pooled.mean()) if pooled.size else float("nan"),
        "sd": float(pooled.std(ddof=1)) if pooled.size > 1 else float("nan"),
    }
    return out


# ----------------------------------------------------------------------------- top level


def summarise(links: pd.DataFrame) -> dict[str, Any]:
    """The numbers the report shows: pairs, genes, fraction negative/significant, median r."""
    tested = links[np.isfinite(links["r"].to_numpy())]
    r = tested["r"].to_numpy()
    n = len(tested)
    null = links.attrs.get("null", {})
    return {
        "n_candidate_pairs": int(len(links)),
        "n_pairs": int(n),
        "n_genes": int(tested["gene"].nunique()),
        "n_peaks": int(tested["peak"].nunique()),
        "fraction_negative": float((r < 0).mean()) if n else float("nan"),
        "fraction_significant_positive": float(((tested["fdr"] < 0.1) & (tested["r"] > 0)).mean()) if n else float("nan"),
        "median_r": float(np.median(r)) if n else float("nan"),
        "null_mean_r": null.get("mean", float("nan")),
        "null_sd_r": null.get("sd", float("nan")),
        "n_null": null.get("n", 0),
    }


def peak_to_gene(
    mdata_aggregated,
    window: int = 100_000,
    method: str = "pearson",
    anchor: str = "tss",
    n_null: int = 100,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Peak-to-gene links on an aggregated MuData (obs = metacells; works on cells too).

    Returns (links, summary): links has gene, peak, distance, chrom, r, p, fdr, p_empirical,
    null_mean, null_sd (sorted by gene then distance); summary is :func:`summarise` plus the
    parameters and the number of observations.
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
    links = correlate_pairs(
        rna.X, atac.X, pairs, method=method, n_null=n_null, seed=seed, peak_chrom=atac.var["chrom"].to_numpy()
    )
    null = links.attrs.get("null", {})
    links = links.sort_values(["gene", "distance"], kind="stable").reset_index(drop=True)
    links.attrs["null"] = null
    summary = summarise(links)
    summary.update({"n_obs": int(rna.n_obs), "window": int(window), "method": method, "anchor": anchor,
                    "n_null_per_gene": int(n_null), "seed": int(seed)})
    return links.drop(columns=["gene_idx", "peak_idx"]), summary


def r_histogram(r: np.ndarray, bins: int = 40) -> dict[float, float]:
    """Fraction of pairs per r bin on [-1, 1], keyed by bin centre (for the MultiQC line graph)."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    counts, edges = np.histogram(r, bins=bins, range=(-1.0, 1.0))
    frac = counts / max(1, r.size)
    centres = (edges[:-1] + edges[1:]) / 2
    return {round(float(c), 4): float(f) for c, f in zip(centres, frac)}
