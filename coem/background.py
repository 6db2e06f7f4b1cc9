"""Background peaks matched to each tested peak: the null of a peak-to-gene correlation.

Why: a gene whose expression follows cell states correlates with many peaks anywhere in the
genome, and a sparse, rarely open peak correlates weakly with everything. A cis correlation
means something only against correlations of the same gene with *comparable* peaks that
cannot regulate it. Following Signac's ``LinkPeaks`` (Ma et al. 2020, SHARE-seq) and SEACells'
``get_gene_peak_correlations``, the background of a tested peak is drawn from peaks on other
chromosomes than the gene and matched to the tested peak on

- ``mean``: mean normalised accessibility (log1p CPM) across the observations (metacells),
- ``open_fraction``: fraction of observations in which the peak has any count,
- ``width``: peak length in bp,
- ``gc``: GC fraction of the peak sequence (only when the genome is given, ``--fasta``).

Matching is done by **nested quantile bins** (strata): peaks are split into quantile bins of
``mean``; each of those into quantile bins of ``open_fraction``; each of those by ``width``,
then by ``gc``. Nesting keeps every stratum about equally full (mean and open fraction are
strongly correlated, so a cross-product grid would leave most cells empty), and a stratum is
only split while each part keeps at least ``min_size`` peaks. Ties (e.g. peaks of one fixed
width) never straddle a bin edge, so a constant feature adds no split.

Each stratum contributes a *pool*: a seeded random ordering of up to ``pool_size`` of its
peaks. A gene's background for a stratum is the first ``n_background`` pool peaks that lie on
another chromosome than the gene. Because the background depends only on (gene chromosome,
stratum), all pairs of one gene in one stratum share it, which turns the null into one
genes x pool matrix product per block of genes (see :mod:`coem.peak2gene`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# (feature, bins at most) in nesting order; gc is used only when given.
MATCH_BINS: tuple[tuple[str, int], ...] = (("mean", 10), ("open_fraction", 2), ("width", 2), ("gc", 2))
MATCH_FEATURES = tuple(name for name, _ in MATCH_BINS)


def peak_match_features(norm_mean: np.ndarray, open_fraction: np.ndarray, width: np.ndarray,
                        gc: np.ndarray | None = None) -> pd.DataFrame:
    """The per-peak features the background is matched on (one row per ATAC column)."""
    features = {"mean": norm_mean, "open_fraction": open_fraction, "width": width}
    if gc is not None:
        features["gc"] = gc
    return pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in features.items()})


def _quantile_bins(values: np.ndarray, max_bins: int, min_size: int) -> np.ndarray:
    """Bin index per value: up to ``max_bins`` quantile bins of at least ``min_size`` values each.

    Tied values always share a bin (a cut falls only between distinct values), so bins can
    be uneven; a bin left smaller than ``min_size`` is merged into its lower neighbour.
    """
    n = len(values)
    bins = int(np.clip(n // max(1, min_size), 1, max_bins))
    if bins == 1:
        return np.zeros(n, dtype=np.int64)
    ordered = np.sort(values)
    cuts = np.unique(ordered[(np.arange(1, bins) * n) // bins])  # lowest value of each upper bin
    cuts = cuts[cuts > ordered[0]]
    edges = np.searchsorted(ordered, cuts, side="left")  # bin sizes from sorted positions
    sizes = np.diff(np.concatenate([[0], edges, [n]]))
    keep = [0]  # merge small bins downwards (the first bin upwards)
    for i in range(1, len(sizes)):
        if sizes[i] < min_size or sizes[keep[-1]] < min_size:
            sizes[keep[-1]] += sizes[i]
        else:
            keep.append(i)
    kept_cuts = cuts[np.array(keep[1:], dtype=np.int64) - 1] if len(keep) > 1 else cuts[:0]
    return np.searchsorted(kept_cuts, values, side="right").astype(np.int64)


def _split_groups(groups: np.ndarray, values: np.ndarray, max_bins: int, min_size: int) -> np.ndarray:
    """Split each group into quantile bins of ``values`` (see :func:`_quantile_bins`); new group ids."""
    sub = np.zeros(len(groups), dtype=np.int64)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0, True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = order[lo:hi]
        sub[members] = _quantile_bins(values[members], max_bins, min_size)
    return pd.factorize(pd.MultiIndex.from_arrays([groups, sub]), sort=True)[0]


def nested_strata(features: pd.DataFrame, min_size: int, bins: tuple[tuple[str, int], ...] = MATCH_BINS) -> np.ndarray:
    """Stratum id (0..S-1) per peak from nested quantile bins of the features present in ``features``.

    Peaks with a non-finite feature value are put into their own stratum for that level
    (they match each other, not the rest).
    """
    groups = np.zeros(len(features), dtype=np.int64)
    for name, max_bins in bins:
        if name not in features.columns or max_bins <= 1:
            continue
        values = features[name].to_numpy(dtype=np.float64)
        values = np.where(np.isfinite(values), values, np.inf)
        groups = _split_groups(groups, values, max_bins, min_size)
    return pd.factorize(groups, sort=True)[0]


@dataclass
class BackgroundPools:
    """Per stratum, a seeded random ordering of up to ``pool_size`` member peaks.

    ``columns``: the ATAC column index of every pool peak, grouped by stratum (stratum s
    occupies ``columns[starts[s]:starts[s + 1]]``); ``chrom``: their chromosomes;
    ``stratum``: the stratum of every ATAC column (all peaks, tested or not).
    """

    columns: np.ndarray
    chrom: np.ndarray
    starts: np.ndarray
    stratum: np.ndarray
    n_background: int

    @property
    def n_strata(self) -> int:
        return len(self.starts) - 1

    @property
    def column_stratum(self) -> np.ndarray:
        """The stratum of each pool column."""
        return np.repeat(np.arange(self.n_strata), np.diff(self.starts))

    def selection(self, gene_chrom: np.ndarray) -> np.ndarray:
        """Boolean (genes x pool): the background of each gene in each stratum.

        Within a stratum, the first ``n_background`` pool peaks (in pool order) that are not
        on the gene's chromosome.
        """
        valid = self.chrom[None, :] != np.asarray(gene_chrom, dtype=object)[:, None]
        running = np.cumsum(valid, axis=1, dtype=np.int32)
        before = np.concatenate([np.zeros((len(valid), 1), np.int32), running], axis=1)[:, self.starts[:-1]]
        rank = running - np.repeat(before, np.diff(self.starts), axis=1)
        return valid & (rank <= self.n_background)

    def background_of(self, gene_chrom: str, stratum: int) -> np.ndarray:
        """ATAC column indices of the background used for a gene on ``gene_chrom`` and a peak in ``stratum``."""
        sel = self.selection(np.array([gene_chrom], dtype=object))[0]
        lo, hi = self.starts[stratum], self.starts[stratum + 1]
        return self.columns[lo:hi][sel[lo:hi]]


def build_pools(stratum: np.ndarray, peak_chrom: np.ndarray, n_background: int, pool_size: int,
                rng: np.random.Generator, candidates: np.ndarray | None = None) -> BackgroundPools:
    """Draw each stratum's pool (seeded) from ``candidates`` (default: every peak)."""
    stratum = np.asarray(stratum, dtype=np.int64)
    n_strata = int(stratum.max()) + 1 if stratum.size else 0
    members = np.arange(len(stratum)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    order = members[rng.permutation(len(members))]
    order = order[np.argsort(stratum[order], kind="stable")]  # by stratum, random within
    s_of = stratum[order]
    first = np.searchsorted(s_of, np.arange(n_strata), side="left")
    within = np.arange(len(order)) - first[s_of]
    pool = order[within < pool_size]
    counts = np.bincount(stratum[pool], minlength=n_strata)
    starts = np.concatenate([[0], np.cumsum(counts)])
    chrom = np.asarray(peak_chrom, dtype=object)[pool]
    return BackgroundPools(columns=pool, chrom=chrom, starts=starts, stratum=stratum, n_background=n_background)


def segment_stats(values: np.ndarray, selected: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row and stratum segment: count, mean and sd (ddof=1) of the selected values.

    ``values``/``selected``: genes x pool; returns three genes x strata arrays (NaN where a
    segment has too few selected values).
    """
    v = np.where(selected, values, 0.0).astype(np.float64)
    idx = starts[:-1]
    nonempty = np.diff(starts) > 0
    n = np.zeros((len(v), len(idx)))
    s1 = np.zeros_like(n)
    s2 = np.zeros_like(n)
    if nonempty.any():
        at = idx[nonempty]
        n[:, nonempty] = np.add.reduceat(selected.astype(np.float64), at, axis=1)
        s1[:, nonempty] = np.add.reduceat(v, at, axis=1)
        s2[:, nonempty] = np.add.reduceat(v * v, at, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / n, np.nan)
        var = np.where(n > 1, (s2 - n * mean * mean) / (n - 1), np.nan)
    return n, mean, np.sqrt(np.clip(var, 0.0, None))


class PooledNull:
    """The distribution of background z-scores, pooled over every (gene, stratum) background in use.

    Why: a gene's background correlations are not Gaussian. Genes that follow cell states
    correlate strongly with the few state-specific peaks among their background, which gives
    heavy tails; there, a Gaussian p-value of z is too small (on simulated metacells, 0.4% of
    background z-scores exceeded the one-sided 0.1% point). Each background correlation is
    turned into a z-score with its own background's mean and sd, and those z-scores, weighted
    so that each (gene, stratum) background counts as often as tested pairs use it, form the
    null of a tested pair's z (an empirical null in the sense of Efron 2004).

    Beyond the last ``tail_count`` pooled values the tail is extrapolated as exponential,
    with the decay rate fitted between the points where ``10 x tail_count`` and ``tail_count``
    values lie beyond (heavier than the Gaussian, so conservative there).
    """

    def __init__(self, limit: float = 40.0, step: float = 0.005, tail_count: int = 50):
        self.edges = np.arange(-limit, limit + step / 2, step)
        self.weighted = np.zeros(len(self.edges) - 1)
        self.counts = np.zeros(len(self.edges) - 1)
        self.tail_count = tail_count

    def add(self, z: np.ndarray, weights: np.ndarray) -> None:
        n_bins = len(self.weighted)
        step = self.edges[1] - self.edges[0]
        idx = np.clip(np.floor((z - self.edges[0]) / step).astype(np.int64), 0, n_bins - 1)
        self.weighted += np.bincount(idx, weights=weights, minlength=n_bins)
        self.counts += np.bincount(idx, minlength=n_bins)

    @property
    def n_values(self) -> int:
        return int(self.counts.sum())

    def _upper(self, z: np.ndarray, weighted: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """P(Z >= z) from the histogram (bins at or above z count), exponential beyond the data."""
        total = weighted.sum()
        tail_w = np.concatenate([np.cumsum(weighted[::-1])[::-1], [0.0]]) / total
        tail_n = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
        idx = np.clip(np.searchsorted(self.edges, z, side="right") - 1, 0, len(self.edges) - 1)
        p = tail_w[idx]
        far = np.flatnonzero(tail_n >= self.tail_count)
        near = np.flatnonzero(tail_n >= 10 * self.tail_count)
        if far.size and near.size and far[-1] > near[-1]:
            z_far, z_near = self.edges[far[-1]], self.edges[near[-1]]
            rate = np.log(tail_w[near[-1]] / tail_w[far[-1]]) / (z_far - z_near)
            beyond = z > z_far
            p = np.where(beyond, tail_w[far[-1]] * np.exp(-rate * (z - z_far)), p)
        return p

    def p_values(self, z: np.ndarray, alternative: str) -> np.ndarray:
        """Upper-tail ('greater') or two-sided p of each z under the pooled null; NaN stays NaN."""
        z = np.asarray(z, dtype=np.float64)
        out = np.full(z.shape, np.nan)
        ok = np.isfinite(z)
        if not ok.any() or self.weighted.sum() <= 0:
            return out
        upper = self._upper(z[ok], self.weighted, self.counts)
        if alternative == "greater":
            out[ok] = upper
        else:  # mirror: the lower tail of z is the upper tail of -z
            lower = self._upper(-z[ok], self.weighted[::-1], self.counts[::-1])
            out[ok] = 2.0 * np.minimum(upper, lower)
        return np.clip(out, 0.0, 1.0)
