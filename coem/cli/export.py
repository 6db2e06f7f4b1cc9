"""``coem_export.py``: the published cell-level MuData of one sample, assembled once at the end.

Inputs: the QC step's ``P.qc.h5mu`` (raw counts, QC metrics, labels), the embedding step's
``P.embedding.h5ad`` (``obsm['X_embedding']``) and the metacell step's ``P.metacells.h5ad``
(``obs['metacell']``). Output (``P`` = ``--prefix``):

- ``P.metacells.h5mu``: a copy of the QC output with ``obs['metacell']``, ``obsm['X_embedding']``
  and every step's record under ``uns['coem']``. The counts are copied block by block with gzip
  compression (``coem.stepfiles.compressed_copy``: about 5x smaller than the QC output), never
  read into memory whole, and the additions written into the copy (``add_to_h5mu``);
- ``versions.yml``.

It is the only step after QC that writes the counts again, and only because users want one
file with everything per cell (docs/output.md, "Data flow").
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser
from coem.errors import CoemInputError

STEP = "export"
log = get_logger("coem.export")


def build_parser():
    parser = base_parser("Assemble the published cell-level MuData: QC counts + embedding + metacells.")
    parser.add_argument("--input", required=True, help="the QC step's P.qc.h5mu")
    parser.add_argument("--embedding", required=True, help="the embedding step's P.embedding.h5ad")
    parser.add_argument("--metacells", required=True, help="the metacell step's P.metacells.h5ad")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = StepRun(STEP, args, log)

    from coem import h5mu_backed
    from coem.provenance import record_json
    from coem.stepfiles import add_to_h5mu, atomic_output, check_same_cells, compressed_copy, read_cells

    with run.stage("read") as stage:
        if not Path(args.input).is_file():
            raise CoemInputError("input file not found; pass the QC step's P.qc.h5mu")
        try:
            cells = h5mu_backed.obs_names(args.input)
        except Exception as err:  # h5py raises many types for a corrupt file
            raise CoemInputError(f"cannot read as MuData ({type(err).__name__}: {err})") from err
        embedding = read_cells(args.embedding, args.sample, "pass the embedding step's P.embedding.h5ad",
                               needs=("X_embedding",))
        metacells = read_cells(args.metacells, args.sample, "pass the metacell step's P.metacells.h5ad",
                               needs=("metacell",))
        for other, path in ((embedding, args.embedding), (metacells, args.metacells)):
            check_same_cells(other, cells, args.sample, f"{path} + {args.input}")
        stage.done(f"{len(cells):,} cells: embedding {embedding.obsm['X_embedding'].shape}, "
                   f"{metacells.obs['metacell'].nunique():,} metacells")
    final = Path(f"{run.prefix}.metacells.h5mu")
    records = {**embedding.uns.get("coem", {}), **metacells.uns.get("coem", {})}
    with run.stage("write") as stage:
        with atomic_output(final) as partial:
            compressed_copy(args.input, partial)
            records[STEP] = record_json(run.record({"input": args.input, "embedding": args.embedding,
                                                    "metacells": args.metacells}))
            add_to_h5mu(partial, obs={"metacell": metacells.obs["metacell"].astype(str).to_numpy()},
                        obsm={"X_embedding": embedding.obsm["X_embedding"]}, records=records)
        run.write_versions()
        stage.done(f"wrote {final} ({final.stat().st_size / 1e6:,.1f} MB)")
    return 0

