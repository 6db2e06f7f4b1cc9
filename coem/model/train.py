"""Training loop and embedding for :class:`coem.model.vae.JointVAE`.

Adam (lr 1e-3, as scMVP), linear KL warm-up, early stopping on the validation loss with the
best checkpoint restored at the end. Batch size defaults to 256 rather than scMVP's 64: four
times fewer optimiser steps per epoch (epochs run several times faster on CPU and GPU alike,
which matters at a million cells) while Adam at lr 1e-3 still converges in a comparable number
of epochs; pass ``batch_size=64`` to follow scMVP exactly.

GMM prior initialisation: the prior means start random (seeded, at model construction). With
``gmm_init='kmeans'`` (default) they are re-set after the first epoch by k-means on the
posterior means of up to 50,000 training cells (weights = cluster fractions, variances =
within-cluster variances), as scMVP/SCALE initialise their GMM from early embeddings; the
first epoch runs with KL weight 0 under the warm-up, so the random prior does no harm first.

Reproducibility: everything random (weights, dropout, z samples, shuffling, k-means) derives
from ``seed`` inside a forked torch RNG, so the caller's global RNG state is untouched; on CPU
with the same ``threads`` the same seed gives identical results.
"""

from __future__ import annotations

import copy
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from coem._logging import get_logger
from coem.model.data import MultiomeData
from coem.model.vae import JointVAE, kl_warmup_weight

LOG = get_logger("coem.model.train")
GMM_INIT_MAX_CELLS = 50_000
# scMVP's batch size: at 2,274 sci-CAR cells, 64-cell batches converged where 256 stopped short
# (docs/results.md). The CLI and the pipeline use this default too.
BATCH_SIZE = 64


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA falls back to CPU with a warning."""
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("CUDA requested but not available; training on CPU", RuntimeWarning, stacklevel=2)
        LOG.warning("CUDA requested but not available; training on CPU")
        return torch.device("cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    """Human-readable device, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device.index or 0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextmanager
def seeded_torch(seed: int, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Seed torch in a forked RNG, optionally fix the thread count and, on CUDA, prefer
    deterministic kernels; restore all of it on exit.

    On CPU the kernels this model uses (dense matmul, LayerNorm, attention, softmax, lgamma) are
    already deterministic for a fixed thread count, and ``use_deterministic_algorithms`` costs
    an import of torch's compiler stack (seconds), so it is only switched on for CUDA.
    """
    old_threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    if cuda:
        old_det = torch.are_deterministic_algorithms_enabled()
        old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if cuda else []
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if cuda:
            torch.use_deterministic_algorithms(True, warn_only=True)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(old_threads)
        if cuda:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed(
    model: JointVAE,
    data: MultiomeData,
    batch_size: int = 1024,
    rows: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Posterior means z for ``rows`` (default: every cell, in order) as float32 (cells x n_latent)."""
    dev = _model_device(model) if device is None else resolve_device(str(device))
    model.to(dev)
    was_training = model.training
    model.eval()
    rows = np.arange(data.n_obs) if rows is None else np.asarray(rows)
    out = np.empty((rows.size, model.config["n_latent"]), dtype=np.float32)
    start = 0
    for x_rna, x_atac in data.batches(rows, batch_size):
        mu, _ = model.encode(x_rna.to(dev), x_atac.to(dev))
        out[start : start + mu.shape[0]] = mu.float().cpu().numpy()
        start += mu.shape[0]
    model.train(was_training)
    return out


def init_prior_kmeans(model: JointVAE, data: MultiomeData, rows: np.ndarray, seed: int,
                      max_cells: int = GMM_INIT_MAX_CELLS) -> bool:
    """Fit k-means (k = n_centroids) on posterior means and copy it into the GMM prior.
    Returns False (prior left as is) when there are fewer cells than components."""
    from sklearn.cluster import KMeans

    k = model.config["n_centroids"]
    rows = np.asarray(rows)
    if rows.size > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    if rows.size < k:
        LOG.warning("GMM prior: %d cells < %d components, keeping the random initialisation", rows.size, k)
        return False
    z = embed(model, data, rows=rows)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(z)
    overall = z.var(axis=0) + 1e-3
    means = np.stack([z[labels == c].mean(axis=0) for c in range(k)])
    variances = np.stack([z[labels == c].var(axis=0) + 1e-3 if (labels == c).sum() > 1 else overall for c in range(k)])
    weights = np.bincount(labels, minlength=k) / labels.size
    model.set_prior(torch.from_numpy(means), torch.from_numpy(variances), torch.from_numpy(weights))
    return True


def _prefetched(iterator: Iterator, enabled: bool) -> Iterator:
    """Build the next dense batch in a background thread while the GPU works on this one.
    Off on CPU, where the thread would only compete with torch for the same cores."""
    if not enabled:
        yield from iterator
        return
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, done)
        while True:
            item = future.result()
            if item is done:
                return
            future = pool.submit(next, iterator, done)
            yield item


def _run_epoch(model, data, rows, batch_size, device, kl_weight, optimizer=None, generator=None) -> dict:
    """One pass over ``rows``: trains when ``optimizer`` is given, else evaluates (no grad, eval
    mode). Returns per-cell means of loss parts. Sums stay on the device (no per-step sync)."""
    training = optimizer is not None
    model.train(training)
    keys = ("loss", "recon_rna", "recon_atac", "kl")
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    n = 0
    batches = _prefetched(data.batches(rows, batch_size, generator), device.type == "cuda")
    with torch.set_grad_enabled(training):
        for x_rna, x_atac in batches:
            parts = model.loss(x_rna.to(device, non_blocking=True), x_atac.to(device, non_blocking=True), kl_weight)
            if training:
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                optimizer.step()
            size = x_rna.shape[0]
            sums += torch.stack([parts[key].detach() for key in keys]).double() * size
            n += size
    means = (sums / max(n, 1)).tolist()
    if not np.isfinite(means[0]):
        raise RuntimeError(f"VAE loss became {means[0]}; lower the learning rate or check the input counts")
    return {**dict(zip(keys, means)), "cells": n}


def _epoch_sampler(data: MultiomeData, cells_per_epoch: int | None, seed: int):
    """A function returning each epoch's training rows: all of them, or a seeded random draw."""
    if cells_per_epoch is None or cells_per_epoch >= data.train_idx.size:
        return lambda: data.train_idx
    rng = np.random.default_rng([seed, 1])
    return lambda: np.sort(rng.choice(data.train_idx, cells_per_epoch, replace=False))


def _validation_rows(data: MultiomeData, cells_per_epoch: int | None, seed: int) -> np.ndarray:
    """All validation rows, or a fixed random subset in proportion to ``cells_per_epoch``."""
    if cells_per_epoch is None or cells_per_epoch >= data.train_idx.size or data.val_idx.size == 0:
        return data.val_idx
    n = max(1, int(round(data.val_idx.size * cells_per_epoch / data.train_idx.size)))
    return np.sort(np.random.default_rng([seed, 2]).choice(data.val_idx, n, replace=False))


def _full_loss(model: JointVAE, parts: dict) -> float:
    """Weighted reconstruction + KL at weight 1 (comparable across epochs, unlike the warm-up objective)."""
    return model.rna_weight * parts["recon_rna"] + model.atac_weight * parts["recon_atac"] + parts["kl"]


def train_vae(
    model: JointVAE,
    data: MultiomeData,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = BATCH_SIZE,
    patience: int = 10,
    n_warmup_epochs: int = 10,
    device: str = "auto",
    seed: int = 0,
    log_every: int = 1,
    threads: int | None = None,
    gmm_init: str = "kmeans",
    weight_decay: float = 0.0,
    cells_per_epoch: int | None = None,
) -> dict:
    """Train in place and keep the best (lowest validation loss) weights.

    Early stopping: after the warm-up, stop once the validation loss (training loss when there
    is no validation split) has not improved for ``patience`` epochs (0 disables it).
    Returns ``{"epochs": [per-epoch dict], "best_epoch", "epochs_run", "stopped_early", "device",
    "seconds", "seconds_per_epoch"}``; per epoch: ``train_loss`` / ``val_loss`` (weighted
    reconstruction + full KL), ``train_objective`` (with the warm-up KL weight), ``recon_rna``,
    ``recon_atac``, ``kl`` (training, unweighted per-cell), ``val_recon_rna`` ...,
    ``kl_weight``, ``seconds``.

    ``cells_per_epoch`` (None: every training cell): each epoch trains on that many training
    cells drawn at random (seeded, without replacement within the epoch) and validates on a
    fixed random subset of the validation cells of the same proportion. For millions of
    cells this keeps an epoch (log line, validation, early-stopping check) to minutes.
    """
    if gmm_init not in ("kmeans", "random"):
        raise ValueError(f"gmm_init must be 'kmeans' or 'random', got {gmm_init!r}")
    if data.train_idx.size == 0:
        raise ValueError("no training cells")
    if cells_per_epoch is not None and cells_per_epoch < 1:
        raise ValueError(f"cells_per_epoch must be at least 1, got {cells_per_epoch}")
    epoch_rows = _epoch_sampler(data, cells_per_epoch, seed)
    val_rows = _validation_rows(data, cells_per_epoch, seed)
    dev = resolve_device(device)
    history: dict = {"epochs": [], "best_epoch": None, "stopped_early": False, "gmm_init": gmm_init,
                     "cells_per_epoch": int(min(cells_per_epoch or data.train_idx.size, data.train_idx.size)),
                     "val_cells_per_epoch": int(val_rows.size)}
    started = time.perf_counter()
    with seeded_torch(seed, dev, threads):
        history["device"] = device_description(dev)
        model.to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best, best_state, waited = float("inf"), None, 0
        LOG.info("training on %s: %d train / %d validation cells (%d / %d per epoch), %d genes, %d peaks, batch %d",
                 history["device"], data.train_idx.size, data.val_idx.size, history["cells_per_epoch"], val_rows.size,
                 data.n_genes, data.n_peaks, batch_size)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            beta = kl_warmup_weight(epoch, n_warmup_epochs)
            rows = epoch_rows()
            train = _run_epoch(model, data, rows, batch_size, dev, beta, optimizer, generator)
            if epoch == 0 and gmm_init == "kmeans":
                history["gmm_init"] = "kmeans" if init_prior_kmeans(model, data, rows, seed) else "random"
            val = _run_epoch(model, data, val_rows, batch_size, dev, 1.0) if val_rows.size else None
            record = {
                "epoch": epoch + 1,
                "train_loss": _full_loss(model, train),
                "val_loss": _full_loss(model, val) if val else float("nan"),
                "train_objective": train["loss"],
                "recon_rna": train["recon_rna"],
                "recon_atac": train["recon_atac"],
                "kl": train["kl"],
                "val_recon_rna": val["recon_rna"] if val else float("nan"),
                "val_recon_atac": val["recon_atac"] if val else float("nan"),
                "val_kl": val["kl"] if val else float("nan"),
                "kl_weight": beta,
                "train_cells": train["cells"],
                "val_cells": val["cells"] if val else 0,
                "seconds": time.perf_counter() - t0,
            }
            history["epochs"].append(record)
            if log_every and (epoch % log_every == 0 or epoch == epochs - 1):
                LOG.info(
                    "epoch %d/%d train %.2f (rna %.2f atac %.2f kl %.2f, kl weight %.2f) val %.2f | %.2f s",
                    epoch + 1, epochs, record["train_loss"], record["recon_rna"], record["recon_atac"],
                    record["kl"], beta, record["val_loss"], record["seconds"],
                )
            monitored = record["val_loss"] if val else record["train_loss"]
            if monitored < best:
                best, waited, history["best_epoch"] = monitored, 0, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            elif epoch + 1 >= n_warmup_epochs:
                waited += 1
                if patience and waited >= patience:
                    history["stopped_early"] = True
                    LOG.info("early stop after epoch %d: no improvement for %d epochs (best epoch %d)",
                             epoch + 1, patience, history["best_epoch"])
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    history["epochs_run"] = len(history["epochs"])
    history["seconds"] = time.perf_counter() - started
    history["seconds_per_epoch"] = (
        float(np.mean([e["seconds"] for e in history["epochs"]])) if history["epochs"] else float("nan")
    )
    return history
