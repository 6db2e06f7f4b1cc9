"""Shared fixtures: the real data folder and small simulated datasets (read-only: do not modify them)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def small_sim():
    """600 cells x (300 genes + 2000 peaks), 4 types + trajectory, seed 0 (~1 s). Do not modify."""
    return _simulate(n_cells=600, n_genes=300, n_peaks=2000, seed=0)


@pytest.fixture(scope="session")
def tiny_sim():
    """200 cells x (300 genes + 2000 peaks), 4 types + trajectory, seed 0. Do not modify."""
    return _simulate(n_cells=200, n_genes=300, n_peaks=2000, seed=0)
