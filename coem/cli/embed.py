"""``coem_embed.py``: the classical joint embedding (RNA PCA + ATAC LSI) of one QC'd sample.

Input: ``S.qc.h5mu`` (raw counts in ``rna`` and ``atac``). Outputs (``P`` = ``--prefix``):

- ``P.embed.h5mu``: the input with ``obsm['X_embedding']`` (standardised PCA | LSI blocks),
  ``obsm['X_pca']``, ``obsm['X_lsi']`` and the step record under ``uns['coem']['embed']``
  (parameters, seed, HVGs, dropped LSI component, depth correlations, timings);
- ``versions.yml``.

The VAE embedding is the separate ``coem_train_vae.py`` step; both write ``X_embedding``.
The h5mu is written under a temporary name and renamed last, so a failed run leaves nothing
that looks like a good output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from coem._logging import get_logger
from coem.cli._common import base_parser, quiet_mudata, read_mudata, write_mudata_atomically  # noqa: F401 (re-exported)
from coem.errors import CoemInputError
from coem.provenance import record_step, write_versions_yml

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
    prefix = args.prefix or args.sample
    timings = {}

    start = time.perf_counter()
    mdata = read_mudata(args.input, args.sample, "pass the QC step's .h5mu with --input")
    timings["read_s"] = round(time.perf_counter() - start, 3)
    log.info("read %s: %d cells in %.2f s", args.sample, mdata.n_obs, timings["read_s"])

    from coem.embed import pca_lsi_embedding  # the numerical stack loads after argument checks

    start = time.perf_counter()
    try:
        embedding, info = pca_lsi_embedding(mdata, n_hvg=args.n_hvg, n_pcs=args.n_pcs, n_lsi=args.n_lsi,
                                            seed=args.seed)
    except CoemInputError as err:
        raise err.with_context(sample=args.sample, file=args.input) from err
    timings["embed_s"] = round(time.perf_counter() - start, 3)
    log.info("%s: embedding %s (RNA PCA %d from %d HVGs, ATAC LSI %d, dropped LSI component %d, "
             "depth r %.2f) in %.2f s", args.sample, embedding.shape, info["rna"]["n_pcs"], info["rna"]["n_hvg"],
             info["atac"]["n_lsi"], info["atac"]["dropped_component"] + 1,
             info["atac"]["depth_correlations"][info["atac"]["dropped_component"]], timings["embed_s"])

    start = time.perf_counter()
    mdata.obsm["X_embedding"] = embedding
    mdata.obsm["X_pca"] = info["X_pca"]
    mdata.obsm["X_lsi"] = info["X_lsi"]
    params = {"method": args.method, "n_hvg": args.n_hvg, "n_pcs": args.n_pcs, "n_lsi": args.n_lsi,
              "input": args.input}
    record_step(mdata, STEP, params, seed=args.seed, timings=timings, info=_record_info(info))
    write_versions_yml("versions.yml", args.process_name or "COEM_EMBED")
    write_mudata_atomically(mdata, Path(f"{prefix}.embed.h5mu"))
    log.info("wrote %s.embed.h5mu in %.2f s", prefix, time.perf_counter() - start)
    return 0
