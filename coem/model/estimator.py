"""``COEMVAE``: the joint VAE as a model object for notebooks and for the train-VAE command.

    vae = COEMVAE(n_latent=10, epochs=50, random_state=0).fit(mdata)   # MuData with 'rna', 'atac'
    mdata.obsm["X_embedding"] = vae.transform(mdata)                    # posterior means z
    vae.save("model.pt")
    vae = COEMVAE.load("model.pt", mdata=new_mdata)   # checks genes and peaks against new_mdata

Checkpoint format (``CHECKPOINT_FORMAT``): a ``torch.save`` dict with only tensors and strings,
read back with ``torch.load(weights_only=True)`` (no pickled Python objects are executed):

- ``format``: ``"coem-vae"``, ``format_version``: ``1``;
- ``state_dict``: the JointVAE weights (CPU tensors);
- ``metadata``: one JSON string: ``config`` (JointVAE constructor arguments), ``params`` (this
  object's parameters), ``genes`` and ``peaks`` (the feature names the model was trained on, in
  its input order), ``binarize_atac``, ``history`` (per-epoch losses), ``versions``.

Checkpoints of the earlier format (``config``/``genes``/``peaks``/``history`` as plain entries
next to ``state_dict``) load too, with the same safe loader.

Features are matched by name: new data must hold every gene and peak the model was trained
on (in any order, and possibly more); what is missing is named in a ``FeatureMismatchError``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator

from coem._logging import get_logger
from coem.errors import CoemInputError
from coem.model.data import MAX_PEAK_FRACTION, N_PEAKS, CSRSource, MultiomeData, prepare_data
from coem.model.train import BATCH_SIZE

CHECKPOINT_FORMAT = "coem-vae"
CHECKPOINT_VERSION = 1
EMBED_BATCH_SIZE = 1024
# How many missing names an error message lists.
SHOW_MISSING = 5

_log = get_logger("coem.model")


class FeatureMismatchError(CoemInputError, ValueError):
    """New data lacks genes or peaks the model was trained on (a ValueError too)."""


def modality_matrices(mdata, rna_key: str = "rna", atac_key: str = "atac"):
    """RNA and ATAC count matrices with rows in ``mdata.obs_names`` order, and their feature names."""
    out = []
    for key in (rna_key, atac_key):
        if key not in mdata.mod:
            raise CoemInputError(f"modality '{key}' is missing; the VAE needs '{rna_key}' and '{atac_key}' "
                                 f"(modalities: {', '.join(mdata.mod) or 'none'})")
        adata = mdata.mod[key]
        if not adata.obs_names.equals(mdata.obs_names):
            adata = adata[mdata.obs_names]
        out.append((adata.X, adata.var_names))
    (rna, genes), (atac, peaks) = out
    return rna, atac, genes, peaks


def _missing(wanted: list[str], have, what: str) -> str | None:
    have = set(map(str, have))
    missing = [name for name in wanted if name not in have]
    if not missing:
        return None
    shown = ", ".join(repr(m) for m in missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
    return f"{len(missing)} of the {len(wanted)} {what} the model was trained on are missing ({shown})"


class COEMVAE(BaseEstimator):
    """The COEM joint VAE (scMVP-style multi-view VAE with a Gaussian-mixture prior) on a MuData.

    Parameters are those of ``coem_train_vae.py`` (see docs/usage.md): model (``n_latent``,
    ``n_hidden``, ``n_centroids``, ``rna_likelihood``, ``atac_likelihood``, ``rna_weight``,
    ``atac_weight``, ``dropout_rate``, ``input_transform``), features (``n_genes``,
    ``max_peak_fraction``, ``n_peaks``, ``binarize_atac``), training (``epochs``,
    ``batch_size``, ``lr``, ``patience``, ``warmup_epochs``, ``val_fraction``, ``gmm_init``,
    ``device``, ``threads``, ``cells_per_epoch``), ``random_state`` (int seed of everything
    random) and the modality keys.

    After ``fit``: ``model_`` (the ``JointVAE``), ``genes_`` and ``peaks_`` (feature names used,
    in model input order), ``history_`` (per-epoch losses, device, seconds), ``n_train_cells_``
    and ``n_val_cells_``.
    """

    def __init__(self, n_latent: int = 10, n_hidden: int = 128, n_centroids: int = 20, rna_likelihood: str = "nb",
                 atac_likelihood: str = "zip", rna_weight: float = 3.0, atac_weight: float = 1.0,
                 dropout_rate: float = 0.1, input_transform: str = "log1p_norm", n_genes: int = 2000,
                 max_peak_fraction: float = MAX_PEAK_FRACTION, n_peaks: int = N_PEAKS, binarize_atac: bool = True,
                 epochs: int = 100, batch_size: int = BATCH_SIZE, lr: float = 1e-3, patience: int = 10,
                 warmup_epochs: int = 10, val_fraction: float = 0.1, gmm_init: str = "kmeans",
                 device: str = "auto", threads: int | None = None, cells_per_epoch: int | None = None,
                 random_state: int = 0, rna_key: str = "rna", atac_key: str = "atac", log_every: int = 1):
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.n_centroids = n_centroids
        self.rna_likelihood = rna_likelihood
        self.atac_likelihood = atac_likelihood
        self.rna_weight = rna_weight
        self.atac_weight = atac_weight
        self.dropout_rate = dropout_rate
        self.input_transform = input_transform
        self.n_genes = n_genes
        self.max_peak_fraction = max_peak_fraction
        self.n_peaks = n_peaks
        self.binarize_atac = binarize_atac
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.warmup_epochs = warmup_epochs
        self.val_fraction = val_fraction
        self.gmm_init = gmm_init
        self.device = device
        self.threads = threads
        self.cells_per_epoch = cells_per_epoch
        self.random_state = random_state
        self.rna_key = rna_key
        self.atac_key = atac_key
        self.log_every = log_every

    # ------------------------------------------------------------------ training

    def _check_params(self) -> None:
        positive = {"n_latent": self.n_latent, "n_hidden": self.n_hidden, "n_centroids": self.n_centroids,
                    "epochs": self.epochs, "batch_size": self.batch_size,
                    "cells_per_epoch": 1 if self.cells_per_epoch is None else self.cells_per_epoch}
        for name, value in positive.items():
            if int(value) < 1:
                raise CoemInputError(f"{name} must be at least 1, got {value}")
        if not 0 < self.max_peak_fraction <= 1:
            raise CoemInputError(f"max_peak_fraction must be in (0, 1], got {self.max_peak_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise CoemInputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.atac_likelihood == "bernoulli" and not self.binarize_atac:
            raise CoemInputError("atac_likelihood 'bernoulli' needs binarised peaks (binarize_atac=True)")
        if self.random_state is None or not isinstance(self.random_state, (int, np.integer)):
            raise CoemInputError(f"random_state must be an int (the VAE is seeded), got {self.random_state!r}")

    def fit_sources(self, rna, atac, gene_names, peak_names) -> np.ndarray:
        """Train on paired matrices or streaming sources (``coem.model.data``) and return z of every cell.

        What ``fit``/``fit_transform`` run on a MuData; the train-VAE command calls it with
        matrices streamed from the file (``--backed``).
        """
        from coem.model.train import train_vae
        from coem.model.vae import JointVAE

        self._check_params()
        seed = int(self.random_state)
        self.timings_ = {}
        start = time.perf_counter()
        data = prepare_data(rna, atac, n_genes=self.n_genes, max_peak_fraction=self.max_peak_fraction,
                            n_peaks=self.n_peaks, binarize_atac=self.binarize_atac, val_fraction=self.val_fraction,
                            seed=seed)
        if data.train_idx.size < self.n_centroids:
            raise CoemInputError(f"{data.train_idx.size} training cells are fewer than n_centroids "
                                 f"{self.n_centroids}; lower n_centroids (--n-centroids)")
        self.timings_["features_s"] = round(time.perf_counter() - start, 3)
        _log.info("features: %d genes, %d peaks (open in <= %.0f%% of cells), %d train / %d validation cells "
                  "in %.2f s", data.n_genes, data.n_peaks, 100 * self.max_peak_fraction, data.train_idx.size,
                  data.val_idx.size, self.timings_["features_s"])
        try:
            model = JointVAE(data.n_genes, data.n_peaks, n_latent=self.n_latent, n_hidden=self.n_hidden,
                             n_centroids=self.n_centroids, rna_likelihood=self.rna_likelihood,
                             atac_likelihood=self.atac_likelihood, rna_weight=self.rna_weight,
                             atac_weight=self.atac_weight, dropout_rate=self.dropout_rate,
                             input_transform=self.input_transform, seed=seed)
        except ValueError as err:
            raise CoemInputError(f"invalid model options: {err}") from err
        start = time.perf_counter()
        self.history_ = train_vae(model, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                  patience=self.patience, n_warmup_epochs=self.warmup_epochs, device=self.device,
                                  seed=seed, log_every=self.log_every, threads=self.threads,
                                  gmm_init=self.gmm_init, cells_per_epoch=self.cells_per_epoch)
        self.timings_["train_s"] = round(time.perf_counter() - start, 3)
        _log.info("trained %d epochs (best %s) in %.2f s", self.history_["epochs_run"], self.history_["best_epoch"],
                  self.timings_["train_s"])
        self.model_ = model
        self.genes_ = [str(g) for g in np.asarray(gene_names)[data.gene_idx]]
        self.peaks_ = [str(p) for p in np.asarray(peak_names)[data.peak_idx]]
        self.n_train_cells_ = int(data.train_idx.size)
        self.n_val_cells_ = int(data.val_idx.size)
        start = time.perf_counter()
        z = self._embed(data)
        self.timings_["embed_s"] = round(time.perf_counter() - start, 3)
        _log.info("embedded %d cells (%d dims) in %.2f s", z.shape[0], z.shape[1], self.timings_["embed_s"])
        return z

    def fit(self, mdata, y=None) -> "COEMVAE":
        """Select features, train (seeded, best validation epoch kept) on ``mdata``'s raw counts."""
        self.fit_transform(mdata)
        return self

    def fit_transform(self, mdata, y=None) -> np.ndarray:
        """``fit`` and return z (cells x ``n_latent``, float32) of every cell of ``mdata``."""
        rna, atac, genes, peaks = modality_matrices(mdata, self.rna_key, self.atac_key)
        return self.fit_sources(rna, atac, genes, peaks)

    # ------------------------------------------------------------------ embedding

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise CoemInputError("this COEMVAE is not fitted yet: call fit(mdata) or COEMVAE.load(path) first")

    def _embed(self, data: MultiomeData) -> np.ndarray:
        from coem.model.train import embed, seeded_torch

        device = next(self.model_.parameters()).device
        with seeded_torch(int(self.random_state), device, self.threads):
            return embed(self.model_, data, batch_size=max(int(self.batch_size), EMBED_BATCH_SIZE))

    def check_features(self, mdata) -> None:
        """Raise ``FeatureMismatchError`` when ``mdata`` lacks genes or peaks the model was trained on."""
        self._check_fitted()
        problems = []
        for key, wanted, what in ((self.rna_key, self.genes_, "genes"), (self.atac_key, self.peaks_, "peaks")):
            if key not in mdata.mod:
                problems.append(f"modality '{key}' is missing")
                continue
            problem = _missing(wanted, mdata.mod[key].var_names, what)
            if problem:
                problems.append(f"{problem} in '{key}'")
        if problems:
            raise FeatureMismatchError("the data do not match the model: " + "; ".join(problems)
                                       + ". Embed data with the features the model was trained on, or train a new model")

    def transform(self, mdata) -> np.ndarray:
        """Posterior means z (cells x ``n_latent``, float32) of ``mdata``'s cells, features matched by name."""
        self._check_fitted()
        self.check_features(mdata)
        rna, atac, genes, peaks = modality_matrices(mdata, self.rna_key, self.atac_key)
        gene_idx = genes.get_indexer(self.genes_)
        peak_idx = peaks.get_indexer(self.peaks_)
        rna = sp.csr_matrix(rna)[:, gene_idx] if sp.issparse(rna) else np.asarray(rna)[:, gene_idx]
        atac = sp.csr_matrix(atac)[:, peak_idx] if sp.issparse(atac) else np.asarray(atac)[:, peak_idx]
        data = MultiomeData(CSRSource(rna), CSRSource(atac), np.arange(len(self.genes_)),
                            np.arange(len(self.peaks_)), bool(self.binarize_atac))
        return self._embed(data)

    # ------------------------------------------------------------------ checkpoint

    def metadata(self) -> dict:
        """What the checkpoint stores besides the weights (plain JSON values)."""
        from coem.provenance import _jsonable, software_versions

        self._check_fitted()
        return _jsonable({"config": self.model_.config, "params": self.get_params(), "genes": self.genes_,
                          "peaks": self.peaks_, "binarize_atac": bool(self.binarize_atac),
                          "history": getattr(self, "history_", None), "versions": software_versions()})

    def save(self, path) -> Path:
        """Write the checkpoint (see the module docstring) to ``path``."""
        import torch

        self._check_fitted()
        path = Path(path)
        checkpoint = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                      "state_dict": {k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
                      "metadata": json.dumps(self.metadata())}
        torch.save(checkpoint, path)
        return path

    @classmethod
    def load(cls, path, mdata=None, device: str = "cpu") -> "COEMVAE":
        """Read a checkpoint with ``torch.load(weights_only=True)``; with ``mdata``, check its features.

        The model goes to ``device`` ('cpu' by default; 'auto' or 'cuda' to use a GPU).
        """
        import torch

        from coem.model.train import resolve_device
        from coem.model.vae import JointVAE

        path = Path(path)
        if not path.is_file():
            raise CoemInputError("checkpoint not found", file=str(path))
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle.UnpicklingError for unsafe content, RuntimeError for non-torch files
            raise CoemInputError(f"cannot read as a COEM VAE checkpoint with safe loading "
                                 f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                                 file=str(path)) from err
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CoemInputError("not a COEM VAE checkpoint (no state_dict)", file=str(path))
        if "metadata" in checkpoint:
            if checkpoint.get("format") != CHECKPOINT_FORMAT or int(checkpoint.get("format_version", 0)) > CHECKPOINT_VERSION:
                raise CoemInputError(f"unsupported checkpoint format {checkpoint.get('format')!r} version "
                                     f"{checkpoint.get('format_version')!r}", file=str(path))
            meta = json.loads(checkpoint["metadata"])
        else:  # the format written before the model object existed
            meta = {key: checkpoint.get(key) for key in ("config", "genes", "peaks", "binarize_atac", "history")}
            meta["params"] = {}
        config = meta["config"]
        params = {k: v for k, v in (meta.get("params") or {}).items() if k in cls._get_param_names()}
        for key in ("n_latent", "n_hidden", "n_centroids", "rna_likelihood", "atac_likelihood", "rna_weight",
                    "atac_weight", "dropout_rate", "input_transform"):
            if key in config:
                params[key] = config[key]
        if meta.get("binarize_atac") is not None:
            params["binarize_atac"] = bool(meta["binarize_atac"])
        self = cls(**params)
        model = JointVAE.from_config(config)
        model.load_state_dict(checkpoint["state_dict"])
        model.to(resolve_device(device))
        model.eval()
        self.model_ = model
        self.genes_ = list(meta["genes"])
        self.peaks_ = list(meta["peaks"])
        if meta.get("history") is not None:
            self.history_ = meta["history"]
        if mdata is not None:
            self.check_features(mdata)
        return self
