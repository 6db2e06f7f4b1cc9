"""The COEM joint VAE (scMVP-style): likelihoods, model, sparse minibatches, training."""

from coem.model.estimator import COEMVAE, FeatureMismatchError
from coem.model.data import CSRSource, H5CSRSource, MultiomeData, SparseSource, prepare_data
from coem.model.likelihoods import LIKELIHOODS, get_likelihood
from coem.model.train import embed, resolve_device, train_vae
from coem.model.vae import JointVAE, gmm_kl, kl_warmup_weight

__all__ = [
    "COEMVAE",
    "FeatureMismatchError",
    "CSRSource",
    "H5CSRSource",
    "JointVAE",
    "LIKELIHOODS",
    "MultiomeData",
    "SparseSource",
    "embed",
    "get_likelihood",
    "gmm_kl",
    "kl_warmup_weight",
    "prepare_data",
    "resolve_device",
    "train_vae",
]
