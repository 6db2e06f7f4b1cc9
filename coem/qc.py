"""Per-cell quality control for paired multiome data (RNA + ATAC from the same cells).

Numerical code only: it takes and returns MuData objects and knows nothing about files. The
command that reads a sample, applies QC and writes the outputs is ``coem/cli/qc.py``.

The five per-cell metrics (stored in ``mdata.obs`` under these names, see docs/developer.md):

- ``rna_total_counts``: RNA UMIs per cell;
- ``rna_n_genes``: genes with at least one UMI;
- ``rna_pct_mito``: percent of the cell's UMIs on mitochondrial genes (symbol starts with
  ``MT-``, any case);
- ``atac_total_counts``: ATAC counts (fragments or binary peak calls) per cell;
- ``atac_n_peaks``: peaks with at least one count.

Metrics are computed on the full feature set, before rare genes/peaks are dropped, so the
values kept in ``obs`` are exactly the values the thresholds were applied to.

Two ways to set the per-cell thresholds (the pipeline's ``--qc_mode``):

- ``auto`` (the pipeline's default, ``AutoQC``): derived from each sample's own distributions
  by median absolute deviations (MADs) with absolute floors, see ``AutoQC``;
- ``fixed`` (``QCThresholds`` as given): the same numbers for every sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Real

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem.errors import CoemInputError
from coem.readers import _quiet

METRICS = ("rna_total_counts", "rna_n_genes", "rna_pct_mito", "atac_total_counts", "atac_n_peaks")
MITO_PREFIX = "mt-"

# Per-cell filters: (threshold name, metric, kind); kind "min" keeps metric >= threshold,
# "max" keeps metric <= threshold. The order is the order of the report.
CELL_FILTERS = (
    ("min_rna_counts", "rna_total_counts", "min"),
    ("max_rna_counts", "rna_total_counts", "max"),
    ("min_genes", "rna_n_genes", "min"),
    ("max_pct_mito", "rna_pct_mito", "max"),
    ("min_atac_counts", "atac_total_counts", "min"),
    ("max_atac_counts", "atac_total_counts", "max"),
    ("min_peaks", "atac_n_peaks", "min"),
)


@dataclass(frozen=True)
class QCThresholds:
    """QC thresholds as applied; the defaults are the fixed preset for 10x Multiome.

    In fixed mode (``--qc_mode fixed``) these are the thresholds; in auto mode (the default,
    ``AutoQC``) the per-cell ones are derived per sample and these defaults are not used.

    Cells are kept when all of these hold (``None`` switches a ``max_*`` filter off):

    - ``min_rna_counts=500`` <= RNA UMIs <= ``max_rna_counts=None``: fewer than ~500 UMIs is
      usually an empty droplet or ambient RNA in 10x Multiome;
    - ``min_genes=200`` genes detected: the usual scRNA-seq floor;
    - ``max_pct_mito=20`` percent mitochondrial UMIs: above it cells are typically broken
      (nuclei-based multiome has little mitochondrial RNA, so 20 is lenient);
    - ``min_atac_counts=500`` <= ATAC counts <= ``max_atac_counts=None``;
    - ``min_peaks=200`` peaks detected.

    After cell filtering, genes seen in fewer than ``min_cells_per_gene=3`` cells and peaks
    seen in fewer than ``min_cells_per_peak=3`` cells are dropped (they carry no signal for
    the embedding or correlation). Fewer than ``min_cells=50`` cells left is an error: a
    sample that small cannot yield meaningful metacells.
    """

    min_rna_counts: float = 500
    max_rna_counts: float | None = None
    min_genes: int = 200
    max_pct_mito: float | None = 20
    min_atac_counts: float = 500
    max_atac_counts: float | None = None
    min_peaks: int = 200
    min_cells_per_gene: int = 3
    min_cells_per_peak: int = 3
    min_cells: int = 50

    def __post_init__(self):
        for name in ("min_rna_counts", "min_atac_counts"):
            _check_number(name, getattr(self, name), allow_none=False)
        for name in ("max_rna_counts", "max_atac_counts", "max_pct_mito"):
            _check_number(name, getattr(self, name), allow_none=True)
        for name in ("min_genes", "min_peaks", "min_cells_per_gene", "min_cells_per_peak", "min_cells"):
            _check_int(name, getattr(self, name))
        if self.min_cells < 1:
            raise ValueError(f"min_cells must be at least 1, got {self.min_cells}")
        if self.max_pct_mito is not None and self.max_pct_mito > 100:
            raise ValueError(f"max_pct_mito is a percentage (0-100), got {self.max_pct_mito}")
        for low, high in (("min_rna_counts", "max_rna_counts"), ("min_atac_counts", "max_atac_counts")):
            lo, hi = getattr(self, low), getattr(self, high)
            if hi is not None and hi < lo:
                raise ValueError(f"{high}={hi} is below {low}={lo}: no cell could pass; raise {high} or set it to None")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_number(name: str, value, allow_none: bool) -> None:
    """A threshold must be a finite, non-negative real number (or None where that means off)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        off = " or None (off)" if allow_none else ""
        raise ValueError(f"{name} must be a number{off}, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_int(name: str, value) -> None:
    """Cell/feature counts are whole numbers; 2.0 is accepted, 2.5 is not."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


# Scale factor that makes the MAD estimate the standard deviation of normal data (scater's isOutlier).
MAD_SCALE = 1.4826
QC_MODES = ("auto", "fixed")


@dataclass(frozen=True)
class AutoQC:
    """Per-sample QC thresholds derived from the sample's own distributions (``--qc_mode auto``).

    Fixed thresholds tuned for one protocol silently ruin others (10x Multiome's 500 UMIs keep
    16% of sci-CAR's cells), so by default each sample's thresholds come from its own cells,
    as in current single-cell practice (scater's ``isOutlier``; Heumos et al. 2023). With
    ``MAD`` the median absolute deviation times 1.4826 (a standard deviation for normal data)
    and ``median`` over all of the sample's cells:

    - ``min_rna_counts``, ``min_genes``, ``min_atac_counts``, ``min_peaks``: a cell fails when
      log1p(metric) < median - ``nmads`` x MAD of log1p(metric) (``nmads=3``, one-sided low),
      but the threshold is never below the absolute floor: ``floor_rna_counts=100`` UMIs,
      ``floor_genes=50`` genes, ``floor_atac_counts=100`` counts, ``floor_peaks=50`` peaks;
    - ``max_rna_counts``, ``max_atac_counts``: a generous high cut against extreme multiplets,
      log1p(counts) > median + ``nmads_high`` x MAD (``nmads_high=5``; ``None`` switches it off;
      an ordinary doublet, about twice a cell's counts, usually stays under it);
    - ``max_pct_mito``: log1p(% mito) > median + ``nmads_mito`` x MAD (``nmads_mito=3``),
      never below ``mito_floor=5`` % (a few % is normal) nor above ``mito_ceiling=20`` %.

    Thresholds are whole numbers for counts (rounded so that the kept cells are exactly those
    the rule keeps) and % mito is rounded down to 0.01. A metric whose MAD is 0 (e.g. no
    mitochondrial genes in the panel) gets only its floor (or ceiling). Any threshold given
    explicitly replaces its derived value; ``QCReport.derivation`` records each one (median,
    MAD, the MAD cut, the bound applied and where the value came from).
    """

    nmads: float = 3.0
    nmads_high: float | None = 5.0
    nmads_mito: float = 3.0
    floor_rna_counts: float = 100
    floor_genes: int = 50
    floor_atac_counts: float = 100
    floor_peaks: int = 50
    mito_floor: float = 5.0
    mito_ceiling: float = 20.0

    def __post_init__(self):
        for name in ("nmads", "nmads_mito", "floor_rna_counts", "floor_atac_counts", "mito_floor", "mito_ceiling"):
            _check_number(name, getattr(self, name), allow_none=False)
        _check_number("nmads_high", self.nmads_high, allow_none=True)
        for name in ("floor_genes", "floor_peaks"):
            _check_int(name, getattr(self, name))
        for name in ("nmads", "nmads_mito") + (("nmads_high",) if self.nmads_high is not None else ()):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.mito_ceiling > 100 or self.mito_floor > self.mito_ceiling:
            raise ValueError(f"need mito_floor <= mito_ceiling <= 100, got {self.mito_floor} and {self.mito_ceiling}")

    def to_dict(self) -> dict:
        return asdict(self)


# Derived per-cell thresholds: (threshold, metric, side, floor field of AutoQC or None).
_AUTO_RULES = (
    ("min_rna_counts", "rna_total_counts", "low", "floor_rna_counts"),
    ("max_rna_counts", "rna_total_counts", "high", None),
    ("min_genes", "rna_n_genes", "low", "floor_genes"),
    ("max_pct_mito", "rna_pct_mito", "mito", None),
    ("min_atac_counts", "atac_total_counts", "low", "floor_atac_counts"),
    ("max_atac_counts", "atac_total_counts", "high", None),
    ("min_peaks", "atac_n_peaks", "low", "floor_peaks"),
)
PER_CELL_THRESHOLDS = tuple(name for name, *_ in _AUTO_RULES)


def _median_mad(values: np.ndarray) -> tuple[float, float]:
    """Median and scaled MAD (x 1.4826) of log1p(values)."""
    logs = np.log1p(np.asarray(values, dtype=np.float64))
    if not logs.size:
        return float("nan"), 0.0
    median = float(np.median(logs))
    return median, float(MAD_SCALE * np.median(np.abs(logs - median)))


def derive_thresholds(
    metrics: pd.DataFrame, rule: AutoQC | None = None, base: QCThresholds | None = None, given=()
) -> tuple[QCThresholds, dict]:
    """The per-cell thresholds of ``rule`` for these cells (``compute_qc_metrics`` output).

    ``base`` supplies the feature filters and ``min_cells``, and the value of every threshold
    named in ``given`` (explicit settings win over derived ones). Returns the thresholds and,
    per per-cell threshold, how its value was reached.
    """
    rule = AutoQC() if rule is None else rule
    base = QCThresholds() if base is None else base
    unknown = set(given) - set(PER_CELL_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown per-cell thresholds in given: {sorted(unknown)}")
    values, derivation = {}, {}
    for name, metric, side, floor_field in _AUTO_RULES:
        if name in given:
            values[name] = getattr(base, name)
            derivation[name] = {"value": values[name], "source": "given"}
            continue
        median, mad = _median_mad(metrics[metric].to_numpy())
        entry = {"metric": metric, "median_log1p": median, "mad_log1p": mad}
        if side == "low":
            floor = getattr(rule, floor_field)
            cut = math.ceil(np.expm1(median - rule.nmads * mad) - 1e-9) if mad > 0 else None
            value = int(max(floor, cut)) if cut is not None else int(math.ceil(floor))
            source = "mad" if cut is not None and cut > floor else "floor"
            entry.update(nmads=rule.nmads, mad_cut=cut, floor=floor)
        elif side == "high":
            if rule.nmads_high is None or mad == 0:
                cut, value, source = None, None, "off"
            else:
                cut = math.floor(np.expm1(median + rule.nmads_high * mad) + 1e-9)
                value, source = cut, "mad"
            entry.update(nmads=rule.nmads_high, mad_cut=cut)
        else:  # % mito: MAD cut on log1p, clamped to [mito_floor, mito_ceiling]
            cut = math.floor(100 * np.expm1(median + rule.nmads_mito * mad)) / 100 if mad > 0 else None
            raw = rule.mito_floor if cut is None else cut
            value = float(min(rule.mito_ceiling, max(rule.mito_floor, raw)))
            source = "mad" if cut is not None and rule.mito_floor < cut < rule.mito_ceiling else (
                "ceiling" if cut is not None and cut >= rule.mito_ceiling else "floor")
            entry.update(nmads=rule.nmads_mito, mad_cut=cut, floor=rule.mito_floor, ceiling=rule.mito_ceiling)
        entry.update(value=value, source=source)
        values[name] = value
        derivation[name] = entry
    # A high cut under its low threshold (tiny, odd samples) would keep no cell: lift it to the low one.
    for low, high in (("min_rna_counts", "max_rna_counts"), ("min_atac_counts", "max_atac_counts")):
        if values[high] is not None and values[high] < values[low] and high not in given:
            values[high] = values[low]
            derivation[high].update(value=values[low], source="raised to " + low)
    thresholds = QCThresholds(**{**base.to_dict(), **values})
    return thresholds, derivation


@dataclass
class QCReport:
    """What QC did to one sample: sizes before/after, cells failing each filter, medians.

    ``removed_by_filter`` counts the cells failing each filter on its own; a cell failing two
    filters is counted under both, so the numbers may add up to more than the cells removed.
    Medians are of the per-cell metrics over all input cells (before) and kept cells (after).
    ``thresholds`` are those applied; in ``mode`` "auto" ``rule`` is the AutoQC rule and
    ``derivation`` says how each per-cell threshold was reached (``derive_thresholds``).
    """

    sample: str | None
    thresholds: dict
    cells_before: int
    cells_after: int
    genes_before: int
    genes_after: int
    peaks_before: int
    peaks_after: int
    removed_by_filter: dict = field(default_factory=dict)
    medians_before: dict = field(default_factory=dict)
    medians_after: dict = field(default_factory=dict)
    mode: str = "fixed"
    rule: dict | None = None
    derivation: dict = field(default_factory=dict)

    @property
    def pct_cells_kept(self) -> float:
        return 100.0 * self.cells_after / self.cells_before if self.cells_before else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pct_cells_kept"] = self.pct_cells_kept
        return out


def _as_csr(x) -> sp.csr_matrix:
    """Counts as CSR without densifying (dense input, as in small tests, is converted)."""
    return x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))


def _modality(mdata: md.MuData, name: str, sample: str | None) -> ad.AnnData:
    """The modality with its cells in ``mdata.obs_names`` order (error when missing)."""
    if name not in mdata.mod:
        raise CoemInputError(
            f"the data has no '{name}' modality (found: {sorted(mdata.mod)}); QC needs both 'rna' and 'atac'",
            sample=sample,
        )
    adata = mdata.mod[name]
    if not adata.obs_names.equals(mdata.obs_names):
        missing = mdata.obs_names.difference(adata.obs_names)
        if len(missing):
            raise CoemInputError(
                f"{len(missing)} cells (e.g. '{missing[0]}') are missing from the '{name}' modality; "
                "both modalities must hold the same barcodes",
                sample=sample,
            )
        adata = adata[mdata.obs_names]
    return adata


def _row_sums_and_detected(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-row total and number of strictly positive entries (explicit zeros ignored)."""
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    detected = np.diff((x > 0).tocsr().indptr).astype(np.int64)
    return totals, detected


def mito_mask(gene_names) -> np.ndarray:
    """True for mitochondrial genes: symbol starts with ``MT-`` in any case."""
    return np.array([str(g).lower().startswith(MITO_PREFIX) for g in gene_names], dtype=bool)


def compute_qc_metrics(mdata: md.MuData, sample: str | None = None) -> pd.DataFrame:
    """The five per-cell metrics as a DataFrame indexed like ``mdata.obs_names``.

    Sparse throughout: only row sums and stored-entry counts are taken.
    """
    rna = _as_csr(_modality(mdata, "rna", sample).X)
    atac = _as_csr(_modality(mdata, "atac", sample).X)
    rna_total, rna_genes = _row_sums_and_detected(rna)
    atac_total, atac_peaks = _row_sums_and_detected(atac)
    mito = mito_mask(mdata.mod["rna"].var_names)
    mito_total = np.asarray(rna[:, np.flatnonzero(mito)].sum(axis=1), dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        pct_mito = np.where(rna_total > 0, 100.0 * mito_total / rna_total, 0.0)
    return pd.DataFrame(
        {
            "rna_total_counts": rna_total,
            "rna_n_genes": rna_genes,
            "rna_pct_mito": pct_mito,
            "atac_total_counts": atac_total,
            "atac_n_peaks": atac_peaks,
        },
        index=mdata.obs_names.copy(),
    )


def cell_filter_masks(metrics: pd.DataFrame, thresholds: QCThresholds) -> dict[str, np.ndarray]:
    """For each active filter, a boolean mask of the cells that FAIL it."""
    fails = {}
    for name, metric, kind in CELL_FILTERS:
        limit = getattr(thresholds, name)
        if limit is None:
            continue
        values = metrics[metric].to_numpy()
        fails[name] = values < limit if kind == "min" else values > limit
    return fails


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _worst_filter_text(removed: dict[str, int], thresholds: QCThresholds) -> str:
    """Name the filter that removed most cells, with the flag that loosens it."""
    if not removed or max(removed.values()) == 0:
        return "no per-cell filter removed cells"
    worst = max(removed, key=removed.get)
    return (
        f"the filter removing most cells is {worst}={getattr(thresholds, worst)} ({removed[worst]} cells fail it; "
        f"loosen it with {_flag(worst)})"
    )


def _check_enough_cells(n_left: int, n_before: int, removed: dict, thresholds: QCThresholds, sample) -> None:
    """Stop early with a precise message when QC leaves too few cells to work with."""
    if n_before == 0:
        raise CoemInputError("the input holds no cells; check the input files and the barcode intersection",
                             sample=sample)
    worst = _worst_filter_text(removed, thresholds)
    if n_left == 0:
        raise CoemInputError(f"no cell passes QC (0 of {n_before} cells left); {worst}", sample=sample)
    if n_left < thresholds.min_cells:
        raise CoemInputError(
            f"only {n_left} of {n_before} cells pass QC, fewer than min_cells={thresholds.min_cells}; {worst}, "
            f"or lower {_flag('min_cells')} if so few cells are expected",
            sample=sample,
        )


def _feature_mask(x: sp.csr_matrix, min_cells: int) -> np.ndarray:
    """Features (columns) with a positive count in at least ``min_cells`` rows."""
    positive = (x > 0).tocsr()
    n_cells = np.bincount(positive.indices, minlength=x.shape[1])
    return n_cells >= min_cells


def _subset_modality(adata: ad.AnnData, cells: pd.Index, keep_features: np.ndarray) -> ad.AnnData:
    """A new AnnData with the kept cells and features; X stays sparse (CSR)."""
    sub = adata[cells, np.flatnonzero(keep_features)].copy()
    sub.X = _as_csr(sub.X)
    return sub


def _medians(metrics: pd.DataFrame) -> dict[str, float]:
    return {m: float(metrics[m].median()) if len(metrics) else float("nan") for m in METRICS}


def apply_qc(
    mdata: md.MuData, thresholds: QCThresholds | None = None, sample: str | None = None,
    rule: AutoQC | None = None, given=(), counts=None,
) -> tuple[md.MuData, QCReport]:
    """Filter cells on the per-cell metrics, then drop rare genes and peaks.

    Thresholds: ``thresholds`` alone are applied as they are (fixed mode); with ``rule`` the
    per-cell thresholds are derived from this sample (auto mode, ``derive_thresholds``), except
    those named in ``given``, taken from ``thresholds``; with neither, auto mode with the
    default ``AutoQC()`` rule (the pipeline's default).

    Returns a new MuData (the input is not modified) with the metrics in ``obs`` and the
    global obs columns (e.g. ``label``) carried over, and the QCReport. Raises
    ``CoemInputError`` when fewer than ``thresholds.min_cells`` cells, or no gene or peak,
    remain.

    ``counts``: a ``coem.qc_backed.StreamedCounts`` when ``mdata``'s matrices are empty and the
    counts are read in chunks from disk; it computes the metrics and feature counts, and is told
    the selection (``select``) so that it writes the filtered counts itself.
    """
    if thresholds is None and rule is None:
        rule = AutoQC()
    thresholds = QCThresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, QCThresholds):
        raise TypeError(f"thresholds must be a QCThresholds, got {type(thresholds).__name__}")
    if rule is not None and not isinstance(rule, AutoQC):
        raise TypeError(f"rule must be an AutoQC, got {type(rule).__name__}")
    metrics = counts.metrics(mdata.obs_names) if counts is not None else compute_qc_metrics(mdata, sample=sample)
    derivation = {}
    if rule is not None:
        thresholds, derivation = derive_thresholds(metrics, rule, thresholds, given)
    fails = cell_filter_masks(metrics, thresholds)
    removed = {name: int(mask.sum()) for name, mask in fails.items()}
    keep = np.ones(len(metrics), dtype=bool)
    for mask in fails.values():
        keep &= ~mask
    _check_enough_cells(int(keep.sum()), len(metrics), removed, thresholds, sample)

    cells = mdata.obs_names[keep]
    rna, atac = _modality(mdata, "rna", sample), _modality(mdata, "atac", sample)
    if counts is not None:
        keep_genes = counts.feature_cells("rna", keep) >= thresholds.min_cells_per_gene
        keep_peaks = counts.feature_cells("atac", keep) >= thresholds.min_cells_per_peak
    else:
        keep_genes = _feature_mask(_as_csr(rna.X)[keep], thresholds.min_cells_per_gene)
        keep_peaks = _feature_mask(_as_csr(atac.X)[keep], thresholds.min_cells_per_peak)
    for what, mask, param in (("gene", keep_genes, "min_cells_per_gene"), ("peak", keep_peaks, "min_cells_per_peak")):
        if not mask.any():
            raise CoemInputError(
                f"no {what} is detected in at least {param}={getattr(thresholds, param)} of the "
                f"{len(cells)} cells kept; lower {_flag(param)} or check the input counts",
                sample=sample,
            )

    filtered = _quiet(md.MuData,  # without mudata's FutureWarning about pulling columns on update
                      {"rna": _subset_modality(rna, cells, keep_genes), "atac": _subset_modality(atac, cells, keep_peaks)})
    if counts is not None:
        counts.select(keep, keep_genes, keep_peaks)
    _carry_obs(mdata, filtered, cells)
    kept_metrics = metrics.loc[cells]
    for metric in METRICS:
        filtered.obs[metric] = kept_metrics[metric].to_numpy()
    filtered.uns.update(dict(mdata.uns))

    report = QCReport(
        sample=sample,
        thresholds=thresholds.to_dict(),
        cells_before=int(mdata.n_obs),
        cells_after=int(len(cells)),
        genes_before=int(rna.n_vars),
        genes_after=int(keep_genes.sum()),
        peaks_before=int(atac.n_vars),
        peaks_after=int(keep_peaks.sum()),
        removed_by_filter=removed,
        medians_before=_medians(metrics),
        medians_after=_medians(kept_metrics),
        mode="fixed" if rule is None else "auto",
        rule=None if rule is None else rule.to_dict(),
        derivation=derivation,
    )
    return filtered, report


def _carry_obs(source: md.MuData, target: md.MuData, cells: pd.Index) -> None:
    """Copy the global obs columns (not the ``mod:column`` copies MuData pulls in)."""
    prefixes = tuple(f"{m}:" for m in source.mod)
    for column in source.obs.columns:
        if str(column).startswith(prefixes) or column in METRICS:
            continue
        target.obs[column] = source.obs[column].reindex(cells)  # aligns on barcodes, keeps dtype


# Warnings that mean data loss (shown at the end of the run and in the report's warnings section)

MAX_BARCODE_LOSS = 0.05   # warn when the RNA/ATAC intersection drops more of a modality's barcodes
MIN_LABEL_COVERAGE = 0.9  # warn when fewer cells than this carry a label (purity then rests on few)
MIN_KEPT_FRACTION = 0.5   # warn when QC keeps fewer cells than this


def data_loss_warnings(input_counts: dict, report: QCReport, labels: pd.Series | None = None) -> list[str]:
    """Plain sentences for the losses an operator must know about: barcodes dropped by the RNA/ATAC
    intersection (``input_counts``: ``coem.readers`` ``uns['coem_input']``), cells without a label,
    and QC keeping a small share of the cells."""
    found = []
    shared = input_counts.get("shared_barcodes")
    for mod in ("rna", "atac"):
        total = input_counts.get(f"{mod}_barcodes")
        if shared is not None and total and (total - shared) / total > MAX_BARCODE_LOSS:
            found.append(f"{total - shared:,} of {total:,} {mod.upper()} barcodes ({100 * (total - shared) / total:.0f}%) "
                         "have no partner in the other modality and were dropped (barcode intersection); check "
                         "that both come from the same cells and name them alike")
    if labels is not None and len(labels):
        coverage = float(labels.notna().mean())
        if coverage < MIN_LABEL_COVERAGE:
            found.append(f"labels cover {100 * coverage:.0f}% of the cells ({int(labels.notna().sum()):,} of "
                         f"{len(labels):,}); purity is computed on those only")
    if report.cells_before and report.cells_after / report.cells_before < MIN_KEPT_FRACTION:
        found.append(f"QC kept {report.pct_cells_kept:.0f}% of the cells ({report.cells_after:,} of "
                     f"{report.cells_before:,}; {report.mode} thresholds); check the QC table, loosen the "
                     "thresholds or try --qc_mode auto")
    return found
