"""``coem_embed.py``: the classical joint embedding (RNA PCA + ATAC LSI) of one QC'd sample.

Input: ``S.qc.h5mu`` (raw counts in ``rna`` and ``atac``). Outputs (``P`` = ``--prefix``):

- ``P.embedding.h5ad``: only what this step adds (``coem.stepfiles``): no matrix, the cells' obs
  (QC metrics, labels), ``obsm['X_embedding']`` (standardised PCA | LSI blocks), ``obsm['X_pca']``,
  ``obsm['X_lsi']`` and the step records under ``uns['coem']`` (QC's, and this step's
  ``embed``: parameters, seed, HVGs, dropped LSI component, depth correlations, timings);
- ``versions.yml``.

The VAE embedding is the separate ``coem_train_vae.py`` step; both write ``X_embedding``.
The file is written under a temporary name and renamed last, so a failed run leaves nothing
that looks like a good output.
"""

from __future__ import annotations

from typing import Sequence

from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser, params_of
from coem.errors import CoemInputError

STEP = "embed"
log = get_logger("coem.embed")


def build_parser():
    parser = base_parser("Joint RNA PCA + ATAC LSI embedding of one multiome sample.")
    parser.add_argument("--input", required=True, help="QC'd MuData (.h5mu) with raw counts in 'rna' and 'atac'")
    parser.add_argument("--method", choices=["pca_lsi"], default="pca_lsi",
                        help="embedding method (the VAE is the coem_train_vae.py step)")
    parser.add_argument("--n-hvg", type=int, default=2000, help="RNA highly variable genes (default 2000)")
    parser.add_argument("--n-pcs", type=int, default=30, help="RNA principal components (default 30)")
    parser.add_argument("--n-lsi", type=int, default=30, help="ATAC LSI components kept (default 30)")
    return parser


def _check_args(args) -> None:
    for name in ("n_hvg", "n_pcs", "n_lsi"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise CoemInputError(f"{flag} must be at least 1, got {getattr(args, name)}", sample=args.sample)


def _record_info(info: dict) -> dict:
    """What of the embedding details goes into the JSON step record (no matrices)."""
    return {"rna": info["rna"], "atac": info["atac"], "block_standardisation": info["block_standardisation"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    run = StepRun(STEP, args, log)
    mdata = run.read("pass the QC step's .h5mu with --input", backed=True)  # counts: row chunks from disk

    from coem.embed import pca_lsi_embedding  # the numerical stack loads after argument checks

    with run.stage("embed") as stage:
        embedding, info = pca_lsi_embedding(mdata, n_hvg=args.n_hvg, n_pcs=args.n_pcs, n_lsi=args.n_lsi,
                                            seed=args.seed)
        rna, atac = info["rna"], info["atac"]
        stage.done(f"embedding {embedding.shape} (RNA PCA {rna['n_pcs']} from {rna['n_hvg']} HVGs, ATAC LSI "
                   f"{atac['n_lsi']}, dropped LSI component {atac['dropped_component'] + 1}, depth r "
                   f"{atac['depth_correlations'][atac['dropped_component']]:.2f})")
    obsm = {"X_embedding": embedding, "X_pca": info["X_pca"], "X_lsi": info["X_lsi"]}
    run.write_cells(mdata, "embedding.h5ad", params_of(args, ("method", "n_hvg", "n_pcs", "n_lsi", "input")),
                    obsm=obsm, info=_record_info(info))
    return 0
