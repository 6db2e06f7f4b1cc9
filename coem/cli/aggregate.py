"""``coem_aggregate.py``: raw counts summed per metacell, for RNA and ATAC.

Input: ``P.metacells.h5mu`` (``obs['metacell']``). Outputs (``P`` = ``--prefix``):

- ``P.aggregated.h5mu``: one observation per metacell; ``rna``/``atac`` hold summed raw
  counts with var copied (chrom, tss, strand, start, end); obs ``size`` and, when labels
  exist, ``label`` and ``label_fraction``; the dubious-metacell test (``coem.dubious``):
  ``dubious`` and per modality ``dubious_<mod>``, ``dubious_excess_<mod>``, ``dubious_q_<mod>``;
  with ``--drop-dubious`` the dubious metacells are left out (they then do not reach
  peak-to-gene); the earlier steps' records are kept in ``uns['coem']`` and this step's is added;
- ``versions.yml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from coem._logging import get_logger
from coem.cli._common import base_parser
from coem.cli._common import read_mudata, write_mudata_atomically
from coem.errors import CoemInputError
from coem.provenance import record_step, write_versions_yml

STEP = "aggregate"
log = get_logger("coem.aggregate")


def build_parser():
    parser = base_parser("Sum raw counts per metacell (RNA and ATAC).")
    parser.add_argument("--input", required=True, help="MuData (.h5mu) with obs['metacell']")
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
    prefix = args.prefix or args.sample
    timings = {}

    start = time.perf_counter()
    mdata = read_mudata(args.input, args.sample, "pass the metacells step's .h5mu with --input")
    timings["read_s"] = round(time.perf_counter() - start, 3)
    log.info("read %s: %d cells in %.2f s", args.sample, mdata.n_obs, timings["read_s"])

    from coem.aggregate import aggregate_metacells
    from coem.cli._common import quiet_mudata

    start = time.perf_counter()
    try:
        with quiet_mudata():
            agg = aggregate_metacells(mdata, key=args.metacell_key, label_key=args.label_key)
    except CoemInputError as err:
        raise err.with_context(sample=args.sample, file=args.input) from err
    timings["aggregate_s"] = round(time.perf_counter() - start, 3)
    log.info("%s: %d cells summed into %d metacells (%s) in %.2f s", args.sample, mdata.n_obs, agg.n_obs,
             ", ".join(f"{m} {a.n_vars} features" for m, a in agg.mod.items()), timings["aggregate_s"])

    from coem.aggregate import add_dubious, drop_dubious

    start = time.perf_counter()
    try:
        table = dubious_table(mdata, args)
    except CoemInputError as err:
        raise err.with_context(sample=args.sample, file=args.input) from err
    n_dubious = None
    if table is not None:
        add_dubious(agg, table)
        n_dubious = int(table["dubious"].sum())
        timings["dubious_s"] = round(time.perf_counter() - start, 3)
        log.info("%s: %d of %d metacells dubious in %.2f s", args.sample, n_dubious, len(table), timings["dubious_s"])
    elif args.drop_dubious:
        raise CoemInputError("--drop-dubious needs the dubious-metacell test (--dubious-permutations > 0)",
                             sample=args.sample)
    n_metacells = agg.n_obs
    if args.drop_dubious:
        try:
            with quiet_mudata():
                agg = drop_dubious(agg)
        except CoemInputError as err:
            raise err.with_context(sample=args.sample, file=args.input) from err
        log.info("%s: dropped %d dubious metacells; %d go on to peak-to-gene", args.sample, n_dubious, agg.n_obs)

    start = time.perf_counter()
    params = {"metacell_key": args.metacell_key, "label_key": args.label_key, "input": args.input,
              "dubious_permutations": args.dubious_permutations, "dubious_features": args.dubious_features,
              "dubious_fdr": args.dubious_fdr, "dubious_min_excess": args.dubious_min_excess,
              "drop_dubious": args.drop_dubious}
    record_step(agg, STEP, params, seed=args.seed, timings=timings, n_cells=mdata.n_obs, n_metacells=n_metacells,
                n_dubious=n_dubious, n_dropped=n_dubious if args.drop_dubious else 0)
    write_versions_yml("versions.yml", args.process_name or "COEM_AGGREGATE")
    write_mudata_atomically(agg, Path(f"{prefix}.aggregated.h5mu"))
    log.info("wrote %s.aggregated.h5mu in %.2f s", prefix, time.perf_counter() - start)
    return 0
