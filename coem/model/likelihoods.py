"""Per-element log-probabilities of the count models the joint VAE can use.

Every function returns ``log p(x | params)`` element-wise (same shape as ``x`` after
broadcasting) so the model can weight and sum them per modality. They are written with
``lgamma``, ``softplus`` and ``logaddexp`` so that they stay finite for large counts, tiny
means and extreme zero-inflation logits (the naive ``log(pi + (1 - pi) * p0)`` underflows).

Zero-inflation is parameterised by ``pi_logits`` (logit of the probability of a structural
zero), as in scVI and scMVP, so the network output needs no squashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EPS = 1e-8


def log_factorial(x: torch.Tensor) -> torch.Tensor:
    """log(x!) computed only where x > 1 (0 elsewhere): sparse or 0/1 data skips almost all of
    the expensive lgamma calls. ``x`` carries no gradient, so the masking costs nothing there."""
    out = torch.zeros_like(x)
    big = x > 1.5
    out[big] = torch.lgamma(x[big] + 1.0)
    return out


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta`` (variance mu + mu^2/theta)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - log_factorial(x)
    )


def log_zinb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Zero-inflated NB: a structural zero with probability sigmoid(pi_logits), else NB(mu, theta)."""
    log_one_minus_pi = -F.softplus(pi_logits)  # log (1 - sigmoid(l))
    log_pi = pi_logits + log_one_minus_pi  # log sigmoid(l) = l - softplus(l)
    log_count = log_one_minus_pi + log_nb(x, mu, theta, eps)
    log_nb_zero = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    log_zero = torch.logaddexp(log_pi, log_one_minus_pi + log_nb_zero)
    return torch.where(x < 0.5, log_zero, log_count)


def log_poisson(x: torch.Tensor, rate: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Poisson with mean ``rate``."""
    return x * torch.log(rate + eps) - rate - log_factorial(x)


def log_zip(x: torch.Tensor, rate: torch.Tensor, pi_logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Zero-inflated Poisson: a structural zero with probability sigmoid(pi_logits), else Poisson(rate)."""
    log_one_minus_pi = -F.softplus(pi_logits)
    log_pi = pi_logits + log_one_minus_pi
    log_zero = torch.logaddexp(log_pi, log_one_minus_pi - rate)
    log_count = log_one_minus_pi + log_poisson(x, rate, eps)
    return torch.where(x < 0.5, log_zero, log_count)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli on 0/1 data with success logit ``logits`` (the negative of BCE-with-logits)."""
    return x * logits - F.softplus(logits)


@dataclass(frozen=True)
class Likelihood:
    """What a likelihood needs from the decoder.

    ``uses_dispersion``: a feature-wise inverse dispersion ``theta``; ``uses_dropout``: zero-
    inflation logits; ``needs_binary``: the data must be 0/1 (Bernoulli); ``uses_library``: the
    mean is proportions x library size (count models) rather than a free logit (Bernoulli).
    """

    name: str
    log_prob: Callable[..., torch.Tensor]
    uses_dispersion: bool
    uses_dropout: bool
    needs_binary: bool
    uses_library: bool

    def __call__(self, x, mean, theta=None, pi_logits=None) -> torch.Tensor:
        """Element-wise log p(x) from the decoder outputs (``mean`` is the logit for Bernoulli)."""
        if self.name == "nb":
            return log_nb(x, mean, theta)
        if self.name == "zinb":
            return log_zinb(x, mean, theta, pi_logits)
        if self.name == "poisson":
            return log_poisson(x, mean)
        if self.name == "zip":
            return log_zip(x, mean, pi_logits)
        return log_bernoulli(x, mean)


LIKELIHOODS: dict[str, Likelihood] = {
    "nb": Likelihood("nb", log_nb, True, False, False, True),
    "zinb": Likelihood("zinb", log_zinb, True, True, False, True),
    "poisson": Likelihood("poisson", log_poisson, False, False, False, True),
    "zip": Likelihood("zip", log_zip, False, True, False, True),
    "bernoulli": Likelihood("bernoulli", log_bernoulli, False, False, True, False),
}


def get_likelihood(name: str) -> Likelihood:
    """Look a likelihood up by name; the error lists the valid names."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
