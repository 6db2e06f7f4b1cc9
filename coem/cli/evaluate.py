"""``coem_evaluate.py``: SEACells' metacell metrics (compactness, separation, purity) for one sample.

Inputs: the QC step's ``P.qc.h5mu`` (raw counts in ``rna`` / ``atac``; either may be missing, at
least one is needed) and the metacell step's ``P.metacells.h5ad`` (the metacell id of every cell
in ``obs['metacell']``), or one MuData holding both. Each modality is
embedded as SEACells' evaluation does (RNA: PCA of log-normalised highly variable genes; ATAC:
LSI of TF-IDF), diffusion components are computed once per modality (Palantir, as in
``coem.metrics``) and every metric is computed on them.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.evaluation.tsv``: one row per metacell (size, compactness/separation per modality,
  nearest metacell, label and purity when labels are present, and the dubious-metacell test
  of ``coem.dubious``: ``excess_<mod>``, ``p_<mod>``, ``q_<mod>``, ``dubious_<mod>``, ``dubious``);
- ``P.evaluation_summary.json``: mean +- sd of every metric, sizes, and the step record
  (parameters, seed, versions, timings);
- ``P.diffusion.npz``: ``obs_names``, ``<mod>_components``, ``<mod>_eigenvalues`` and the
  parameters, so baselines (e.g. SEACells metacells) are scored on the very same components;
- MultiQC: ``P_evaluation_mqc.json`` (table ``coem_evaluation``) and, with labels,
  ``P_purity_mqc.json`` (boxplot ``coem_purity`` of per-metacell purity);
- ``versions.yml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from coem import metrics, multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, add_cells_arguments, base_parser, read_counts_and_cells
from coem.errors import CoemInputError
from coem.tl import cell_labels

STEP = "evaluate"
MODALITIES = ("rna", "atac")
log = get_logger("coem.evaluate")


def build_parser():
    parser = base_parser("Metacell quality (SEACells' compactness, separation and purity) of one sample.")
    parser.add_argument("--input", required=True, help="the QC step's MuData (P.qc.h5mu: raw counts)")
    add_cells_arguments(parser)
    parser.add_argument("--metacell-key", default="metacell", help="obs column holding metacell ids")
    parser.add_argument("--label-key", default="label",
                        help="obs column of cell labels for purity (skipped when absent or all empty)")
    parser.add_argument("--n-hvg", type=int, default=2000, help="RNA highly variable genes (default 2000)")
    parser.add_argument("--n-pcs", type=int, default=50, help="RNA principal components (default 50, as SEACells)")
    parser.add_argument("--n-lsi", type=int, default=50, help="ATAC LSI components (default 50, as SEACells)")
    parser.add_argument("--knn", type=int, default=30, help="diffusion-map neighbours (Palantir default 30)")
    parser.add_argument("--n-components", type=int, default=10, help="diffusion eigenvectors (default 10)")
    parser.add_argument("--n-eigs", type=int, default=10,
                        help="multiscale space keeps eigenvectors 1..n_eigs-1 (SEACells: 10)")
    from coem.cli.aggregate import add_dubious_arguments

    add_dubious_arguments(parser)
    parser.add_argument("--dubious-table", default=None,
                        help="the aggregate step's P.dubious.tsv: reuse its dubious-metacell test instead of "
                             "running it again")
    return parser


# --------------------------------------------------------------------------- input


def metacell_ids(mdata, key: str, sample: str, path: str) -> np.ndarray:
    """Every cell's metacell id (as str); missing column or unassigned cells are errors."""
    if key not in mdata.obs.columns:
        raise CoemInputError(
            f"obs has no '{key}' column (metacell id per cell); run the metacells step first or pass "
            f"--metacell-key (obs columns: {', '.join(map(str, mdata.obs.columns)) or 'none'})",
            sample=sample, file=path)
    ids = mdata.obs[key]
    if ids.isna().any():
        raise CoemInputError(f"{int(ids.isna().sum())} cells have no metacell in obs['{key}']; every cell "
                             "must be assigned", sample=sample, file=path)
    return ids.astype(str).to_numpy()


def read_dubious_table(path: str, ids: np.ndarray) -> pd.DataFrame:
    """The aggregate step's ``P.dubious.tsv`` (the same test, run once per sample); it must cover
    every metacell of the assignment."""
    try:
        table = pd.read_csv(path, sep="\t", index_col="metacell")
    except (OSError, ValueError) as err:
        raise CoemInputError(f"cannot read the dubious-metacell table: {err}") from err
    missing = sorted(set(ids) - set(table.index.astype(str)))
    if "dubious" not in table.columns or missing:
        raise CoemInputError(f"the dubious-metacell table lacks the 'dubious' column or metacells "
                             f"({len(missing)} missing, e.g. {missing[:3]}); pass the same run's P.dubious.tsv")
    table.index = table.index.astype(str)
    return table.loc[sorted(set(ids))]


# --------------------------------------------------------------------------- compute


def diffusion_per_modality(mdata, run: StepRun) -> tuple[dict, dict, dict]:
    """SEACells' evaluation embedding (``coem.tl.evaluation_embedding``), then diffusion maps and
    multiscale components, once per modality present; each a timed stage."""
    from coem.tl import evaluation_embedding

    args = run.args
    components, eigenvalues, embed_info = {}, {}, {}
    for mod in (m for m in MODALITIES if m in mdata.mod):
        with run.stage(f"embed_{mod}") as stage:
            emb, info = evaluation_embedding(mdata, mod, n_hvg=args.n_hvg, n_pcs=args.n_pcs, n_lsi=args.n_lsi,
                                             random_state=args.seed)
            embed_info[mod] = {k: v for k, v in info.items() if k != "hvg_index"}
            stage.done(f"{mod} embedding {emb.shape}")
        with run.stage(f"diffusion_{mod}") as stage:
            vals, vecs = metrics.diffusion_maps(emb, n_components=args.n_components, knn=args.knn, seed=args.seed)
            components[mod] = metrics.multiscale_space(vals, vecs, n_eigs=args.n_eigs)
            eigenvalues[mod] = vals
            stage.done(f"{mod} diffusion components {components[mod].shape}")
    return components, eigenvalues, embed_info


# --------------------------------------------------------------------------- output


def multiqc_row(summary: dict) -> dict:
    """The sample's row of the ``coem_evaluation`` table (None where undefined).

    Medians always; SEACells' means beside them, left blank for a modality whose diffusion graph
    is nearly disconnected (``coem.metrics.disconnection_flag``), whose sentence goes in
    ``warnings`` instead: no 1e+25 in the report.
    """
    sizes = summary["sizes"]
    row = {"n_metacells": sizes["n_metacells"],
           "largest_share": None if sizes.get("largest_share") is None else 100 * sizes["largest_share"],
           "size_gini": sizes.get("size_gini")}
    if "purity" in summary:
        row["purity_mean"] = summary["purity"]["mean"]
        row["purity_cells"] = summary.get("purity_cells")
    notes = []
    for mod in MODALITIES:
        flag = summary.get("diffusion", {}).get(mod, {})
        for metric in ("compactness", "separation"):
            key = f"{metric}_{mod}"
            if key in summary:
                row[f"{key}_median"] = summary[key].get("median")
                row[f"{key}_mean"] = None if flag.get("nearly_disconnected") else summary[key]["mean"]
        if flag.get("nearly_disconnected"):
            notes.append(flag["sentence"])
    if "dubious" in summary:
        row["dubious_pct"] = summary["dubious"].get("pct_dubious")
    row["warnings"] = " ".join(notes) if notes else "none"
    return row


def _metric_header(metric: str, mod: str, stat: str) -> dict:
    better = "lower" if metric == "compactness" else "higher"
    what = ("within-metacell variance" if metric == "compactness" else "distance to the nearest other metacell")
    if stat == "median":
        return {"title": f"{metric.capitalize()} {mod.upper()} (median)",
                "description": f"median over metacells of the {what} in {mod.upper()} diffusion components "
                               f"({better} is better; robust to a few isolated metacells)", "format": "{:,.4g}"}
    return {"title": f"{metric.capitalize()} {mod.upper()} (mean)",
            "description": f"SEACells' mean over metacells of the {what} in {mod.upper()} diffusion components "
                           f"({better} is better); blank when the diffusion graph is nearly disconnected "
                           "(see Warnings)", "format": "{:,.4g}"}


TABLE_HEADERS = {
    "n_metacells": {"title": "Metacells", "description": "number of metacells", "format": "{:,.0f}"},
    "purity_mean": {"title": "Purity (per metacell)", "description": "mean over metacells of the fraction of "
                    "a metacell's cells carrying its majority label (good: close to 1)", "min": 0, "max": 1,
                    "format": "{:,.3f}"},
    "purity_cells": {"title": "Purity (per cell)", "description": "fraction of all labelled cells that carry "
                     "their metacell's majority label, one vote per cell (good: close to 1)", "min": 0, "max": 1,
                     "format": "{:,.3f}"},
    "largest_share": {"title": "Largest metacell", "description": "share of all cells in the largest metacell "
                      "(good: a few times 100 / metacells)", "suffix": "%", "min": 0, "max": 100,
                      "format": "{:,.2f}"},
    "size_gini": {"title": "Size Gini", "description": "Gini coefficient of metacell sizes: 0 all equal, 1 one "
                  "metacell holds all (good: below about 0.4)", "min": 0, "max": 1, "format": "{:,.2f}"},
    **{f"{metric}_{mod}_{stat}": _metric_header(metric, mod, stat)
       for mod in MODALITIES for metric in ("compactness", "separation") for stat in ("median", "mean")},
    "dubious_pct": {"title": "Dubious", "description": "share of metacells whose cells are not homogeneous "
                    "(feature correlation above a permutation null, BH-adjusted; good: a few %)", "suffix": "%",
                    "min": 0, "max": 100, "format": "{:,.1f}"},
    "warnings": {"title": "Warnings", "description": "plain-language warnings, e.g. a nearly disconnected "
                 "diffusion graph ('none' when all is well)"},
}

EVALUATION_DESCRIPTION = (
    "Metacell quality per sample. Purity: how many cells share their metacell's majority label, per metacell "
    "(SEACells) and per cell (good: close to 1). Size balance: the largest metacell's share of cells and the "
    "Gini of sizes (good: small). Compactness (lower is better) and separation (higher is better): SEACells' "
    "definitions on Palantir diffusion components of RNA PCA / ATAC LSI; medians over metacells, with SEACells' "
    "means beside them (comparable to its papers) unless the diffusion graph is nearly disconnected (a value "
    "above 1e6 or a mean above 100 x the median), which the Warnings column then says in words. "
    "Compare compactness and separation between methods on the same sample, not between samples."
)


def write_multiqc(prefix: str, sample: str, summary: dict, table: pd.DataFrame) -> list[Path]:
    """Table ``coem_evaluation`` always; boxplot ``coem_purity`` when labels gave purities."""
    row = multiqc_row(summary)
    paths = [multiqc.table(
        f"{prefix}_evaluation_mqc.json", "coem_evaluation", "Metacell evaluation", EVALUATION_DESCRIPTION,
        {sample: row}, headers={k: v for k, v in TABLE_HEADERS.items() if k in row},
    )]
    if "purity" in table.columns:
        values = table["purity"].dropna().tolist()
        paths.append(multiqc.boxplot(
            f"{prefix}_purity_mqc.json", "coem_purity", "Metacell purity",
            "Per-metacell purity: fraction of the metacell's labelled cells that carry its most frequent label "
            "(good: boxes near 1; a long tail down marks mixed metacells).",
            {sample: values},
        ))
    return paths


def write_outputs(run: StepRun, table, summary, components, eigenvalues, obs_names) -> None:
    prefix, args = run.prefix, run.args
    table.to_csv(f"{prefix}.evaluation.tsv", sep="\t", na_rep="NA")
    Path(f"{prefix}.evaluation_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=False))
    arrays = {"obs_names": np.asarray(obs_names, dtype=str)}
    for mod in components:
        arrays[f"{mod}_components"] = components[mod]
        arrays[f"{mod}_eigenvalues"] = eigenvalues[mod]
    arrays.update(knn=args.knn, n_components=args.n_components, n_eigs=args.n_eigs, seed=args.seed)
    np.savez_compressed(f"{prefix}.diffusion.npz", **arrays)
    write_multiqc(prefix, args.sample, summary, table)
    run.write_versions()


def _params(args) -> dict:
    keys = ("input", "metacell_key", "label_key", "n_hvg", "n_pcs", "n_lsi", "knn", "n_components", "n_eigs",
            "dubious_permutations", "dubious_features", "dubious_fdr", "dubious_min_excess")
    return {key: getattr(args, key) for key in keys}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = StepRun(STEP, args, log)
    mdata = read_counts_and_cells(run, "pass the QC step's P.qc.h5mu with --input", args.metacells,
                                  metacell_key=args.metacell_key, backed=True)  # counts: row chunks from disk
    ids = metacell_ids(mdata, args.metacell_key, args.sample, args.input)
    labels = cell_labels(mdata, args.label_key)
    if not any(m in mdata.mod for m in MODALITIES):
        raise CoemInputError(f"no 'rna' or 'atac' modality (found: {', '.join(mdata.mod) or 'none'})",
                             sample=args.sample, file=args.input)
    components, eigenvalues, embed_info = diffusion_per_modality(mdata, run)
    with run.stage("metrics") as stage:
        table, summary = metrics.evaluate_metacells(ids, components, labels)
        stage.done(f"metrics of {len(table):,} metacells (labels {'present' if labels is not None else 'absent'})")
    if args.dubious_table or args.dubious_permutations:
        from coem import dubious
        from coem.cli.aggregate import dubious_table

        with run.stage("dubious", file=args.dubious_table) as stage:
            flags = read_dubious_table(args.dubious_table, ids) if args.dubious_table else dubious_table(mdata, args)
            table = table.join(flags.rename(index=str))
            summary["dubious"] = dubious.summary(flags)
            stage.done(f"{summary['dubious']['n_dubious']} of {len(flags)} metacells dubious")
    summary = {"sample": args.sample, **summary, "embedding": embed_info, "record": run.record(_params(args))}
    with run.stage("write") as stage:
        write_outputs(run, table, summary, components, eigenvalues, mdata.obs_names)
        stage.done(f"wrote {run.prefix}.evaluation.tsv, summary, diffusion components and reports")
    return 0
