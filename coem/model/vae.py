"""The COEM joint VAE: scMVP's multi-view architecture written for current PyTorch.

Architecture (DESIGN.md section 6; Li et al. 2022, scMVP):

- RNA channel: ``log1p(x)`` -> Linear -> LayerNorm -> ReLU -> Dropout, multiplied element-wise by
  a sigmoid "mask attention" branch (a second Linear of the same input).
- ATAC channel: ``log1p(x)`` -> Linear -> LayerNorm -> ReLU -> Dropout, the ``n_hidden`` vector
  viewed as ``n_attention_tokens`` tokens (8 x 16 by default) and passed through multi-head
  self-attention (8 heads) with a residual connection.
- Joint encoder: both channels concatenated (2 x 128) -> Linear -> LayerNorm -> ReLU -> mean and
  log-variance of q(z|x). The posterior mean is the embedding handed to the metacell step.
- Prior: a Gaussian mixture with learnable weights (softmax of logits), means and
  log-variances. KL(q(z|x) || GMM) is the VaDE/scMVP bound with responsibilities
  ``gamma = p(c|z)`` computed from a posterior sample (see :func:`gmm_kl`).
- Decoders per modality from z: softmax proportions times the observed library size (scVI's
  observed-library option), a feature-wise dispersion for NB/ZINB and per-cell dropout logits
  for zero-inflated models; Bernoulli decoders output logits.

Likelihood defaults follow scMVP's code, not the COEM paper's text: RNA ``'nb'``, ATAC
``'zip'`` on binarised peaks. Why: scMVP is the implementation COEM adopted and whose results
the paper reports; the paper's text (ZIP for RNA, NB for ATAC) disagrees with the code, so both
likelihoods are options. ATAC is binarised as scMVP does: per-peak counts in sci-CAR/10x data
are nearly binary (a diploid locus yields at most a few fragments), so presence carries the
signal; the zero-inflation term of the ZIP soaks up the many zeros of sparse 0/1 data.

Likelihood weights default to RNA 3.0 (scMVP) and ATAC 1.0 (scMVP: 0.1), from measurements
(kNN-15 label agreement / silhouette of the known states; simulated data, seed 0):

=============  ===========================  ====================================
RNA / ATAC     2,000 cells, 500 genes,      240 cells, 40 genes, 165 sparse
weights        5,000 peaks, 100 epochs      peaks, 40 epochs (kNN-5)
=============  ===========================  ====================================
3.0 / 0.1      0.82 / 0.26                  0.87 (15 epochs)
3.0 / 1.0      0.98 / 0.45                  1.00
1.0 / 1.0      0.98 / 0.65                  0.77 (posterior collapse: KL 0.3)
3.0 / 3.0      0.98 / 0.36                  0.97
PCA + LSI      0.99 / 0.31                  --
=============  ===========================  ====================================

scMVP's ATAC weight 0.1 makes the VAE an RNA model: it mixed the two simulated states that
differ only in chromatin (45% and 75% agreement), which defeats a joint embedding. An RNA
weight above 1 acts like a KL weight below 1 and keeps small data from posterior collapse.
scMVP's exact weights stay available (``rna_weight=3.0, atac_weight=0.1``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from coem.model.likelihoods import get_likelihood

LOGVAR_MIN, LOGVAR_MAX = -12.0, 10.0
# Encoder input: scMVP's log1p of raw counts, or log1p of counts scaled to 10,000 per cell
# (removes sequencing depth, which the decoders already get as the observed library size).
INPUT_TRANSFORMS = ("log1p", "log1p_norm")
NORM_TARGET = 1e4


def kl_warmup_weight(epoch: int, n_warmup_epochs: int) -> float:
    """Linear KL warm-up: 0 at epoch 0, 1 from ``n_warmup_epochs`` on (0 warm-up epochs: always 1).

    Starting as an autoencoder lets the decoders learn before the prior pulls z together.
    """
    if n_warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / float(n_warmup_epochs))


def _dense_block(n_in: int, n_out: int, dropout_rate: float) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Dropout. LayerNorm (not BatchNorm) keeps a cell's
    embedding independent of which other cells share its minibatch."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU(), nn.Dropout(dropout_rate))


class MaskAttentionEncoder(nn.Module):
    """RNA channel: a dense layer gated element-wise by a sigmoid branch (scMVP's mask attention)."""

    def __init__(self, n_input: int, n_hidden: int, dropout_rate: float):
        super().__init__()
        self.dense = _dense_block(n_input, n_hidden, dropout_rate)
        self.gate = nn.Linear(n_input, n_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x) * torch.sigmoid(self.gate(x))


class SelfAttentionEncoder(nn.Module):
    """ATAC channel: a dense layer, then self-attention across the hidden vector's tokens."""

    def __init__(self, n_input: int, n_hidden: int, n_tokens: int, n_heads: int, dropout_rate: float):
        super().__init__()
        if n_hidden % n_tokens or (n_hidden // n_tokens) % n_heads:
            raise ValueError(
                f"n_hidden={n_hidden} must split into {n_tokens} tokens whose size is divisible by "
                f"{n_heads} heads (e.g. n_hidden=128: 8 tokens of 16, 8 heads of 2)"
            )
        self.n_tokens = n_tokens
        self.dense = _dense_block(n_input, n_hidden, dropout_rate)
        self.attention = nn.MultiheadAttention(n_hidden // n_tokens, n_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense(x)
        tokens = h.view(h.shape[0], self.n_tokens, -1)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return (tokens + attended).reshape(h.shape[0], -1)


class ModalityDecoder(nn.Module):
    """z -> parameters of one modality's likelihood (mean, optional dispersion and dropout)."""

    def __init__(self, n_latent: int, n_hidden: int, n_output: int, likelihood: str, dropout_rate: float):
        super().__init__()
        self.likelihood = get_likelihood(likelihood)
        self.hidden = _dense_block(n_latent, n_hidden, dropout_rate)
        self.mean = nn.Linear(n_hidden, n_output)
        self.dropout_logits = nn.Linear(n_hidden, n_output) if self.likelihood.uses_dropout else None
        # Feature-wise inverse dispersion (scVI's dispersion='gene'), log scale.
        self.log_theta = nn.Parameter(torch.zeros(n_output)) if self.likelihood.uses_dispersion else None

    def forward(self, z: torch.Tensor, log_library: torch.Tensor) -> dict[str, torch.Tensor | None]:
        h = self.hidden(z)
        raw = self.mean(h)
        if self.likelihood.uses_library:
            mean = torch.softmax(raw, dim=-1) * torch.exp(log_library)
        else:
            mean = raw  # Bernoulli logits
        return {
            "mean": mean,
            "theta": None if self.log_theta is None else torch.exp(self.log_theta),
            "pi_logits": None if self.dropout_logits is None else self.dropout_logits(h),
        }

    def log_prob(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Per-cell log-likelihood (summed over features)."""
        return self.likelihood(x, params["mean"], params["theta"], params["pi_logits"]).sum(dim=-1)


def gmm_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    prior_logits: torch.Tensor,
    prior_mu: torch.Tensor,
    prior_logvar: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell KL(q(z,c|x) || p(z,c)) for a diagonal Gaussian posterior and a GMM prior.

    VaDE (Jiang et al. 2017) / scMVP: with responsibilities gamma_k = p(c=k | z) for a posterior
    sample z, KL = sum_k gamma_k [KL(N(mu, var) || N(mu_k, var_k)) + log gamma_k - log pi_k].
    With one component this is the ordinary Gaussian KL. Returns (kl, gamma).
    """
    log_pi = torch.log_softmax(prior_logits, dim=0)  # (K,)
    var_q = torch.exp(logvar).unsqueeze(1)  # (N, 1, D)
    var_k = torch.exp(prior_logvar).unsqueeze(0)  # (1, K, D)
    diff_z = z.unsqueeze(1) - prior_mu.unsqueeze(0)  # (N, K, D)
    log_pz_c = -0.5 * (math.log(2 * math.pi) + prior_logvar.unsqueeze(0) + diff_z**2 / var_k).sum(-1)
    log_gamma = torch.log_softmax(log_pi.unsqueeze(0) + log_pz_c, dim=1)  # (N, K)
    gamma = torch.exp(log_gamma)
    diff_mu = mu.unsqueeze(1) - prior_mu.unsqueeze(0)
    kl_gauss = 0.5 * (prior_logvar.unsqueeze(0) - logvar.unsqueeze(1) + (var_q + diff_mu**2) / var_k - 1.0).sum(-1)
    kl = (gamma * (kl_gauss + log_gamma - log_pi.unsqueeze(0))).sum(dim=1)
    return kl, gamma


class JointVAE(nn.Module):
    """Multi-view VAE over paired RNA and ATAC counts with a Gaussian-mixture prior.

    ``seed`` initialises the weights and the prior means inside a forked RNG, so the same seed
    gives the same model without touching the caller's global random state.
    """

    def __init__(
        self,
        n_genes: int,
        n_peaks: int,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_centroids: int = 20,
        rna_likelihood: str = "nb",
        atac_likelihood: str = "zip",
        rna_weight: float = 3.0,
        atac_weight: float = 1.0,
        n_attention_heads: int = 8,
        n_attention_tokens: int = 8,
        dropout_rate: float = 0.1,
        input_transform: str = "log1p_norm",
        seed: int | None = 0,
    ):
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}, got {input_transform!r}")
        self.input_transform = input_transform
        for name, value in (("n_genes", n_genes), ("n_peaks", n_peaks), ("n_latent", n_latent), ("n_centroids", n_centroids)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        get_likelihood(rna_likelihood), get_likelihood(atac_likelihood)  # fail early on bad names
        self._config = dict(
            n_genes=int(n_genes), n_peaks=int(n_peaks), n_latent=int(n_latent), n_hidden=int(n_hidden),
            n_centroids=int(n_centroids), rna_likelihood=rna_likelihood, atac_likelihood=atac_likelihood,
            rna_weight=float(rna_weight), atac_weight=float(atac_weight),
            n_attention_heads=int(n_attention_heads), n_attention_tokens=int(n_attention_tokens),
            dropout_rate=float(dropout_rate), input_transform=input_transform, seed=seed,
        )
        self.rna_weight = float(rna_weight)
        self.atac_weight = float(atac_weight)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self._build(n_genes, n_peaks, n_latent, n_hidden, n_centroids, rna_likelihood, atac_likelihood,
                        n_attention_heads, n_attention_tokens, dropout_rate)

    def _build(self, n_genes, n_peaks, n_latent, n_hidden, n_centroids, rna_lik, atac_lik, heads, tokens, p):
        self.rna_encoder = MaskAttentionEncoder(n_genes, n_hidden, p)
        self.atac_encoder = SelfAttentionEncoder(n_peaks, n_hidden, tokens, heads, p)
        self.joint = nn.Sequential(nn.Linear(2 * n_hidden, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU())
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        # GMM prior; means start random (seeded) and are usually re-set by k-means after the
        # first epoch (see coem.model.train).
        self.prior_logits = nn.Parameter(torch.zeros(n_centroids))
        self.prior_mu = nn.Parameter(torch.randn(n_centroids, n_latent))
        self.prior_logvar = nn.Parameter(torch.zeros(n_centroids, n_latent))
        # Decoders without dropout, as in scVI/scMVP: dropout there only adds noise to the likelihood.
        self.rna_decoder = ModalityDecoder(n_latent, n_hidden, n_genes, rna_lik, 0.0)
        self.atac_decoder = ModalityDecoder(n_latent, n_hidden, n_peaks, atac_lik, 0.0)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: enough to rebuild the model from a checkpoint."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "JointVAE":
        return cls(**config)

    @property
    def atac_needs_binary(self) -> bool:
        return self.atac_decoder.likelihood.needs_binary

    def encode(self, x_rna: torch.Tensor, x_atac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) from raw counts (the input transform is applied here)."""
        h = torch.cat([self.rna_encoder(self._transform(x_rna)), self.atac_encoder(self._transform(x_atac))], dim=-1)
        h = self.joint(h)
        return self.z_mean(h), self.z_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform == "log1p_norm":
            x = x * (NORM_TARGET / x.sum(dim=-1, keepdim=True).clamp(min=1.0))
        return torch.log1p(x)

    def forward(self, x_rna: torch.Tensor, x_atac: torch.Tensor, sample: bool = True) -> dict[str, Any]:
        """Encode, sample z (or take the mean), decode both modalities."""
        mu, logvar = self.encode(x_rna, x_atac)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        lib_rna = torch.log(x_rna.sum(dim=-1, keepdim=True).clamp(min=1.0))
        lib_atac = torch.log(x_atac.sum(dim=-1, keepdim=True).clamp(min=1.0))
        return {
            "z_mean": mu,
            "z_logvar": logvar,
            "z": z,
            "rna": self.rna_decoder(z, lib_rna),
            "atac": self.atac_decoder(z, lib_atac),
        }

    def loss(self, x_rna: torch.Tensor, x_atac: torch.Tensor, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Minibatch means: ``loss`` (what is optimised), the unweighted per-cell negative
        log-likelihoods ``recon_rna`` / ``recon_atac`` and ``kl``."""
        out = self(x_rna, x_atac)
        recon_rna = -self.rna_decoder.log_prob(x_rna, out["rna"])
        recon_atac = -self.atac_decoder.log_prob(x_atac, out["atac"])
        kl, _ = gmm_kl(out["z_mean"], out["z_logvar"], out["z"], self.prior_logits, self.prior_mu, self.prior_logvar)
        total = self.rna_weight * recon_rna + self.atac_weight * recon_atac + kl_weight * kl
        return {
            "loss": total.mean(),
            "recon_rna": recon_rna.mean(),
            "recon_atac": recon_atac.mean(),
            "kl": kl.mean(),
        }

    @torch.no_grad()
    def set_prior(self, means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor) -> None:
        """Overwrite the GMM prior (e.g. with a k-means fit on early embeddings)."""
        dev = self.prior_mu.device
        self.prior_mu.copy_(torch.as_tensor(means, dtype=torch.float32, device=dev))
        self.prior_logvar.copy_(torch.log(torch.as_tensor(variances, dtype=torch.float32, device=dev).clamp(min=1e-4)))
        w = torch.as_tensor(weights, dtype=torch.float32, device=dev).clamp(min=1e-6)
        self.prior_logits.copy_(torch.log(w / w.sum()))
