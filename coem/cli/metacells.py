"""``coem_metacells.py``: spectral metacells on the embedding of one sample.

Input: ``P.embedding.h5ad`` (``obsm['X_embedding']`` from the embed or VAE step; a MuData with
the embedding in obsm works too). Outputs (``P`` = ``--prefix``):

- ``P.metacells.h5ad``: only what this step adds (``coem.stepfiles``): the cells' obs with
  ``obs['metacell']`` (``MC00001`` ...), no matrix, and the step records under ``uns['coem']``;
- ``P.metacell_sizes.tsv``: metacell, size (and label, label_fraction when labels exist);
- MultiQC: ``P_metacells_summary_mqc.json`` (table ``coem_metacells_summary``: cells,
  metacells, min/median/max size, singletons, seconds) and ``P_metacell_sizes_mqc.json``
  (boxplot ``coem_metacell_sizes`` of metacell sizes) and ``P_cells_2d_metacell_mqc.json`` /
  ``P_cells_2d_label_mqc.json`` (scatter ``coem_cells_2d_metacell_<sample>`` /
  ``coem_cells_2d_label_<sample>``: a t-SNE of the embedding, ``coem.layout``, coloured by
  metacell and by label; up to 1,500 cells; ``--no-cells-2d`` skips it);
- ``versions.yml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from coem import multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser, params_of
from coem.errors import CoemInputError
from coem.metacells import COORDINATES, DIFFUSION_STEPS, EXACT_MAX_CELLS, MIN_SIZE_FRACTION

STEP = "metacells"
log = get_logger("coem.metacells")

SUMMARY_HEADERS = {
    "cells": {"title": "Cells", "format": "{:,.0f}"},
    "metacells": {"title": "Metacells", "format": "{:,.0f}"},
    "min_size": {"title": "Min size", "description": "cells in the smallest metacell", "format": "{:,.0f}"},
    "median_size": {"title": "Median size", "description": "median cells per metacell", "format": "{:,.1f}"},
    "max_size": {"title": "Max size", "description": "cells in the largest metacell", "format": "{:,.0f}"},
    "singletons": {"title": "Singletons", "description": "metacells of a single cell", "format": "{:,.0f}"},
    "seconds": {"title": "Seconds", "description": "time of the metacell computation", "format": "{:,.1f}"},
}


PARAM_KEYS = ("n_metacells", "cells_per_metacell", "k", "exact_max_cells", "part_size", "neighbours", "coordinates",
              "diffusion_steps", "min_size_fraction", "embedding_key", "input")


def build_parser():
    parser = base_parser("Spectral metacells (exactly the requested number) on a sample's embedding.")
    parser.add_argument("--input", required=True, help="embedded MuData (.h5mu) with obsm['X_embedding']")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--cells-per-metacell", type=float, default=75,
                       help="metacells = round(cells / this) (default 75, SEACells' rule of thumb)")
    count.add_argument("--n-metacells", type=int, default=None, help="exact number of metacells")
    parser.add_argument("--k", type=int, default=15, help="nearest neighbours of the kernel graph (default 15)")
    parser.add_argument("--exact-max-cells", type=int, default=EXACT_MAX_CELLS,
                        help="up to this many cells one kernel over all cells; above it the partitioned path "
                             f"(default {EXACT_MAX_CELLS})")
    parser.add_argument("--part-size", type=int, default=None,
                        help="cells per part of the partitioned path (default: about 13 metacells, at least 1000)")
    parser.add_argument("--neighbours", choices=("parts", "global"), default="parts",
                        help="partitioned path: search neighbours across part borders in the next parts ('parts', "
                             "default) or over all cells with pynndescent ('global', slower)")
    parser.add_argument("--coordinates", choices=COORDINATES, default="diffusion",
                        help="k-means on the kernel graph's multiscale diffusion coordinates (default) or on "
                             "row-normalised eigenvectors (njw, the earlier design: even metacell sizes)")
    parser.add_argument("--diffusion-steps", type=int, default=DIFFUSION_STEPS,
                        help=f"random-walk steps summed in the diffusion coordinates (default {DIFFUSION_STEPS})")
    parser.add_argument("--min-size-fraction", type=float, default=MIN_SIZE_FRACTION,
                        help="merge metacells under this fraction of the mean size into a neighbour "
                             "(default 1/3; 0 = never)")
    parser.add_argument("--embedding-key", default="X_embedding", help="obsm key of the embedding")
    parser.add_argument("--label-key", default="label", help="obs column of cell labels (for the sizes table)")
    parser.add_argument("--no-cells-2d", dest="cells_2d", action="store_false",
                        help="skip the report's 2-D picture of the cells (t-SNE of the embedding)")
    return parser


def section_suffix(sample: str) -> str:
    """The sample id as it goes into a section id (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", sample)


def write_cells_2d(prefix: str, sample: str, X, names, labels, seed: int) -> list[Path]:
    """Scatter sections of a t-SNE of the embedding: coloured by metacell, and by label when present."""
    from coem.layout import cells_2d, colours

    idx, xy = cells_2d(X, seed=seed)
    suffix = section_suffix(sample)
    paths = []
    groups = {"metacell": np.asarray(names, dtype=object)[idx]}
    if labels is not None and labels.notna().any():
        groups["label"] = np.where(labels.isna(), "unlabelled", labels.astype(str)).astype(object)[idx]
    for what, values in groups.items():
        colour, _ = colours(values)
        points: dict[str, list] = {}
        for (x, y), value, c in zip(xy, values, colour):
            points.setdefault(str(value), []).append({"x": round(float(x), 3), "y": round(float(y), 3), "color": c})
        good = ("each metacell's cells sit together in one patch (a metacell spread over the picture or across two "
                "islands is suspect)" if what == "metacell" else
                "each island holds one label, and metacells (in the picture by metacell) do not straddle labels")
        paths.append(multiqc.scatter(
            f"{prefix}_cells_2d_{what}_mqc.json", f"coem_cells_2d_{what}_{suffix}", f"Cells by {what}: {sample}",
            f"t-SNE of the joint embedding of {len(idx):,} cells of {sample}, coloured by {what}. Good: {good}.",
            points, pconfig={"xlab": "t-SNE 1", "ylab": "t-SNE 2", "marker_size": 4}))
    return paths


def _embedding(mdata, key: str, sample: str, path: str) -> np.ndarray:
    if key not in mdata.obsm:
        keys = ", ".join(mdata.obsm.keys()) or "none"
        raise CoemInputError(f"obsm has no '{key}' (the embedding); run the embed step first "
                             f"(obsm keys: {keys})", sample=sample, file=path)
    return np.asarray(mdata.obsm[key])


def _check_args(args) -> None:
    if args.k < 2:
        raise CoemInputError(f"--k must be at least 2, got {args.k}", sample=args.sample)
    if args.exact_max_cells < 1:
        raise CoemInputError(f"--exact-max-cells must be at least 1, got {args.exact_max_cells}", sample=args.sample)
    if args.diffusion_steps < 1:
        raise CoemInputError(f"--diffusion-steps must be at least 1, got {args.diffusion_steps}", sample=args.sample)
    if not 0 <= args.min_size_fraction < 1:
        raise CoemInputError(f"--min-size-fraction must be in [0, 1), got {args.min_size_fraction}",
                             sample=args.sample)
    if args.part_size is not None and args.part_size < 2:
        raise CoemInputError(f"--part-size must be at least 2, got {args.part_size}", sample=args.sample)
    if args.n_metacells is None and args.cells_per_metacell <= 0:
        raise CoemInputError(f"--cells-per-metacell must be positive, got {args.cells_per_metacell}",
                             sample=args.sample)


def summary_row(summary: dict, seconds: float) -> dict:
    """The sample's row of the ``coem_metacells_summary`` table."""
    return {
        "cells": summary["n_cells"], "metacells": summary["n_metacells"], "min_size": summary["min_size"],
        "median_size": summary["median_size"], "max_size": summary["max_size"],
        "singletons": summary["n_singletons"], "seconds": round(seconds, 2),
    }


def write_multiqc(prefix: str, sample: str, row: dict, sizes) -> list[Path]:
    return [
        multiqc.table(f"{prefix}_metacells_summary_mqc.json", "coem_metacells_summary", "Metacells",
                      "Spectral metacells per sample: exactly the requested number, their sizes "
                      "(cells per metacell) and the time taken.", {sample: row}, headers=SUMMARY_HEADERS),
        multiqc.boxplot(f"{prefix}_metacell_sizes_mqc.json", "coem_metacell_sizes", "Metacell sizes",
                        "Distribution of metacell sizes (cells per metacell) per sample.",
                        {sample: [int(s) for s in sizes]}),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    run = StepRun(STEP, args, log)
    mdata = read_embedding(run)
    X = _embedding(mdata, args.embedding_key, args.sample, args.input)

    from coem.aggregate import metacell_table
    from coem.metacells import SpectralMetacells

    with run.stage("metacells") as stage:
        model = SpectralMetacells(n_metacells=args.n_metacells, cells_per_metacell=args.cells_per_metacell,
                                  k=args.k, random_state=args.seed, exact_max_cells=args.exact_max_cells,
                                  part_size=args.part_size, neighbours=args.neighbours,
                                  diffusion_steps=args.diffusion_steps, min_size_fraction=args.min_size_fraction,
                                  coordinates=args.coordinates).fit(X)
        stage.done(f"{model.summary_['n_metacells']:,} metacells of {X.shape[0]:,} cells ({model.strategy_})")

    with run.stage("reports"):
        mdata.obs["metacell"] = model.names_
        labels = mdata.obs[args.label_key] if args.label_key in mdata.obs else None
        table = metacell_table(mdata.obs["metacell"], labels)
        table.to_csv(f"{run.prefix}.metacell_sizes.tsv", sep="\t", index_label="metacell")
        write_multiqc(run.prefix, args.sample, summary_row(model.summary_, run.timings["metacells_s"]),
                      table["size"].to_numpy())
    if args.cells_2d:
        with run.stage("cells_2d"):
            write_cells_2d(run.prefix, args.sample, X, model.names_, labels, args.seed)
    extra = {"n_parts": model.n_parts_, "part_size": model.part_size_, "n_moved": model.n_moved_} \
        if model.strategy_ == "partitioned" else {}
    run.timings.update(model.timings_)
    run.write_cells(mdata, "metacells.h5ad", params_of(args, PARAM_KEYS), summary=model.summary_,
                    strategy=model.strategy_, **extra)
    return 0


def read_embedding(run: StepRun):
    """The embedding step's ``P.embedding.h5ad`` (or any MuData/AnnData with the embedding in obsm)."""
    hint = "pass the embedding step's P.embedding.h5ad with --input"
    if str(run.input_file).endswith(".h5mu"):
        return run.read(hint)
    from coem.stepfiles import read_cells

    with run.stage("read") as stage:
        cells = read_cells(run.input_file, run.sample, hint)
        stage.done(f"read {run.input_file}: {cells.n_obs:,} cells")
    return cells
