"""``coem_qc.py``: read one sample, apply per-cell QC, write the filtered MuData and its report.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.qc.h5mu``: the filtered cells/genes/peaks with QC metrics in ``obs`` and the step record
  under ``uns['coem']['qc']``;
- ``P.qc_summary.json``: the QCReport (thresholds applied, and in auto mode how each was derived);
- MultiQC custom content: ``P_qc_general_mqc.json`` (General Statistics row),
  ``P_qc_summary_mqc.json`` (before/after table with the thresholds used and the cells each
  removed), ``P_qc_{rna_counts,atac_counts,genes}_mqc.json``
  (per-cell boxplots of at most 2,000 cells, seeded);
- ``versions.yml``.

A sample that fails QC raises ``CoemInputError`` before anything is written, and the h5mu is
written under a temporary name and renamed last, so a failed run never leaves a file that
looks like a good output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from coem import multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser, warn_user
from coem.errors import CoemInputError
from coem.provenance import record_step
from coem.qc import PER_CELL_THRESHOLDS, QC_MODES, AutoQC, QCThresholds, QCReport, apply_qc, data_loss_warnings

STEP = "qc"
MAX_BOX_CELLS = 2000
THRESHOLD_HELP = {
    "min_rna_counts": "minimum RNA UMIs per cell",
    "max_rna_counts": "maximum RNA UMIs per cell ('none' = off)",
    "min_genes": "minimum genes detected per cell",
    "max_pct_mito": "maximum percent mitochondrial UMIs ('none' = off)",
    "min_atac_counts": "minimum ATAC counts per cell",
    "max_atac_counts": "maximum ATAC counts per cell ('none' = off)",
    "min_peaks": "minimum peaks detected per cell",
    "min_cells_per_gene": "drop genes detected in fewer cells (after cell filtering)",
    "min_cells_per_peak": "drop peaks detected in fewer cells (after cell filtering)",
    "min_cells": "fail the sample when fewer cells pass QC",
}
# Per-cell boxplots: (metric column, section id suffix, title).
BOXPLOTS = (
    ("rna_total_counts", "rna_counts", "RNA UMIs per cell"),
    ("atac_total_counts", "atac_counts", "ATAC counts per cell"),
    ("rna_n_genes", "genes", "genes detected per cell"),
)

log = get_logger("coem.qc")


def _number_or_none(text: str) -> float | None:
    """Threshold values: a number, or none/off/null to switch a filter off."""
    if text.strip().lower() in {"none", "off", "null", ""}:
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise ValueError(f"not a number: {text!r}") from err
    return int(value) if value.is_integer() else value


class _Unset:
    """Default of the threshold flags: tells 'not given' (derive it, or the fixed default) from a value."""

    def __repr__(self) -> str:
        return "derived (auto) / fixed default"


UNSET = _Unset()


def build_parser():
    parser = base_parser("Per-cell QC of one multiome sample (RNA + ATAC).")
    inputs = parser.add_argument_group("input (one of --h5, --h5mu, or --rna with --atac)")
    inputs.add_argument("--h5", default=None, help="10x cellranger-arc filtered_feature_bc_matrix.h5")
    inputs.add_argument("--h5mu", default=None, help="MuData file with 'rna' and 'atac' modalities")
    inputs.add_argument("--rna", default=None, help="RNA AnnData (.h5ad)")
    inputs.add_argument("--atac", default=None, help="ATAC AnnData (.h5ad)")
    inputs.add_argument("--labels", default=None, help="CSV of cell labels (barcode,label)")
    inputs.add_argument("--annotation", default=None, help="gene TSS table (when the input has none)")
    defaults, rule = QCThresholds(), AutoQC()
    mode = parser.add_argument_group("how the per-cell thresholds are set")
    mode.add_argument("--qc-mode", choices=QC_MODES, default="auto",
                      help="auto: derived from each sample's distributions by MADs with floors (coem.qc.AutoQC); "
                           "fixed: the thresholds below, 10x Multiome defaults for those not given (default: auto)")
    mode.add_argument("--nmads", type=float, default=rule.nmads,
                      help=f"auto: low cut in MADs of log1p counts/features below the median (default: {rule.nmads})")
    mode.add_argument("--nmads-high", type=_number_or_none, default=rule.nmads_high,
                      help=f"auto: high cut on log1p counts in MADs above the median, 'none' = off "
                           f"(default: {rule.nmads_high})")
    thresholds = parser.add_argument_group(
        "QC thresholds (auto mode: a per-cell threshold given here replaces the derived one; "
        "fixed mode: defaults for 10x Multiome)")
    for name, text in THRESHOLD_HELP.items():
        per_cell = name in PER_CELL_THRESHOLDS
        thresholds.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=_number_or_none,
            default=UNSET if per_cell else getattr(defaults, name),
            help=f"{text} (default: {'derived in auto mode, ' if per_cell else ''}"
                 f"{getattr(defaults, name)}{' in fixed mode' if per_cell else ''})",
        )
    count = parser.add_argument_group("the metacell count, checked right after QC (as the metacells step will "
                                      "make it), so a sample with too few cells fails before the expensive steps")
    count.add_argument("--n-metacells", type=int, default=None, help="exact metacell count the pipeline asks for")
    count.add_argument("--cells-per-metacell", type=float, default=None,
                       help="metacells = round(cells after QC / this)")
    parser.add_argument("--backed", choices=("auto", "on", "off"), default="auto",
                        help="read the input's counts (10x .h5, .h5mu or .h5ad pair stored as CSR) in row chunks "
                             "from disk and write the filtered counts chunk by chunk (coem.qc_backed): 'auto' when "
                             "reading them into memory would take more than about 8 GiB (default), 'on' whenever "
                             "the file allows it, 'off' never")
    return parser


def _input_row(args) -> dict:
    """The samplesheet-like row ``coem.readers.read_sample`` takes; checks one input kind is given."""
    given = [kind for kind in ("h5", "h5mu") if getattr(args, kind)]
    if args.rna or args.atac:
        if not (args.rna and args.atac):
            raise CoemInputError("--rna and --atac must be given together", sample=args.sample)
        given.append("rna+atac")
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise CoemInputError(
            f"give exactly one input: --h5, --h5mu, or --rna with --atac (found: {found})", sample=args.sample
        )
    keys = ("h5", "h5mu", "rna", "atac", "labels", "annotation")
    return {key: getattr(args, key) or "" for key in keys}


def _input_files(row: dict) -> str:
    """The sample's input as ``coem.readers`` names it in errors (an .h5ad pair as 'rna + atac')."""
    return row["h5"] or row["h5mu"] or f"{row['rna']} + {row['atac']}"


def _thresholds(args) -> tuple[QCThresholds, AutoQC | None, tuple[str, ...]]:
    """The flags as (thresholds, auto rule or None in fixed mode, per-cell thresholds given).

    Flags not given take QCThresholds' defaults (fixed mode) or are derived (auto mode). A bad
    value becomes a user-facing error.
    """
    given = tuple(name for name in PER_CELL_THRESHOLDS if getattr(args, name) is not UNSET)
    values = {name: getattr(args, name) for name in THRESHOLD_HELP if getattr(args, name) is not UNSET}
    try:
        rule = AutoQC(nmads=args.nmads, nmads_high=args.nmads_high) if args.qc_mode == "auto" else None
        if rule is not None:  # placeholders for the derived ones, so a given max is not checked against 500
            values = {**{n: (0 if n.startswith("min_") else None) for n in PER_CELL_THRESHOLDS}, **values}
        return QCThresholds(**values), rule, given
    except ValueError as err:
        raise CoemInputError(f"invalid QC threshold: {err}", sample=args.sample) from err


def _check_gene_positions(mdata, sample: str, row: dict) -> None:
    """Fail now, not after the expensive steps, when peak-to-gene will find no gene TSS."""
    from coem.peak2gene import check_gene_tss

    if "rna" not in mdata.mod:
        return  # the reader has already rejected a sample without RNA
    try:
        check_gene_tss(mdata.mod["rna"].var)
    except CoemInputError as err:
        raise err.with_context(sample=sample, file=row["annotation"] or _input_files(row)) from err


def _subsample(n: int, seed: int) -> np.ndarray:
    """At most MAX_BOX_CELLS cell indices, seeded, in order, so the report stays small."""
    if n <= MAX_BOX_CELLS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_BOX_CELLS, replace=False))


def write_multiqc(prefix: str, sample: str, report: QCReport, obs, seed: int) -> list[Path]:
    """All MultiQC custom content of this step (one file per section, this sample's data)."""
    med = report.medians_after
    general = {
        "cells_after_qc": report.cells_after,
        "median_rna_umis": med["rna_total_counts"],
        "median_genes": med["rna_n_genes"],
        "median_atac_counts": med["atac_total_counts"],
        "pct_cells_kept": report.pct_cells_kept,
    }
    general_headers = {
        "cells_after_qc": {"title": "Cells (QC)", "description": "cells passing QC", "format": "{:,.0f}"},
        "median_rna_umis": {"title": "Median UMIs", "description": "median RNA UMIs per cell after QC",
                            "format": "{:,.0f}"},
        "median_genes": {"title": "Median genes", "description": "median genes per cell after QC",
                         "format": "{:,.0f}"},
        "median_atac_counts": {"title": "Median ATAC", "description": "median ATAC counts per cell after QC",
                               "format": "{:,.0f}"},
        "pct_cells_kept": {"title": "% kept", "description": "percent of cells passing QC", "suffix": "%",
                           "min": 0, "max": 100, "format": "{:,.1f}"},
    }
    paths = [multiqc.general_stats(f"{prefix}_qc_general_mqc.json", "coem_qc_general", sample, general,
                                   general_headers)]
    paths.append(multiqc.table(
        f"{prefix}_qc_summary_mqc.json", "coem_qc_summary", "QC: before / after",
        "Cells, genes and peaks before and after QC; the QC mode (auto: thresholds derived from the sample "
        "by MADs with floors, fixed: as given), each per-cell threshold applied and the cells failing it "
        "(a cell can fail several); median per-cell metrics.",
        {sample: _summary_row(report)},
    ))
    keep = _subsample(len(obs), seed)
    for metric, suffix, title in BOXPLOTS:
        paths.append(multiqc.boxplot(
            f"{prefix}_qc_{suffix}_mqc.json", f"coem_qc_{suffix}", f"QC: {title}",
            f"Distribution of {title} after QC (coem_qc_distributions; at most {MAX_BOX_CELLS} cells per "
            "sample, subsampled with the step's seed).",
            {sample: obs[metric].to_numpy()[keep].tolist()},
        ))
    return paths


def _summary_row(report: QCReport) -> dict:
    row = {
        "cells_before": report.cells_before, "cells_after": report.cells_after,
        "pct_cells_kept": round(report.pct_cells_kept, 2),
        "genes_before": report.genes_before, "genes_after": report.genes_after,
        "peaks_before": report.peaks_before, "peaks_after": report.peaks_after,
    }
    row["qc_mode"] = report.mode
    for name in PER_CELL_THRESHOLDS:  # the threshold applied (derived or given) and the cells failing it
        value = report.thresholds[name]
        row[f"threshold_{name}"] = "off" if value is None else value
        if name in report.removed_by_filter:
            row[f"failed_{name}"] = report.removed_by_filter[name]
    for metric, value in report.medians_before.items():
        row[f"median_{metric}_before"] = value
        row[f"median_{metric}_after"] = report.medians_after[metric]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    row = _input_row(args)
    thresholds, rule, given = _thresholds(args)
    run = StepRun(STEP, args, log, input_file=_input_files(row))

    with run.stage("read") as stage:
        mdata, counts = _read(row, args)
        where = "; counts read in chunks from disk" if counts is not None else ""
        stage.done(f"read {mdata.n_obs:,} cells, {mdata.mod['rna'].n_vars:,} genes, "
                   f"{mdata.mod['atac'].n_vars:,} peaks{where}")
    _check_gene_positions(mdata, args.sample, row)
    with run.stage("qc") as stage:
        try:
            filtered, report = apply_qc(mdata, thresholds, sample=args.sample, rule=rule, given=given,
                                        counts=counts)
        except ValueError as err:  # a given threshold contradicts a derived one (e.g. a max below the derived min)
            raise CoemInputError(f"invalid QC threshold: {err}") from err
        cuts = ", ".join(f"{k}={v}" for k, v in report.thresholds.items() if k in PER_CELL_THRESHOLDS)
        stage.done(f"{report.mode} thresholds ({cuts}): {report.cells_after:,} of {report.cells_before:,} cells "
                   f"kept ({report.pct_cells_kept:.1f}%), {report.genes_after:,} genes, {report.peaks_after:,} peaks")

    if args.n_metacells is not None or args.cells_per_metacell is not None:
        from coem.metacells import check_metacell_count  # fail now, not after the VAE

        with run.stage("metacell_count") as stage:
            n = check_metacell_count(report.cells_after, args.n_metacells, args.cells_per_metacell)
            stage.done(f"{n:,} metacells will be made of {report.cells_after:,} cells")
    labels = filtered.obs["label"] if "label" in filtered.obs else None
    for message in data_loss_warnings(mdata.uns.get("coem_input", {}), report, labels):
        warn_user(message, args.sample, STEP)
    params = {**report.thresholds, "qc_mode": report.mode, "auto_rule": report.rule,
              "given": list(given), "inputs": row}
    with run.stage("write") as stage:
        record_step(filtered, STEP, params, seed=args.seed, timings=run.timings, report=report.to_dict())
        _write_outputs(run.prefix, args, filtered, report, run, counts)
        stage.done(f"wrote {run.prefix}.qc.h5mu and reports")
    return 0


def _read(row: dict, args):
    """(MuData, None) read into memory, or (MuData with empty matrices, ``StreamedCounts``) when the
    counts stay on disk (``--backed``, ``coem.qc_backed``)."""
    from coem.qc_backed import use_streaming  # the I/O stack loads after argument checks
    from coem.readers import read_sample

    disk = use_streaming(row, args.backed)
    if args.backed == "on" and disk is None:
        log.info("%s: --backed on, but the input's counts are not CSR rows of cells, or the cells of its two "
                 "modalities come in different orders; reading it into memory", args.sample)
    if disk is None:
        return read_sample(row, args.sample), None
    streamed = {}

    def tables_only(*files, sample=None, **options):
        mdata, streamed["counts"] = disk.read(sample, **options)
        return mdata

    return read_sample(row, args.sample, readers={disk.kind: tables_only}), streamed["counts"]


def _write_outputs(prefix: str, args, filtered, report: QCReport, run: StepRun, counts=None) -> None:
    """Write everything; the h5mu goes to a temporary name and is renamed only at the end."""
    from coem.readers import _quiet
    from coem.stepfiles import atomic_output

    with atomic_output(f"{prefix}.qc.h5mu") as partial:
        _quiet(filtered.write, str(partial))  # mudata warns about a default change that does not concern us
        if counts is not None:  # the tables are written; now the counts, chunk by chunk
            counts.write_filtered(partial)
        Path(f"{prefix}.qc_summary.json").write_text(json.dumps(report.to_dict(), indent=1))
        write_multiqc(prefix, args.sample, report, filtered.obs, args.seed)
        run.write_versions()
