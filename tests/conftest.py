"""Shared fixtures: the real data folder and small simulated datasets (read-only: do not modify them)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real test data, never copied into the repo); skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA.resolve()} "
                    "(needs the shared data folder next to the repository)")
    return SHARED_DATA.resolve()


def _simulate(**kwargs):
    from coem.simulate import simulate_multiome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's notice about pull_on_update
        return simulate_multiome(**kwargs)


def _fresh(sim):
    """A copy whose MuData (and links) a test may change freely."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dataclasses.replace(sim, mdata=sim.mdata.copy(), links=sim.links.copy())


@pytest.fixture(scope="session")
def _small_sim_cached():
    return _simulate(n_cells=600, n_genes=300, n_peaks=2000, seed=0)


@pytest.fixture(scope="session")
def _tiny_sim_cached():
    return _simulate(n_cells=200, n_genes=300, n_peaks=2000, seed=0)


@pytest.fixture
def small_sim(_small_sim_cached):
    """600 cells x (300 genes + 2000 peaks), 4 types + trajectory, seed 0: simulated once per
    session, a fresh copy per test (writing a MuData turns string columns into categoricals in
    place, so a shared object would leak changes between tests)."""
    return _fresh(_small_sim_cached)


@pytest.fixture
def tiny_sim(_tiny_sim_cached):
    """200 cells x (300 genes + 2000 peaks), same design as small_sim; a fresh copy per test."""
    return _fresh(_tiny_sim_cached)
