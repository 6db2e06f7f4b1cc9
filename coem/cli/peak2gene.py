"""``coem_peak2gene.py``: peak-to-gene links across the metacells of one sample.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.peak2gene.tsv``: every tested gene-peak pair (gene, peak, distance, chrom, r, z, p,
  fdr, bg_mean, bg_sd, bg_n, weight), sorted by gene then distance; pairs whose gene or peak
  does not vary across metacells are not tested (counted in the summary);
- ``P.peak2gene_significant.tsv``: the links with ``fdr <= --fdr`` and ``r >= --min-r``;
- ``P.peak2gene_significant.bedpe``: the same links for genome browsers (IGV, UCSC via
  bedpe-to-interact, WashU): peak, then the gene's TSS (1 bp), name = gene, score = r;
- ``P.peak2gene_summary.json``: the summary numbers (metacells, and single cells when
  ``--cells`` is given, and the truth comparison with ``--known-links``) plus the step record
  (parameters, seed, versions, timings);
- MultiQC custom content (section ids ``coem_peak2gene_*``): the summary table, the r
  distribution of tested pairs and of their matched background, the distance to the TSS of
  significant links, and, with ``--known-links``, the precision-recall summary;
- ``versions.yml``.

This step writes no MuData, so its record (``coem.provenance.step_record``) goes into the
summary JSON instead of ``uns['coem']``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from coem import multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser, params_of, read_mudata, warn_user
from coem.errors import CoemInputError
from coem.link_truth import auprc, label_known
from coem.peak2gene import (ALTERNATIVES, ANCHORS, DISTANCE_SCALE, FDR_THRESHOLD, METHODS, MIN_R, N_BACKGROUND,
                            NORMALISATIONS, NULL_MODELS, peak_to_gene, r_histogram, rank_score,
                            rebin_histogram, significant_links)
from coem.provenance import strict_json

STEP = "peak2gene"
# Below this many metacells a link needs r above about 0.31 just to reach p 0.05 one-sided (Student's t),
# before the FDR over thousands of pairs: the run warns that links are underpowered.
FEW_METACELLS = 30
ANCHOR_WORDS = {"tss": "TSS", "gene_body": "gene body"}
R_BINS = 40
DISTANCE_BINS = 20
log = get_logger("coem.peak2gene")

TABLE_HEADERS = {
    "pairs": {"title": "Pairs", "description": "gene-peak pairs tested", "format": "{:,.0f}"},
    "skipped": {"title": "Skipped", "description": "pairs not tested: gene or peak constant across metacells",
                "format": "{:,.0f}"},
    "genes": {"title": "Genes", "description": "genes with at least one tested peak", "format": "{:,.0f}"},
    "significant": {"title": "Significant links", "description": "pairs with FDR and r within the cut-offs",
                    "format": "{:,.0f}"},
    "significant_genes": {"title": "Linked genes", "description": "genes with at least one significant link",
                          "format": "{:,.0f}"},
    "median_r": {"title": "Median r", "description": "median correlation over tested pairs", "min": -1, "max": 1,
                 "format": "{:,.3f}"},
    "background_median_r": {"title": "Background median r",
                            "description": "median r of the genes with their matched background peaks "
                                           "(other chromosomes)", "min": -1, "max": 1, "format": "{:,.3f}"},
    "fraction_negative": {"title": "Negative r", "description": "fraction of pairs with r < 0 (the COEM paper's "
                          "measure; it also reflects how metacells split states)", "min": 0, "max": 1,
                          "format": "{:,.3f}"},
    "single_cell_significant": {"title": "Significant (cells)",
                                "description": "significant links when single cells are correlated instead",
                                "format": "{:,.0f}"},
}
TRUTH_HEADERS = {
    "n_known_tested": {"title": "Known links tested", "format": "{:,.0f}"},
    "auprc": {"title": "AUPRC", "description": "area under the precision-recall curve, links ranked by p / weight",
              "min": 0, "max": 1, "format": "{:,.3f}"},
    "base_rate": {"title": "Base rate", "description": "share of tested pairs that are known links (AUPRC of a "
                  "random ranking)", "min": 0, "max": 1, "format": "{:,.3f}"},
    "recall": {"title": "Recall", "description": "share of known links that are significant", "min": 0, "max": 1,
               "format": "{:,.3f}"},
    "precision": {"title": "Precision", "description": "share of significant links that are known links",
                  "min": 0, "max": 1, "format": "{:,.3f}"},
}


def build_parser():
    parser = base_parser("Peak-to-gene links across the metacells of one sample.")
    parser.add_argument("--input", required=True, help="aggregated metacells (P.aggregated.h5mu)")
    parser.add_argument("--cells", default=None,
                        help="optional cell-level MuData (the QC step's P.qc.h5mu) for a single-cell comparison")
    parser.add_argument("--max-cells", type=int, default=5000,
                        help="cells sampled (seeded) for the single-cell comparison (default: 5000)")
    parser.add_argument("--window", type=int, default=100_000, help="bp either side of the anchor (default: 100000)")
    parser.add_argument("--method", choices=METHODS, default="pearson", help="correlation (default: pearson)")
    parser.add_argument("--anchor", choices=ANCHORS, default="tss",
                        help="window around the TSS (COEM/ArchR) or the gene body (SEACells) (default: tss)")
    parser.add_argument("--n-background", type=int, default=N_BACKGROUND,
                        help=f"matched background peaks per tested pair (default: {N_BACKGROUND}; 0: t-test of r)")
    parser.add_argument("--alternative", choices=ALTERNATIVES, default="greater",
                        help="greater: positive links (default); two-sided: both signs")
    parser.add_argument("--null", choices=NULL_MODELS, default="empirical",
                        help="null of z: pooled empirical (default) or standard normal (Signac)")
    parser.add_argument("--normalisation", choices=NORMALISATIONS, default="median_ratio",
                        help="library sizes when obs has no 'library_size' (default: median_ratio)")
    parser.add_argument("--distance-scale", type=float, default=DISTANCE_SCALE,
                        help=f"bp scale of the distance prior of the FDR (default: {DISTANCE_SCALE}; 0: none)")
    parser.add_argument("--fdr", type=float, default=FDR_THRESHOLD,
                        help=f"FDR cut-off of significant links (default: {FDR_THRESHOLD})")
    parser.add_argument("--min-r", type=float, default=MIN_R,
                        help=f"smallest r of significant links (default: {MIN_R})")
    parser.add_argument("--fasta", default=None, help="genome FASTA: match the background on GC content too")
    parser.add_argument("--known-links", default=None,
                        help="TSV/CSV with columns gene, peak of known links (e.g. simulated truth): "
                             "report precision and recall against them")
    return parser


def _check_args(args) -> None:
    problems = []
    if args.window < 0:
        problems.append(f"--window must be >= 0, got {args.window}")
    if args.n_background < 0:
        problems.append(f"--n-background must be >= 0, got {args.n_background}")
    if args.max_cells < 3:
        problems.append(f"--max-cells must be >= 3, got {args.max_cells}")
    if not 0 < args.fdr <= 1:
        problems.append(f"--fdr must lie in (0, 1], got {args.fdr}")
    if not -1 <= args.min_r <= 1:
        problems.append(f"--min-r must lie in [-1, 1], got {args.min_r}")
    if not args.distance_scale >= 0:
        problems.append(f"--distance-scale must be >= 0, got {args.distance_scale}")
    if problems:
        raise CoemInputError("; ".join(problems), sample=args.sample)


def _read(path: str, sample: str):
    """A MuData with 'rna' and 'atac'; a missing or unreadable file is a user error."""
    mdata = read_mudata(path, sample, "the file does not exist; pass the aggregated metacells (P.aggregated.h5mu)")
    missing = [m for m in ("rna", "atac") if m not in mdata.mod]
    if missing:
        raise CoemInputError(f"no modality {missing} (found {sorted(mdata.mod)})", sample=sample, file=path)
    return mdata


def read_known_links(path: str, sample: str) -> pd.DataFrame:
    """Known links (columns gene, peak; tab- or comma-separated)."""
    if not Path(path).is_file():
        raise CoemInputError("the known-links file does not exist", sample=sample, file=path)
    try:
        known = pd.read_csv(path, sep=None, engine="python", dtype=str)
    except Exception as err:
        raise CoemInputError(f"cannot read the known-links table: {err}", sample=sample, file=path) from err
    missing = [c for c in ("gene", "peak") if c not in known.columns]
    if missing:
        raise CoemInputError(f"the known-links table lacks column(s) {missing} (found {list(known.columns)})",
                             sample=sample, file=path)
    return known


def subsample_cells(mdata, max_cells: int, seed: int):
    """At most ``max_cells`` cells (seeded, kept in order) as a MuData of rna + atac copies."""
    import mudata

    from coem.cli._common import quiet_mudata

    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    shared = rna.obs_names.intersection(atac.obs_names, sort=False)
    if len(shared) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(shared), max_cells, replace=False))
        shared = shared[keep]
    with quiet_mudata():
        return mudata.MuData({"rna": rna[shared].copy(), "atac": atac[shared].copy()})


def _run(run: StepRun, name: str, mdata, gc, what: str, file: str):
    """peak_to_gene with the CLI's parameters, as a timed stage; errors name the sample and file."""
    args = run.args
    with run.stage(name, file=file) as stage:
        links, summary = peak_to_gene(
            mdata, window=args.window, method=args.method, anchor=args.anchor, n_background=args.n_background,
            seed=args.seed, gc=gc, alternative=args.alternative, normalisation=args.normalisation, null=args.null,
            distance_scale=args.distance_scale, fdr=args.fdr, min_r=args.min_r)
        stage.done(f"{summary['n_pairs']:,} pairs over {summary['n_genes']:,} genes across {summary['n_obs']:,} "
                   f"{what} ({summary['n_pairs_skipped_constant']:,} skipped: constant), "
                   f"{summary['n_significant']:,} significant links (FDR <= {args.fdr:g}, r >= {args.min_r:g}), "
                   f"median r {summary['median_r']:.3f} vs background {summary['background_median_r']:.3f}")
    return links, summary


def to_bedpe(links: pd.DataFrame, genes_var: pd.DataFrame, peaks_var: pd.DataFrame) -> pd.DataFrame:
    """BEDPE rows: the peak (0-based, as in the peak names), then the gene's TSS as a 1-bp interval."""
    if links.empty:
        return pd.DataFrame(columns=["chrom1", "start1", "end1", "chrom2", "start2", "end2", "name", "score",
                                     "strand1", "strand2", "r", "z", "fdr", "distance"])
    peaks = peaks_var.loc[links["peak"]]
    genes = genes_var.loc[links["gene"]]
    tss = pd.to_numeric(genes["tss"], errors="coerce").to_numpy().astype(np.int64)
    strand = genes["strand"].astype(str).to_numpy() if "strand" in genes.columns else np.full(len(links), ".")
    return pd.DataFrame({
        "chrom1": peaks["chrom"].astype(str).to_numpy(), "start1": peaks["start"].astype(np.int64).to_numpy(),
        "end1": peaks["end"].astype(np.int64).to_numpy(),
        "chrom2": genes["chrom"].astype(str).to_numpy(), "start2": tss - 1, "end2": tss,
        "name": links["gene"].to_numpy(), "score": links["r"].round(4).to_numpy(),
        "strand1": ".", "strand2": np.where(np.isin(strand, ["+", "-"]), strand, "."),
        "r": links["r"].round(4).to_numpy(), "z": links["z"].round(3).to_numpy(),
        "fdr": links["fdr"].map(lambda v: f"{v:.3g}").to_numpy(), "distance": links["distance"].to_numpy(),
    })


def distance_histogram(distance: np.ndarray, window: int, bins: int = DISTANCE_BINS) -> dict[float, float]:
    """Significant links per distance bin (kb from the TSS, strand-aware), keyed by bin centre."""
    half = max(1, window) / 1000.0
    counts, edges = np.histogram(np.asarray(distance, dtype=float) / 1000.0, bins=bins, range=(-half, half))
    return {round(float(c), 2): float(n) for c, n in zip((edges[:-1] + edges[1:]) / 2, counts)}


def table_row(summary: dict, cells_summary: dict | None) -> dict:
    row = {
        "pairs": summary["n_pairs"],
        "skipped": summary["n_pairs_skipped_constant"],
        "genes": summary["n_genes"],
        "significant": summary["n_significant"],
        "significant_genes": summary["n_significant_genes"],
        "median_r": summary["median_r"],
        "background_median_r": summary["background_median_r"],
        "fraction_negative": summary["fraction_negative"],
    }
    if cells_summary is not None:
        row["single_cell_significant"] = cells_summary["n_significant"]
    return row


def write_multiqc(prefix: str, sample: str, links: pd.DataFrame, summary: dict, significant: pd.DataFrame,
                  cell_links: pd.DataFrame | None, cells_summary: dict | None, truth: dict | None) -> list[Path]:
    """Summary table, r of tested vs background pairs, distance of significant links, truth summary."""
    headers = {k: v for k, v in TABLE_HEADERS.items() if cells_summary is not None or not k.startswith("single")}
    paths = [multiqc.table(
        f"{prefix}_peak2gene_summary_mqc.json", "coem_peak2gene_summary", "Peak-to-gene links",
        f"Correlation ({summary['method']}) of each gene with the peaks whose centre lies within "
        f"{summary['window']:,} bp of its {ANCHOR_WORDS[summary['anchor']]}, across metacells, tested against "
        f"{summary['n_background']} background peaks per pair from other chromosomes matched on accessibility"
        f"{', width and GC' if summary['gc_matched'] else ' and width'}. Significant links: FDR <= "
        f"{summary['fdr_threshold']:g} and r >= {summary['min_r']:g}. Good: many significant links and tested "
        "pairs whose median r lies clearly above the background's (near 0).",
        {sample: table_row(summary, cells_summary)}, headers=headers,
    )]
    series = {f"{sample} (tested pairs)": r_histogram(links["r"].to_numpy(), R_BINS)}
    background_hist = links.attrs.get("test", {}).get("background_hist")
    if background_hist and sum(background_hist) > 0:
        series[f"{sample} (matched background)"] = rebin_histogram(background_hist, R_BINS)
    if cell_links is not None:
        series[f"{sample} (single cells)"] = r_histogram(cell_links["r"].to_numpy(), R_BINS)
    paths.append(multiqc.linegraph(
        f"{prefix}_peak2gene_r_mqc.json", "coem_peak2gene_r", "Peak-to-gene correlation distribution",
        f"Fraction of pairs per bin of r ({R_BINS} bins from -1 to 1): the tested cis pairs, and the genes with "
        "their matched background peaks on other chromosomes (the null). Good: the tested pairs have a heavier "
        "right tail than the background; the background centres near 0.",
        series, pairs=True,
        pconfig={"xlab": "correlation r", "ylab": "fraction of pairs", "xmin": -1, "xmax": 1, "ymin": 0},
    ))
    paths.append(multiqc.linegraph(
        f"{prefix}_peak2gene_distance_mqc.json", "coem_peak2gene_distance", "Distance of significant links to the TSS",
        f"Significant links per {2 * summary['window'] / 1000 / DISTANCE_BINS:g}-kb bin of distance from the gene's "
        "TSS (negative: upstream). Good: a peak at the TSS and a decay with distance, as regulatory links have.",
        {sample: distance_histogram(significant["distance"].to_numpy(), summary["window"])}, pairs=True,
        pconfig={"xlab": "distance to TSS (kb)", "ylab": "significant links", "ymin": 0},
    ))
    if truth is not None:
        paths.append(multiqc.table(
            f"{prefix}_peak2gene_truth_mqc.json", "coem_peak2gene_truth", "Peak-to-gene links against known links",
            "Links compared with the known links given with the sample (e.g. simulated truth). Good: AUPRC far "
            "above the base rate, and precision at least 1 - FDR cut-off.",
            {sample: {k: truth.get(k) for k in TRUTH_HEADERS}}, headers=TRUTH_HEADERS,
        ))
    return paths


def truth_summary(links: pd.DataFrame, known: pd.DataFrame, significant: pd.DataFrame) -> dict:
    """AUPRC (links ranked as the FDR orders them), recall and precision of the significant links."""
    labels = label_known(links, known)
    called = label_known(significant, known)
    return {
        "n_known": int(len(known[["gene", "peak"]].drop_duplicates())),
        "n_known_tested": int(labels.sum()),
        "auprc": auprc(rank_score(links), labels),
        "base_rate": float(labels.mean()) if len(labels) else float("nan"),
        "recall": float(called.sum() / labels.sum()) if labels.any() else float("nan"),
        "precision": float(called.mean()) if len(called) else float("nan"),
    }


PARAM_KEYS = ("input", "cells", "max_cells", "window", "method", "anchor", "n_background", "alternative", "null",
              "normalisation", "distance_scale", "fdr", "min_r", "fasta", "known_links")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    run = StepRun(STEP, args, log)
    with run.stage("read") as stage:
        mdata = _read(args.input, args.sample)
        known = read_known_links(args.known_links, args.sample) if args.known_links else None
        stage.done(f"read {args.input}: {mdata.mod['rna'].n_obs:,} metacells, {mdata.mod['rna'].n_vars:,} genes, "
                   f"{mdata.mod['atac'].n_vars:,} peaks")
    gc = None
    if args.fasta:
        from coem.genome import peak_gc

        with run.stage("gc", file=args.fasta) as stage:
            gc = peak_gc(mdata.mod["atac"].var, args.fasta)
            median = float(np.nanmedian(gc)) if np.isfinite(gc).any() else float("nan")
            stage.done(f"GC content of {len(gc):,} peaks from {args.fasta} (median {median:.3f})")
    links, summary = _run(run, "metacells", mdata, gc, "metacells", args.input)
    if summary["n_obs"] < FEW_METACELLS:
        warn_user(f"peak-to-gene ran on {summary['n_obs']} metacells: correlations over so few have little power "
                  f"({summary['n_significant']:,} significant links); more cells, or a smaller --cells_per_metacell, "
                  "give more", args.sample, STEP)
    significant = significant_links(links, args.fdr, args.min_r)
    truth = truth_summary(links, known, significant) if known is not None else None

    cell_links = cells_summary = None
    if args.cells:
        with run.stage("read_cells", file=args.cells) as stage:
            cells = subsample_cells(_read(args.cells, args.sample), args.max_cells, args.seed)
            stage.done(f"read {args.cells}: {cells.mod['rna'].n_obs:,} cells used (at most {args.max_cells:,})")
        cell_links, cells_summary = _run(run, "single_cells", cells, gc, "cells", args.cells)

    record = run.record(params_of(args, PARAM_KEYS))
    with run.stage("write") as stage:
        prefix = run.prefix
        links.to_csv(f"{prefix}.peak2gene.tsv", sep="\t", index=False, float_format="%.6g")
        significant.to_csv(f"{prefix}.peak2gene_significant.tsv", sep="\t", index=False, float_format="%.6g")
        to_bedpe(significant, mdata.mod["rna"].var, mdata.mod["atac"].var).to_csv(
            f"{prefix}.peak2gene_significant.bedpe", sep="\t", index=False, header=False)
        out = {"sample": args.sample, "metacells": summary, "single_cells": cells_summary, "known_links": truth,
               "record": record}
        Path(f"{prefix}.peak2gene_summary.json").write_text(json.dumps(strict_json(out), indent=1, sort_keys=True))
        write_multiqc(prefix, args.sample, links, summary, significant, cell_links, cells_summary, truth)
        run.write_versions()
        stage.done(f"wrote {prefix}.peak2gene.tsv ({len(links):,} pairs), {len(significant):,} significant links "
                   "(.tsv, .bedpe) and reports")
    return 0
