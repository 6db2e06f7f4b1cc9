"""``coem_baselines.py``: SEACells baselines next to COEM's metacells, scored the same way.

Inputs: ``P.qc.h5mu`` (raw counts in ``rna``/``atac``, optional cell labels in ``obs['label']``),
``P.embedding.h5ad`` (the joint embedding z in ``obsm['X_embedding']``) and ``P.metacells.h5ad``
(COEM's metacells in ``obs['metacell']``); or one MuData holding all of it. Runs the baselines (``coem.baselines``): SeaC-RNA (SEACells on the RNA
PCA), SeaC-ATAC (on the ATAC LSI) and archetypal analysis on z; times COEM's spectral step on
the same z; then scores every method on diffusion components computed ONCE per modality from
the same RNA PCA / ATAC LSI, and computes the fraction of negative peak-to-gene correlations
on each method's aggregated metacells under COEM's (Pearson, TSS +-100 kb) and SEACells'
(Spearman, gene body +-100 kb) definitions.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.method_comparison.tsv``: one row per method (metacells asked/returned, purity,
  compactness and separation per modality, negative p2g fractions, seconds);
- ``P.runtime.tsv``: spectral vs archetypal on the same z (kernel, clustering and total
  seconds; archetypal / spectral ratios);
- ``P.baseline_assignments.tsv``: every cell's metacell under every method;
- ``P.method_comparison.json``: full metric summaries, p2g summaries, runs and the step record;
- MultiQC: ``P_method_comparison_mqc.json`` (table ``coem_method_comparison``) and
  ``P_runtime_comparison_mqc.json`` (table ``coem_runtime_comparison``);
- ``versions.yml`` (with SEACells, Palantir and scanpy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from coem import baselines, metrics, multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, add_cells_arguments, base_parser, read_counts_and_cells
from coem.errors import CoemInputError
from coem.provenance import software_versions, strict_json

STEP = "baselines"
log = get_logger("coem.baselines")


def build_parser():
    parser = base_parser("SEACells baselines (SeaC-RNA, SeaC-ATAC, archetypal on z) compared with COEM's metacells.")
    parser.add_argument("--input", required=True, help="the QC step's MuData (P.qc.h5mu: raw counts)")
    add_cells_arguments(parser, embedding=True)
    parser.add_argument("--methods", default=",".join(baselines.METHODS),
                        help=f"comma-separated baselines (default: {','.join(baselines.METHODS)})")
    parser.add_argument("--n-metacells", type=int, default=None,
                        help="metacells asked of every baseline (default: the number of COEM metacells)")
    parser.add_argument("--embedding-key", default="X_embedding", help="obsm key of COEM's z")
    parser.add_argument("--metacell-key", default="metacell", help="obs column of COEM's metacell ids")
    parser.add_argument("--label-key", default="label", help="obs column of cell labels for purity (optional)")
    sea = parser.add_argument_group("SEACells")
    sea.add_argument("--kernel", choices=baselines.KERNELS, default="seacells",
                     help="'seacells': SEACells' own kernel code (default); 'coem': the same kernel built by "
                          "coem.graph (much faster, equal to float32 rounding)")
    sea.add_argument("--min-iter", type=int, default=10, help="minimum archetypal iterations (default 10)")
    sea.add_argument("--max-iter", type=int, default=50, help="maximum archetypal iterations (default 50)")
    sea.add_argument("--k", type=int, default=15, help="kernel neighbours, SEACells and spectral (default 15)")
    emb = parser.add_argument_group("per-modality embeddings and diffusion components")
    emb.add_argument("--n-hvg", type=int, default=2000, help="RNA highly variable genes (default 2000)")
    emb.add_argument("--n-pcs", type=int, default=50, help="RNA principal components (default 50, as SEACells)")
    emb.add_argument("--n-lsi", type=int, default=50, help="ATAC LSI components (default 50, as SEACells)")
    emb.add_argument("--knn", type=int, default=30, help="diffusion-map neighbours (Palantir default 30)")
    emb.add_argument("--n-components", type=int, default=10, help="diffusion eigenvectors (default 10)")
    emb.add_argument("--n-eigs", type=int, default=10, help="multiscale space keeps eigenvectors 1..n_eigs-1")
    p2g = parser.add_argument_group("peak-to-gene")
    p2g.add_argument("--p2g-window", type=int, default=100_000, help="bp around TSS / gene body (default 100000)")
    p2g.add_argument("--p2g-null", type=int, default=0,
                     help="matched background peaks per tested peak (default 0: only the sign of r is used here)")
    return parser


# --------------------------------------------------------------------------- input


def parse_methods(text: str, sample: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in baselines.METHODS]
    if unknown or not methods:
        raise CoemInputError(f"--methods: unknown or empty {unknown or text!r}; choose from "
                             f"{', '.join(baselines.METHODS)}", sample=sample)
    return list(dict.fromkeys(methods))


def _check_args(args) -> None:
    if not 1 <= args.min_iter <= args.max_iter:
        raise CoemInputError(f"need 1 <= --min-iter <= --max-iter, got {args.min_iter} and {args.max_iter}",
                             sample=args.sample)
    if args.k < 2:
        raise CoemInputError(f"--k must be at least 2, got {args.k}", sample=args.sample)


def read_inputs(run: StepRun):
    """The MuData, z, COEM's metacell ids and the cell labels (None when absent)."""
    from coem.cli.evaluate import metacell_ids
    from coem.tl import cell_labels

    args = run.args
    mdata = read_counts_and_cells(run, "pass the QC step's P.qc.h5mu with --input", args.metacells,
                                  args.embedding, args.metacell_key, args.embedding_key)
    for mod in ("rna", "atac"):
        if mod not in mdata.mod:
            raise CoemInputError(f"modality '{mod}' is missing (found: {', '.join(mdata.mod) or 'none'}); the "
                                 "comparison needs both RNA and ATAC counts", sample=args.sample, file=args.input)
    if args.embedding_key not in mdata.obsm:
        raise CoemInputError(f"obsm has no '{args.embedding_key}' (COEM's z); run the embed/metacells steps "
                             f"first (obsm keys: {', '.join(mdata.obsm.keys()) or 'none'})",
                             sample=args.sample, file=args.input)
    z = np.asarray(mdata.obsm[args.embedding_key], dtype=np.float64)
    ids = metacell_ids(mdata, args.metacell_key, args.sample, args.input)
    return mdata, z, ids, cell_labels(mdata, args.label_key)


def modality_embeddings(mdata, run: StepRun) -> dict[str, np.ndarray]:
    """RNA PCA and ATAC LSI, computed once: SEACells' inputs and the evaluation spaces."""
    from coem.tl import evaluation_embedding

    args = run.args
    with run.stage("embeddings") as stage:
        pcs, _ = evaluation_embedding(mdata, "rna", n_hvg=args.n_hvg, n_pcs=args.n_pcs, random_state=args.seed)
        lsi, _ = evaluation_embedding(mdata, "atac", n_lsi=args.n_lsi, random_state=args.seed)
        stage.done(f"RNA PCA {pcs.shape} and ATAC LSI {lsi.shape}")
    return {"rna_pca": pcs, "atac_lsi": lsi}


def diffusion_components(embeddings: dict, run: StepRun) -> dict[str, np.ndarray]:
    """Diffusion components once per modality, shared by every method's metrics."""
    args = run.args
    with run.stage("diffusion") as stage:
        components = {
            mod: metrics.diffusion_components(embeddings[key], n_components=args.n_components, knn=args.knn,
                                              n_eigs=args.n_eigs, seed=args.seed)
            for mod, key in (("rna", "rna_pca"), ("atac", "atac_lsi"))
        }
        stage.done("diffusion components (RNA, ATAC)")
    return components


# --------------------------------------------------------------------------- output

COMPARISON_HEADERS = {
    "method": {"title": "Method"},
    "n_metacells": {"title": "Metacells", "description": "metacells returned (SEACells may return fewer than asked)",
                    "format": "{:,.0f}"},
    "purity": {"title": "Purity", "description": "mean fraction of a metacell's cells with its majority label",
               "min": 0, "max": 1, "format": "{:,.3f}"},
    "compactness_rna": {"title": "Compact. RNA", "description": "mean within-metacell variance, RNA diffusion "
                        "components (lower is better)", "format": "{:,.4g}"},
    "compactness_atac": {"title": "Compact. ATAC", "description": "as above, ATAC (lower is better)",
                         "format": "{:,.4g}"},
    "separation_rna": {"title": "Separ. RNA", "description": "mean distance to the nearest other metacell, RNA "
                       "diffusion components (higher is better)", "format": "{:,.4g}"},
    "separation_atac": {"title": "Separ. ATAC", "description": "as above, ATAC (higher is better)",
                        "format": "{:,.4g}"},
    **{f"{metric}_{mod}_median": {"title": f"{'Compact.' if metric == 'compactness' else 'Separ.'} {mod.upper()} "
                                            "(median)", "description": f"median over metacells of {metric}, "
                                            f"{mod.upper()} diffusion components (robust to isolated metacells)",
                                   "format": "{:,.4g}"}
       for metric in ("compactness", "separation") for mod in ("rna", "atac")},
    "nearly_disconnected": {"title": "Disconnected", "description": "modalities whose diffusion graph is nearly "
                            "disconnected (a value above 1e6 or a mean above 100 x the median): their means are "
                            "left blank here, read the medians"},
    "p2g_negative_pearson_tss": {"title": "Neg. p2g (Pearson, TSS)", "description": "fraction of negative "
                                 "peak-to-gene correlations, COEM's definition", "min": 0, "max": 1,
                                 "format": "{:,.3f}"},
    "p2g_negative_spearman_body": {"title": "Neg. p2g (Spearman, body)", "description": "fraction of negative "
                                   "peak-to-gene correlations, SEACells' definition", "min": 0, "max": 1,
                                   "format": "{:,.3f}"},
    "seconds": {"title": "Seconds", "description": "kernel + clustering (COEM: spectral on z, embedding not "
                "included)", "format": "{:,.2f}"},
}
RUNTIME_HEADERS = {
    "algorithm": {"title": "Algorithm"},
    "n_metacells_returned": {"title": "Metacells", "format": "{:,.0f}"},
    "kernel_seconds": {"title": "Kernel s", "format": "{:,.2f}"},
    "cluster_seconds": {"title": "Clustering s", "format": "{:,.2f}"},
    "total_seconds": {"title": "Total s", "format": "{:,.2f}"},
    "cluster_ratio_to_spectral": {"title": "Clustering x spectral", "format": "{:,.1f}"},
    "total_ratio_to_spectral": {"title": "Total x spectral", "format": "{:,.1f}"},
}


def _rows(table: pd.DataFrame, sample: str, index_col: str, headers: dict) -> dict:
    """MultiQC rows ``<sample>_<row>``: the row name is a column too, NaN becomes None."""
    out = {}
    for name, row in table.iterrows():
        values = {index_col: str(name)}
        for col in headers:
            if col in row.index:
                value = row[col]
                values[col] = None if isinstance(value, float) and np.isnan(value) else value
                mod = col.rsplit("_", 1)[-1]
                if col.startswith(("compactness_", "separation_")) and mod in str(row.get("nearly_disconnected", "")):
                    values[col] = None  # SEACells' mean blown up by a nearly disconnected graph
        out[f"{sample}_{name}"] = values
    return out


def write_multiqc(prefix: str, sample: str, comparison: pd.DataFrame, runtime: pd.DataFrame) -> list[Path]:
    return [
        multiqc.table(
            f"{prefix}_method_comparison_mqc.json", "coem_method_comparison", "Method comparison",
            "COEM's metacells next to SEACells on one modality (SeaC-RNA, SeaC-ATAC) and SEACells' archetypal "
            "analysis on COEM's z, all scored on the same diffusion components (the COEM paper's Table 2), with "
            "the fraction of negative peak-to-gene correlations under COEM's and SEACells' definitions.",
            _rows(comparison, sample, "method", COMPARISON_HEADERS), headers=COMPARISON_HEADERS),
        multiqc.table(
            f"{prefix}_runtime_comparison_mqc.json", "coem_runtime_comparison", "Runtime: spectral vs archetypal",
            "Seconds of COEM's spectral clustering and SEACells' archetypal analysis on the same z (kernel and "
            "clustering timed apart), and how many times slower archetypal analysis is.",
            _rows(runtime, sample, "algorithm", RUNTIME_HEADERS), headers=RUNTIME_HEADERS),
    ]


def assignments_table(obs_names, coem_ids, results: dict) -> pd.DataFrame:
    table = pd.DataFrame({"coem": np.asarray(coem_ids, dtype=object)}, index=pd.Index(obs_names, name="cell"))
    for method, res in results.items():
        table[method] = res.names
    return table


def _params(args, methods, n_metacells) -> dict:
    keys = ("input", "embedding_key", "metacell_key", "label_key", "kernel", "min_iter", "max_iter", "k", "n_hvg",
            "n_pcs", "n_lsi", "knn", "n_components", "n_eigs", "p2g_window", "p2g_null")
    return {"methods": methods, "n_metacells": n_metacells, **{key: getattr(args, key) for key in keys}}


def write_outputs(run: StepRun, comparison, runtime, assignments, details, record) -> None:
    prefix, args = run.prefix, run.args
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    comparison.to_csv(f"{prefix}.method_comparison.tsv", sep="\t", na_rep="NA", float_format="%.6g")
    runtime.to_csv(f"{prefix}.runtime.tsv", sep="\t", na_rep="NA", float_format="%.6g")
    assignments.to_csv(f"{prefix}.baseline_assignments.tsv", sep="\t")
    payload = {"sample": args.sample, "methods": details, "record": record}
    Path(f"{prefix}.method_comparison.json").write_text(json.dumps(strict_json(payload), indent=1))
    write_multiqc(prefix, args.sample, comparison, runtime)
    run.write_versions(extra=baselines.seacells_versions())


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    baselines._import_seacells()  # first: a light install (make install) has no SEACells; say how to add it
    _check_args(args)
    methods = parse_methods(args.methods, args.sample)
    run = StepRun(STEP, args, log)
    mdata, z, coem_ids, labels = read_inputs(run)
    n_metacells = args.n_metacells or len(set(coem_ids))

    embeddings = {**modality_embeddings(mdata, run), "z": z}
    components = diffusion_components(embeddings, run)
    if args.kernel == "seacells":
        run.timings["seacells_warm_up_s"] = round(baselines.warm_up_seacells(args.seed), 3)
        log.info("SEACells kernel warm-up (scanpy compilation, not billed) %.2f s", run.timings["seacells_warm_up_s"])
    with run.stage("methods") as stage:
        spectral = baselines.time_spectral(z, n_metacells, seed=args.seed, k=args.k)
        results = baselines.run_baselines(embeddings, methods, n_metacells, seed=args.seed, min_iter=args.min_iter,
                                          max_iter=args.max_iter, k=args.k, kernel=args.kernel)
        stage.done(f"{len(results) + 1} methods, {n_metacells} metacells each")
    with run.stage("compare") as stage:
        comparison, details = baselines.compare(
            {baselines.COEM_METHOD: spectral, **results}, components, labels, mdata,
            assignments={baselines.COEM_METHOD: coem_ids},
            progress=lambda m, s: log.info("%s: scored %s (metrics, peak-to-gene) in %.2f s", args.sample, m, s),
            window=args.p2g_window, n_background=args.p2g_null, seed=args.seed)
        stage.done("every method scored (metrics, peak-to-gene)")
    runtime = baselines.runtime_table(spectral, results.get("archetypal_z"), mdata.n_obs)
    for method, res in results.items():
        run.timings[f"{method}_s"] = round(res.seconds, 3)
    run.timings["spectral_s"] = round(spectral.seconds, 3)

    record = run.record(_params(args, methods, n_metacells),
                        versions=software_versions(baselines.seacells_versions()))
    with run.stage("write") as stage:
        write_outputs(run, comparison, runtime, assignments_table(mdata.obs_names, coem_ids, results), details,
                      record)
        stage.done(f"wrote {run.prefix}.method_comparison.tsv, {run.prefix}.runtime.tsv and reports")
    return 0
