"""``coem_aggregate.py``: raw counts summed per metacell, for RNA and ATAC.

Input: ``P.metacells.h5mu`` (``obs['metacell']``). Outputs (``P`` = ``--prefix``):

- ``P.aggregated.h5mu``: one observation per metacell; ``rna``/``atac`` hold summed raw
  counts with var copied (chrom, tss, strand, start, end); obs ``size`` and, when labels
  exist, ``label`` and ``label_fraction``; the earlier steps' records are kept in
  ``uns['coem']`` and this step's is added;
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
    return parser


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

    start = time.perf_counter()
    params = {"metacell_key": args.metacell_key, "label_key": args.label_key, "input": args.input}
    record_step(agg, STEP, params, seed=args.seed, timings=timings, n_cells=mdata.n_obs, n_metacells=agg.n_obs)
    write_versions_yml("versions.yml", args.process_name or "COEM_AGGREGATE")
    write_mudata_atomically(agg, Path(f"{prefix}.aggregated.h5mu"))
    log.info("wrote %s.aggregated.h5mu in %.2f s", prefix, time.perf_counter() - start)
    return 0
