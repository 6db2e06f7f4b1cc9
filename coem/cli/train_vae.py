"""``coem_train_vae.py``: train the COEM joint VAE on one sample and write its embedding.

Outputs (``P`` = ``--prefix``, default the sample id):

- ``P.embedding.h5ad``: only what this step adds (``coem.stepfiles``): no counts, the cells' obs
  (QC metrics, labels), ``obsm['X_embedding']`` = posterior means z (same contract as the pca_lsi
  embedding step) and the step records under ``uns['coem']`` (QC's, and this step's ``embed``:
  ``params.method = 'vae'``, device, torch/CUDA versions, epochs, seconds per epoch, losses, seed);
- ``P.vae.pt``: the trained model, ``coem.model.COEMVAE.save``'s checkpoint (weights, and as
  JSON: config, parameters, history, the genes and peaks used); ``COEMVAE.load`` reads it safely;
- ``P.vae_history.tsv``: one row per epoch (losses and their parts, KL weight, seconds);
- MultiQC custom content: ``P_vae_loss_mqc.json`` (linegraph ``coem_vae_loss``: training and
  validation loss per epoch, written as numeric [epoch, loss] pairs so that MultiQC draws them in
  epoch order) and ``P_vae_summary_mqc.json`` (table ``coem_vae_summary``);
- ``versions.yml``.

The embedding file is written under a temporary name and renamed last, so a failed run never
leaves a file that looks like a good output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from coem import multiqc
from coem._logging import get_logger
from coem.cli._common import StepRun, base_parser, params_of, read_mudata
from coem.stepfiles import cells_file, records_of, write_cells
from coem.errors import CoemInputError
from coem.model.likelihoods import LIKELIHOODS
from coem.model.data import MAX_PEAK_FRACTION, N_PEAKS
from coem.model.train import BATCH_SIZE
from coem.model.vae import INPUT_TRANSFORMS
from coem.provenance import record_json, strict_json

STEP = "embed"
METHOD = "vae"
INTEGER_CHECK_VALUES = 1_000_000
# '--backed auto' streams batches from the file when the two CSR matrices would take more than
# this in memory (8 bytes per stored entry: float32 value + int32 index). 4 GiB is about 170k
# cells of the simulated 2k-gene + 20k-peak data; the in-memory path is faster per batch.
BACKED_AUTO_BYTES = 4 * 1024**3
BYTES_PER_ENTRY = 8

log = get_logger("coem.train_vae")


def build_parser():
    parser = base_parser("Train the COEM joint VAE (scMVP-style) and write the joint embedding z.")
    parser.add_argument("--input", required=True, help="QC'd MuData (P.qc.h5mu) with 'rna' and 'atac'")
    model = parser.add_argument_group("model")
    model.add_argument("--n-latent", type=int, default=10, help="latent dimensions (default: 10, scMVP)")
    model.add_argument("--n-hidden", type=int, default=128, help="hidden units per channel (default: 128)")
    model.add_argument("--n-centroids", type=int, default=20, help="GMM prior components (default: 20, scMVP)")
    model.add_argument("--rna-likelihood", choices=sorted(LIKELIHOODS), default="nb", help="default: nb (scMVP)")
    model.add_argument("--atac-likelihood", choices=sorted(LIKELIHOODS), default="zip",
                       help="default: zip on binarised peaks (scMVP)")
    model.add_argument("--rna-weight", type=float, default=3.0,
                       help="RNA likelihood weight (default: 3.0, scMVP; see coem/model/vae.py)")
    model.add_argument("--atac-weight", type=float, default=1.0,
                       help="ATAC likelihood weight (default: 1.0; scMVP: 0.1, which loses ATAC-only states)")
    model.add_argument("--dropout-rate", type=float, default=0.1, help="encoder dropout (default: 0.1)")
    model.add_argument("--input-transform", choices=INPUT_TRANSFORMS, default="log1p_norm",
                       help="encoder input: log1p of counts per 10k (log1p_norm, default: z does not follow "
                            "sequencing depth) or of raw counts (log1p, scMVP)")
    data = parser.add_argument_group("features")
    data.add_argument("--n-genes", type=int, default=2000, help="top-variance genes kept (0 = all; default 2000)")
    data.add_argument("--max-peak-fraction", type=float, default=MAX_PEAK_FRACTION,
                      help=f"drop peaks open in more than this fraction of cells (default: {MAX_PEAK_FRACTION}, "
                           "scMVP's; raise it for dense ATAC where state markers are open in more cells)")
    data.add_argument("--n-peaks", type=int, default=N_PEAKS,
                      help="keep only the N most often open of those peaks (0 = all; default 10000)")
    data.add_argument("--no-binarize-atac", dest="binarize_atac", action="store_false",
                      help="model raw ATAC counts instead of 0/1 (not with --atac-likelihood bernoulli)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=100, help="maximum epochs (default: 100)")
    train.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help="minibatch size (default: 64, scMVP; larger batches are faster per cell but take "
                            "fewer steps per epoch)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (0 = off)")
    train.add_argument("--warmup-epochs", type=int, default=10, help="linear KL warm-up epochs (default: 10)")
    train.add_argument("--val-fraction", type=float, default=0.1, help="validation cells (default: 0.1)")
    train.add_argument("--gmm-init", choices=("kmeans", "random"), default="kmeans",
                       help="GMM prior init after epoch 1 (default: kmeans)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto = CUDA when available (cuda without a GPU falls back to CPU)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    train.add_argument("--cells-per-epoch", type=int, default=None,
                       help="train each epoch on this many randomly drawn cells (default: all; for millions of cells)")
    train.add_argument("--backed", choices=("auto", "on", "off"), default="auto",
                       help="read minibatches from the file instead of memory: 'auto' (default) when the "
                            "count matrices would take more than 4 GiB in memory")
    train.add_argument("--log-every", type=int, default=1, help="log a line every N epochs")
    return parser


def _check_args(args) -> None:
    """Option combinations that cannot work, named before any data is read."""
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--n-latent": args.n_latent,
                "--n-hidden": args.n_hidden, "--n-centroids": args.n_centroids,
                "--cells-per-epoch": 1 if args.cells_per_epoch is None else args.cells_per_epoch}
    for flag, value in positive.items():
        if value < 1:
            raise CoemInputError(f"{flag} must be at least 1, got {value}", sample=args.sample)
    if args.n_peaks < 0:
        raise CoemInputError(f"--n-peaks must be 0 (all) or positive, got {args.n_peaks}", sample=args.sample)
    if not 0 < args.max_peak_fraction <= 1:
        raise CoemInputError(f"--max-peak-fraction must be in (0, 1], got {args.max_peak_fraction}", sample=args.sample)
    if not 0 <= args.val_fraction < 1:
        raise CoemInputError(f"--val-fraction must be in [0, 1), got {args.val_fraction}", sample=args.sample)
    if args.atac_likelihood == "bernoulli" and not args.binarize_atac:
        raise CoemInputError("--atac-likelihood bernoulli needs binarised peaks; drop --no-binarize-atac",
                             sample=args.sample)
    if args.rna_likelihood == "bernoulli":
        raise CoemInputError("--rna-likelihood bernoulli is for 0/1 data; use nb, zinb, poisson or zip",
                             sample=args.sample)


class InMemoryInput:
    """The whole MuData in memory; RNA / ATAC rows in ``mdata.obs_names`` order."""

    backed = False

    def __init__(self, path: str, sample: str):
        self.mdata = read_mudata(path, sample, "pass the QC step's .qc.h5mu")
        matrices = []
        for mod in ("rna", "atac"):
            if mod not in self.mdata.mod:
                raise CoemInputError(f"modality '{mod}' is missing; the VAE needs 'rna' and 'atac'",
                                     sample=sample, file=path)
            adata = self.mdata.mod[mod]
            if not adata.obs_names.equals(self.mdata.obs_names):
                adata = adata[self.mdata.obs_names]
            matrices.append(adata.X)
        self.rna, self.atac = matrices
        self.n_obs = self.mdata.n_obs
        self.gene_names = self.mdata.mod["rna"].var_names
        self.peak_names = self.mdata.mod["atac"].var_names
        _check_integers(self.rna, "RNA", sample, path)
        self.atac_values = self.atac.data if sp.issparse(self.atac) else np.asarray(self.atac)

    def cells(self) -> tuple:
        """(obs: QC metrics and labels, step records so far) for the embedding file."""
        return self.mdata.obs, records_of(self.mdata)


class BackedInput:
    """RNA / ATAC rows streamed from the file (CSR groups ``mod/<mod>/X``); only the row
    pointers, names and one batch are in memory."""

    backed = True

    def __init__(self, path: str, sample: str):
        from coem import h5mu_backed
        from coem.model.data import H5CSRSource

        self.path = path
        cells = h5mu_backed.obs_names(path)
        for mod in ("rna", "atac"):
            if not h5mu_backed.obs_names(path, mod).equals(cells):
                raise CoemInputError(f"'{mod}' cells are not the MuData's cells in the same order; the disk-backed "
                                     "VAE needs aligned modalities (use --backed off)", sample=sample, file=path)
        self.n_obs = cells.size
        self.rna, self.atac = H5CSRSource(path, "mod/rna/X"), H5CSRSource(path, "mod/atac/X")
        self.gene_names = h5mu_backed.var_names(path, "rna")
        self.peak_names = h5mu_backed.var_names(path, "atac")
        _check_integers(h5mu_backed.first_values(path, "mod/rna/X", INTEGER_CHECK_VALUES), "RNA", sample, path)
        self.atac_values = h5mu_backed.first_values(path, "mod/atac/X", INTEGER_CHECK_VALUES)

    def cells(self) -> tuple:
        """(obs, step records so far) read from the file without its matrices."""
        from coem import h5mu_backed

        self.rna.close()
        self.atac.close()
        return h5mu_backed.read_obs(self.path), h5mu_backed.read_records(self.path)


def use_backed(path: str, mode: str, sample: str) -> bool:
    """Whether to stream from the file: always ('on'), never ('off') or for large inputs ('auto')."""
    if mode == "off":
        return False
    if not Path(path).is_file():
        raise CoemInputError("input file not found", sample=sample, file=path)
    from coem import h5mu_backed

    try:
        nnz = [h5mu_backed.csr_nnz(path, f"mod/{mod}/X") for mod in ("rna", "atac")]
    except OSError as err:
        raise CoemInputError(f"cannot read as MuData ({err})", sample=sample, file=path) from err
    if None in nnz:
        if mode == "on":
            raise CoemInputError("--backed on needs 'rna' and 'atac' stored as CSR matrices in the h5mu",
                                 sample=sample, file=path)
        return False
    return mode == "on" or sum(nnz) * BYTES_PER_ENTRY > BACKED_AUTO_BYTES


def read_input(path: str, mode: str, sample: str):
    """An :class:`InMemoryInput` or a :class:`BackedInput` (see ``--backed``)."""
    return BackedInput(path, sample) if use_backed(path, mode, sample) else InMemoryInput(path, sample)


def _check_integers(matrix, what: str, sample: str, path: str) -> None:
    """Count likelihoods need raw counts: non-integers mean normalised data was given."""
    from coem.readers import looks_integer

    if not looks_integer(matrix, INTEGER_CHECK_VALUES):
        raise CoemInputError(
            f"{what} values are not integers (normalised data?); the VAE needs raw counts in .X",
            sample=sample, file=path,
        )


def write_multiqc(prefix: str, sample: str, history: dict, summary: dict) -> list[Path]:
    """Loss curves (train and validation per epoch) and one summary table row."""
    series = {f"{sample} train": {e["epoch"]: e["train_loss"] for e in history["epochs"]}}
    val = {e["epoch"]: e["val_loss"] for e in history["epochs"] if math.isfinite(e["val_loss"])}
    if val:
        series[f"{sample} validation"] = val
    paths = [multiqc.linegraph(
        f"{prefix}_vae_loss_mqc.json", "coem_vae_loss", "VAE: training loss",
        "Joint VAE loss per cell and epoch: weighted negative log-likelihood of RNA and ATAC plus the "
        "KL divergence to the GMM prior at full weight (the optimised objective uses the warm-up "
        "KL weight). The kept model is the epoch with the lowest validation loss.",
        series, pconfig={"xlab": "epoch", "ylab": "loss per cell"}, pairs=True,
    )]
    headers = {
        "device": {"title": "Device"},
        "torch": {"title": "torch"},
        "cuda": {"title": "CUDA", "description": "CUDA version torch was built with"},
        "epochs_run": {"title": "Epochs", "format": "{:,.0f}"},
        "best_epoch": {"title": "Best epoch", "format": "{:,.0f}"},
        "seconds_per_epoch": {"title": "s / epoch", "format": "{:,.2f}"},
        "final_train_loss": {"title": "Train loss", "description": "last epoch", "format": "{:,.2f}"},
        "final_val_loss": {"title": "Validation loss", "description": "last epoch", "format": "{:,.2f}"},
        "best_val_loss": {"title": "Best val. loss", "description": "kept model", "format": "{:,.2f}"},
        "seed": {"title": "Seed", "format": "{:,.0f}"},
    }
    paths.append(multiqc.table(
        f"{prefix}_vae_summary_mqc.json", "coem_vae_summary", "VAE: training summary",
        "Where and how long the joint VAE trained, and its losses.",
        {sample: {key: strict_json(summary[key]) for key in headers}}, headers=headers,
    ))
    return paths


def _summary(history: dict, seed: int) -> dict:
    import torch

    epochs = history["epochs"]
    last = epochs[-1]
    best = epochs[history["best_epoch"] - 1] if history["best_epoch"] else last
    return {
        "device": history["device"],
        "torch": torch.__version__,
        "cuda": (torch.version.cuda or "none") + ("" if history["device"].startswith("cuda") else " (not used)"),
        "cuda_used": history["device"].startswith("cuda"),
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "stopped_early": history["stopped_early"],
        "seconds_per_epoch": round(history["seconds_per_epoch"], 4),
        "seconds_total": round(history["seconds"], 3),
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "best_train_loss": best["train_loss"],
        "best_val_loss": best["val_loss"],
        "gmm_init": history["gmm_init"],
        "cells_per_epoch": history["cells_per_epoch"],
        "seed": seed,
    }


# Options passed on to coem.model.COEMVAE under the same names.
MODEL_KEYS = ("n_latent", "n_hidden", "n_centroids", "rna_likelihood", "atac_likelihood", "rna_weight",
              "atac_weight", "dropout_rate", "input_transform", "n_genes", "max_peak_fraction", "n_peaks",
              "binarize_atac", "epochs", "batch_size", "lr", "patience", "warmup_epochs", "val_fraction", "gmm_init",
              "device", "threads", "cells_per_epoch")


def _params(args) -> dict:
    return {"method": METHOD, "input": args.input, **{key: getattr(args, key) for key in MODEL_KEYS + ("backed",)}}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    run = StepRun(STEP, args, log, process="COEM_TRAIN_VAE")
    with run.stage("read") as stage:
        source = read_input(args.input, args.backed, args.sample)
        if not args.binarize_atac:
            _check_integers(source.atac_values, "ATAC", args.sample, args.input)
        stage.done(f"read {source.n_obs:,} cells, {source.gene_names.size:,} genes, {source.peak_names.size:,} "
                   f"peaks ({'batches streamed from the file' if source.backed else 'in memory'})")

    from coem.model import COEMVAE

    vae = COEMVAE(**params_of(args, MODEL_KEYS), random_state=args.seed, log_every=args.log_every)
    with run.stage("vae") as stage:  # coem.model logs a line per epoch
        z = vae.fit_sources(source.rna, source.atac, source.gene_names, source.peak_names)
        stage.done(f"VAE trained on {vae.n_train_cells_:,} cells, z {z.shape}")
    run.timings.update(vae.timings_)
    history = vae.history_

    summary = _summary(history, args.seed)
    record = run.record(_params(args), n_genes_used=len(vae.genes_), n_peaks_used=len(vae.peaks_),
                        n_train_cells=vae.n_train_cells_, n_val_cells=vae.n_val_cells_, backed=source.backed,
                        **{k: strict_json(v) for k, v in summary.items() if k != "seed"})
    with run.stage("write") as stage:
        _write_outputs(run, source, z, record_json(record), vae, history, summary)
        stage.done(f"wrote {run.prefix}.embedding.h5ad, {run.prefix}.vae.pt and reports")
    return 0


def _write_outputs(run: StepRun, source, z, record, vae, history, summary) -> None:
    """Everything but the embedding first; the embedding goes to a temporary name, renamed last.
    Only what this step adds is written: z per cell, the model and its reports (not the counts)."""
    import pandas as pd

    prefix = run.prefix
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    vae.save(f"{prefix}.vae.pt")
    pd.DataFrame(history["epochs"]).to_csv(f"{prefix}.vae_history.tsv", sep="\t", index=False)
    write_multiqc(prefix, run.sample, history, summary)
    run.write_versions()
    obs, records = source.cells()
    write_cells(cells_file(obs, {"X_embedding": z}, {**records, STEP: record}), f"{prefix}.embedding.h5ad")
