"""``coem_aggregate.py``: raw counts summed per metacell, for RNA and ATAC.

Inputs: ``P.qc.h5mu`` (raw counts) and ``P.metacells.h5ad`` (``obs['metacell']``; or one MuData
holding both). Outputs (``P`` = ``--prefix``):

- ``P.aggregated.h5mu``: one observation per metacell; ``rna``/``atac`` hold summed raw
  counts with var copied (chrom, tss, strand, start, end); obs ``size`` and, when labels
  exist, ``label`` and ``label_fraction``; the dubious-metacell test (``coem.dubious``):
  ``dubious`` and per modality ``dubious_<mod>``, ``dubious_excess_<mod>``, ``dubious_q_<mod>``;
  with ``--drop-dubious`` the dubious metacells are left out (they then do not reach
  peak-to-gene); the earlier steps' records are kept in ``uns['coem']`` and this step's is added;
- ``P.dubious.tsv``: the dubious-metacell test, one row per metacell (all of them), which the
  evaluate step takes (``--dubious-table``) instead of running the test again;
- ``versions.yml``.
"""

from __future__ import annotations

from typing import Sequence

from coem._logging import get_logger
from coem.cli._common import StepRun, add_cells_arguments, base_parser, params_of, read_counts_and_cells
from coem.errors import CoemInputError

STEP = "aggregate"
log = get_logger("coem.aggregate")


def build_parser():
    parser = base_parser("Sum raw counts per metacell (RNA and ATAC).")
    parser.add_argument("--input", required=True, help="the QC step's MuData (P.qc.h5mu: raw counts)")
    add_cells_arguments(parser)
    parser.add_argument("--metacell-key", default="metacell", help="obs column holding metacell ids")
    parser.add_argument("--label-key", default="label", help="obs column of cell labels (majority per metacell)")
    add_dubious_arguments(parser)
    parser.add_argument("--drop-dubious", action="store_true",
                        help="leave the dubious metacells out of the aggregated MuData (so out of peak-to-gene)")
    return parser


def add_dubious_arguments(parser) -> None:
    """Options of the dubious-metacell test (shared with the evaluate step: same defaults, same flags)."""
    from coem import dubious

    group = parser.add_argument_group("dubious metacells (coem.dubious)")
    group.add_argument("--dubious-permutations", type=int, default=dubious.N_PERMUTATIONS,
                       help=f"permutations of the homogeneity test (default {dubious.N_PERMUTATIONS}; 0 = no test)")
    group.add_argument("--dubious-features", type=int, default=dubious.N_FEATURES,
                       help=f"most variable features per modality tested (default {dubious.N_FEATURES})")
    group.add_argument("--dubious-fdr", type=float, default=dubious.FDR,
                       help=f"Benjamini-Hochberg level over metacells (default {dubious.FDR})")
    group.add_argument("--dubious-min-excess", type=float, default=dubious.MIN_EXCESS,
                       help=f"smallest excess mean squared correlation flagged (default {dubious.MIN_EXCESS})")


def dubious_table(mdata, args):
    """``coem.dubious.dubious_metacells`` with the command's options; None with 0 permutations."""
    from coem import dubious

    if args.dubious_permutations == 0:
        return None
    if args.dubious_permutations < 0 or args.dubious_features < 2 or not 0 < args.dubious_fdr < 1:
        raise CoemInputError(f"--dubious-permutations must be >= 0, --dubious-features >= 2 and --dubious-fdr in "
                             f"(0, 1); got {args.dubious_permutations}, {args.dubious_features}, {args.dubious_fdr}",
                             sample=args.sample)
    return dubious.dubious_metacells(mdata, metacell_key=args.metacell_key, n_features=args.dubious_features,
                                     n_permutations=args.dubious_permutations, fdr=args.dubious_fdr,
                                     min_excess=args.dubious_min_excess, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = StepRun(STEP, args, log)
    mdata = read_counts_and_cells(run, "pass the QC step's P.qc.h5mu with --input", args.metacells,
                                  metacell_key=args.metacell_key, backed=True)  # counts: row chunks from disk

    from coem.aggregate import add_dubious, aggregate_metacells, drop_dubious
    from coem.cli._common import quiet_mudata

    with run.stage("aggregate") as stage, quiet_mudata():
        agg = aggregate_metacells(mdata, key=args.metacell_key, label_key=args.label_key)
        stage.done(f"{mdata.n_obs:,} cells summed into {agg.n_obs:,} metacells")
    if args.drop_dubious and args.dubious_permutations == 0:
        raise CoemInputError("--drop-dubious needs the dubious-metacell test (--dubious-permutations > 0)",
                             sample=args.sample)
    n_dubious = None
    if args.dubious_permutations:
        with run.stage("dubious") as stage:
            table = dubious_table(mdata, args)
            add_dubious(agg, table)
            table.to_csv(f"{run.prefix}.dubious.tsv", sep="\t", index_label="metacell")  # EVALUATE reuses it
            n_dubious = int(table["dubious"].sum())
            stage.done(f"{n_dubious} of {len(table)} metacells dubious")
    n_metacells = agg.n_obs
    if args.drop_dubious:
        with run.stage("drop_dubious") as stage, quiet_mudata():
            agg = drop_dubious(agg)
            stage.done(f"dropped {n_dubious} dubious metacells; {agg.n_obs} go on to peak-to-gene")
    params = params_of(args, ("metacell_key", "label_key", "input", "dubious_permutations", "dubious_features",
                              "dubious_fdr", "dubious_min_excess", "drop_dubious"))
    run.write_h5mu(agg, "aggregated.h5mu", params, n_cells=mdata.n_obs, n_metacells=n_metacells,
                   n_dubious=n_dubious, n_dropped=n_dubious if args.drop_dubious else 0)
    return 0
