"""``coem_peak2gene.py``: peak-to-gene correlations across the metacells of one sample.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.peak2gene.tsv``: one row per gene-peak pair (gene, peak, distance, chrom, r, p, fdr,
  p_empirical, null_mean, null_sd), sorted by gene then distance;
- ``P.peak2gene_summary.json``: the summary numbers (metacells, and single cells when
  ``--cells`` is given) plus the step record (parameters, seed, versions, timings);
- MultiQC custom content: ``P_peak2gene_summary_mqc.json`` (table, id
  ``coem_peak2gene_summary``) and ``P_peak2gene_r_mqc.json`` (line graph of the r
  distribution, id ``coem_peak2gene_r``);
- ``versions.yml``.

This step writes no MuData, so its record (``coem.provenance.step_record``) goes into the
summary JSON instead of ``uns['coem']``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from coem import multiqc
from coem._logging import get_logger
from coem.cli._common import base_parser
from coem.errors import CoemInputError
from coem.peak2gene import ANCHORS, METHODS, peak_to_gene, r_histogram
from coem.provenance import step_record, strict_json, write_versions_yml

STEP = "peak2gene"
ANCHOR_WORDS = {"tss": "TSS", "gene_body": "gene body"}
R_BINS = 40
log = get_logger("coem.peak2gene")

TABLE_HEADERS = {
    "pairs": {"title": "Pairs", "description": "gene-peak pairs tested", "format": "{:,.0f}"},
    "genes": {"title": "Genes", "description": "genes with at least one tested peak", "format": "{:,.0f}"},
    "fraction_negative": {"title": "Negative r", "description": "fraction of pairs with r < 0 (lower is better)",
                          "min": 0, "max": 1, "format": "{:,.3f}"},
    "fraction_significant": {"title": "Significant", "description": "fraction of pairs with FDR < 0.1 and r > 0",
                             "min": 0, "max": 1, "format": "{:,.3f}"},
    "median_r": {"title": "Median r", "description": "median correlation over pairs", "min": -1, "max": 1,
                 "format": "{:,.3f}"},
    "null_mean_r": {"title": "Null mean r", "description": "mean r of genes with peaks on other chromosomes",
                    "min": -1, "max": 1, "format": "{:,.3f}"},
    "single_cell_fraction_negative": {"title": "Negative r (cells)",
                                      "description": "fraction of pairs with r < 0 across single cells",
                                      "min": 0, "max": 1, "format": "{:,.3f}"},
}


def build_parser():
    parser = base_parser("Peak-to-gene correlations across the metacells of one sample.")
    parser.add_argument("--input", required=True, help="aggregated metacells (P.aggregated.h5mu)")
    parser.add_argument("--cells", default=None,
                        help="optional cell-level MuData (P.metacells.h5mu) for a single-cell comparison")
    parser.add_argument("--max-cells", type=int, default=5000,
                        help="cells sampled (seeded) for the single-cell comparison (default: 5000)")
    parser.add_argument("--window", type=int, default=100_000, help="bp either side of the anchor (default: 100000)")
    parser.add_argument("--method", choices=METHODS, default="pearson", help="correlation (default: pearson)")
    parser.add_argument("--anchor", choices=ANCHORS, default="tss",
                        help="window around the TSS (COEM/ArchR) or the gene body (SEACells) (default: tss)")
    parser.add_argument("--n-null", type=int, default=100,
                        help="random peaks from other chromosomes per gene for the empirical null (default: 100)")
    return parser


def _read(path: str, sample: str):
    """Read a MuData with 'rna' and 'atac'; a missing or unreadable file is a user error."""
    import mudata

    if not Path(path).is_file():
        raise CoemInputError("the file does not exist", sample=sample, file=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mdata = mudata.read_h5mu(path)
    except (OSError, KeyError, ValueError) as err:
        raise CoemInputError(f"cannot read the file as MuData (.h5mu): {err}", sample=sample, file=path) from err
    missing = [m for m in ("rna", "atac") if m not in mdata.mod]
    if missing:
        raise CoemInputError(f"no modality {missing} (found {sorted(mdata.mod)})", sample=sample, file=path)
    return mdata


def subsample_cells(mdata, max_cells: int, seed: int):
    """At most ``max_cells`` cells (seeded, kept in order) as a MuData of rna + atac copies."""
    import mudata

    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    shared = rna.obs_names.intersection(atac.obs_names, sort=False)
    if len(shared) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(shared), max_cells, replace=False))
        shared = shared[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.MuData({"rna": rna[shared].copy(), "atac": atac[shared].copy()})


def _run(mdata, args, what: str, file: str):
    """peak_to_gene with the CLI's parameters; errors name the sample and file."""
    start = time.perf_counter()
    try:
        links, summary = peak_to_gene(mdata, window=args.window, method=args.method, anchor=args.anchor,
                                      n_null=args.n_null, seed=args.seed)
    except CoemInputError as err:
        raise err.with_context(sample=args.sample, file=file) from err
    seconds = round(time.perf_counter() - start, 3)
    log.info("%s: %d pairs over %d genes across %d %s, %.1f%% negative, median r %.3f in %.2f s",
             args.sample, summary["n_pairs"], summary["n_genes"], summary["n_obs"], what,
             100 * summary["fraction_negative"], summary["median_r"], seconds)
    return links, summary, seconds


def table_row(summary: dict, cells_summary: dict | None) -> dict:
    row = {
        "pairs": summary["n_pairs"],
        "genes": summary["n_genes"],
        "fraction_negative": summary["fraction_negative"],
        "fraction_significant": summary["fraction_significant_positive"],
        "median_r": summary["median_r"],
        "null_mean_r": summary["null_mean_r"],
    }
    if cells_summary is not None:
        row["single_cell_fraction_negative"] = cells_summary["fraction_negative"]
    return row


def write_multiqc(prefix: str, sample: str, links: pd.DataFrame, summary: dict,
                  cell_links: pd.DataFrame | None, cells_summary: dict | None) -> list[Path]:
    """The summary table row and the r distribution (metacells, plus single cells if given)."""
    headers = {k: v for k, v in TABLE_HEADERS.items() if cells_summary is not None or not k.startswith("single")}
    paths = [multiqc.table(
        f"{prefix}_peak2gene_summary_mqc.json", "coem_peak2gene_summary", "Peak-to-gene links",
        f"Correlation ({summary['method']}) of each gene with the peaks whose centre lies within "
        f"{summary['window']:,} bp of its {ANCHOR_WORDS[summary['anchor']]}, across metacells. "
        "Few negative correlations indicate homogeneous metacells.",
        {sample: table_row(summary, cells_summary)}, headers=headers,
    )]
    series = {sample: r_histogram(links["r"].to_numpy(), R_BINS)}
    if cell_links is not None:
        series[f"{sample} (single cells)"] = r_histogram(cell_links["r"].to_numpy(), R_BINS)
    paths.append(multiqc.linegraph(
        f"{prefix}_peak2gene_r_mqc.json", "coem_peak2gene_r", "Peak-to-gene correlation distribution",
        f"Fraction of gene-peak pairs per bin of r ({R_BINS} bins from -1 to 1).",
        series, pconfig={"xlab": "correlation r", "ylab": "fraction of pairs", "xmin": -1, "xmax": 1, "ymin": 0},
    ))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = args.prefix or args.sample
    process_name = args.process_name or "COEM_PEAK2GENE"
    if args.window < 0:
        raise CoemInputError(f"--window must be >= 0, got {args.window}", sample=args.sample)
    if args.n_null < 0 or args.max_cells < 3:
        raise CoemInputError("--n-null must be >= 0 and --max-cells >= 3", sample=args.sample)
    timings = {}

    start = time.perf_counter()
    mdata = _read(args.input, args.sample)
    timings["read_s"] = round(time.perf_counter() - start, 3)
    log.info("read %s: %d metacells, %d genes, %d peaks in %.2f s", args.input, mdata.mod["rna"].n_obs,
             mdata.mod["rna"].n_vars, mdata.mod["atac"].n_vars, timings["read_s"])
    links, summary, timings["metacells_s"] = _run(mdata, args, "metacells", args.input)

    cell_links = cells_summary = None
    if args.cells:
        start = time.perf_counter()
        cells = subsample_cells(_read(args.cells, args.sample), args.max_cells, args.seed)
        timings["read_cells_s"] = round(time.perf_counter() - start, 3)
        log.info("read %s: %d cells used (at most %d) in %.2f s", args.cells, cells.mod["rna"].n_obs,
                 args.max_cells, timings["read_cells_s"])
        cell_links, cells_summary, timings["single_cells_s"] = _run(cells, args, "cells", args.cells)

    start = time.perf_counter()
    params = {k: getattr(args, k) for k in ("input", "cells", "max_cells", "window", "method", "anchor", "n_null")}
    record = step_record(STEP, params, seed=args.seed, timings=timings)
    links.to_csv(f"{prefix}.peak2gene.tsv", sep="\t", index=False, float_format="%.6g")
    out = {"sample": args.sample, "metacells": summary, "single_cells": cells_summary, "record": record}
    Path(f"{prefix}.peak2gene_summary.json").write_text(json.dumps(strict_json(out), indent=1, sort_keys=True))
    write_multiqc(prefix, args.sample, links, summary, cell_links, cells_summary)
    write_versions_yml("versions.yml", process_name)
    log.info("wrote %s.peak2gene.tsv and reports in %.2f s", prefix, time.perf_counter() - start)
    return 0
