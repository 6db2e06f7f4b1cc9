"""The VAE's log-likelihoods agree with scipy.stats and stay finite at extreme parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

from coem.model.likelihoods import (
    LIKELIHOODS,
    get_likelihood,
    log_bernoulli,
    log_nb,
    log_poisson,
    log_zinb,
    log_zip,
)

N = 400
TOL = 1e-5


@pytest.fixture(scope="module")
def draws():
    """Random counts (many zeros) and parameters, float64."""
    rng = np.random.default_rng(7)
    x = rng.poisson(rng.uniform(0.0, 15.0, N)).astype(np.float64)
    x[rng.random(N) < 0.3] = 0.0
    return {
        "x": x,
        "mu": rng.uniform(0.1, 50.0, N),
        "theta": rng.uniform(0.1, 20.0, N),
        "logits": rng.uniform(-4.0, 4.0, N),
        "binary": (rng.random(N) < 0.4).astype(np.float64),
    }


def t(a):
    return torch.as_tensor(a, dtype=torch.float64)


def nb_pmf_parts(x, mu, theta):
    """scipy's NB with n = theta, p = theta / (theta + mu) has mean mu and variance mu + mu^2/theta."""
    p = theta / (theta + mu)
    return stats.nbinom.logpmf(x, theta, p), stats.nbinom.pmf(0, theta, p)


def test_nb_matches_scipy(draws):
    got = log_nb(t(draws["x"]), t(draws["mu"]), t(draws["theta"])).numpy()
    want, _ = nb_pmf_parts(draws["x"], draws["mu"], draws["theta"])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_zinb_matches_mixture_of_scipy_pmfs(draws):
    x, mu, theta, logits = draws["x"], draws["mu"], draws["theta"], draws["logits"]
    pi = expit(logits)
    log_nb_x, nb0 = nb_pmf_parts(x, mu, theta)
    want = np.where(x == 0, np.log(pi + (1 - pi) * nb0), np.log1p(-pi) + log_nb_x)
    got = log_zinb(t(x), t(mu), t(theta), t(logits)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert (x == 0).sum() > 50 and (x > 0).sum() > 50  # both branches are exercised


def test_poisson_matches_scipy(draws):
    got = log_poisson(t(draws["x"]), t(draws["mu"])).numpy()
    np.testing.assert_allclose(got, stats.poisson.logpmf(draws["x"], draws["mu"]), rtol=0, atol=TOL)


def test_zip_matches_mixture_of_scipy_pmfs(draws):
    x, rate, logits = draws["x"], draws["mu"] / 10, draws["logits"]
    pi = expit(logits)
    want = np.where(x == 0, np.log(pi + (1 - pi) * np.exp(-rate)), np.log1p(-pi) + stats.poisson.logpmf(x, rate))
    got = log_zip(t(x), t(rate), t(logits)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_bernoulli_matches_scipy(draws):
    got = log_bernoulli(t(draws["binary"]), t(draws["logits"])).numpy()
    want = stats.bernoulli.logpmf(draws["binary"], expit(draws["logits"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_nb_with_large_theta_approaches_poisson():
    x, mu = t([0.0, 3.0, 12.0]), t([2.0, 2.0, 10.0])
    np.testing.assert_allclose(log_nb(x, mu, t([1e7] * 3)).numpy(), log_poisson(x, mu).numpy(), atol=1e-4)


def test_extreme_parameters_stay_finite_in_float32():
    """Big counts, tiny means and saturated zero-inflation logits: no inf/NaN, no underflow."""
    x = torch.tensor([0.0, 0.0, 1e4, 1.0, 0.0], dtype=torch.float32)
    mu = torch.tensor([1e-7, 1e5, 1e-3, 1e-7, 1e-7])
    theta = torch.tensor([1e-4, 1e4, 0.5, 1e3, 1.0])
    for logits in (torch.full((5,), -60.0), torch.full((5,), 60.0)):
        for value in (log_zinb(x, mu, theta, logits), log_zip(x, mu, logits), log_nb(x, mu, theta),
                      log_poisson(x, mu), log_bernoulli((x > 0).float(), logits * 2)):
            assert torch.isfinite(value).all(), value
    # A certain structural zero (logit 60) has log-probability ~0 for x = 0, whatever the count model says.
    assert abs(log_zip(torch.zeros(1), torch.tensor([1e5]), torch.tensor([60.0])).item()) < 1e-6


def test_gradients_are_finite_at_zero_counts():
    mu = torch.tensor([1e-6, 3.0], requires_grad=True)
    theta = torch.tensor([2.0, 2.0], requires_grad=True)
    logits = torch.tensor([0.0, 0.0], requires_grad=True)
    log_zinb(torch.zeros(2), mu, theta, logits).sum().backward()
    for g in (mu.grad, theta.grad, logits.grad):
        assert torch.isfinite(g).all()


def test_registry_flags_and_dispatch(draws):
    assert set(LIKELIHOODS) == {"nb", "zinb", "poisson", "zip", "bernoulli"}
    nb, zip_, bern = get_likelihood("nb"), get_likelihood("zip"), get_likelihood("bernoulli")
    assert nb.uses_dispersion and not nb.uses_dropout and nb.uses_library
    assert zip_.uses_dropout and not zip_.uses_dispersion
    assert bern.needs_binary and not bern.uses_library
    x, mu, theta, logits = t(draws["x"]), t(draws["mu"]), t(draws["theta"]), t(draws["logits"])
    assert torch.equal(get_likelihood("zinb")(x, mu, theta, logits), log_zinb(x, mu, theta, logits))
    assert torch.equal(zip_(x, mu, pi_logits=logits), log_zip(x, mu, logits))
    assert torch.equal(bern(t(draws["binary"]), logits), log_bernoulli(t(draws["binary"]), logits))


def test_unknown_likelihood_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown likelihood 'gaussian'.*'bernoulli'.*'zip'"):
        get_likelihood("gaussian")
