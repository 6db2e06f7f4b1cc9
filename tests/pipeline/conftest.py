"""Fixtures that run the real pipeline with ./nextflow (slow; marked `pipeline`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class NextflowResult:
    returncode: int
    output: str
    seconds: float
    launch_dir: Path
    outdir: Path


def _env() -> dict:
    env = dict(os.environ)
    # The steps run with the python that runs the tests (the venv), found through PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NXF_ANSI_LOG"] = "false"
    env.setdefault("NXF_OPTS", "-Xms256m -Xmx2g")
    # The test runs need no plugin and no network (the launcher itself leaves online mode alone).
    env.setdefault("NXF_OFFLINE", "true")
    return env


def run_nextflow(args: list[str], launch_dir: Path, timeout: int = 1500) -> NextflowResult:
    """Run `./nextflow <args>` from `launch_dir` (its own .nextflow cache and work/)."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "nextflow"), *args],
        cwd=launch_dir, env=_env(), capture_output=True, text=True, timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    return NextflowResult(proc.returncode, output, time.monotonic() - start, launch_dir, launch_dir / "results")


def latest_trace(outdir: Path) -> list[dict]:
    """Rows of the newest execution trace in <outdir>/pipeline_info."""
    traces = sorted((outdir / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    assert traces, f"no execution trace in {outdir / 'pipeline_info'}"
    lines = traces[-1].read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


@pytest.fixture(scope="session")
def nextflow_available() -> None:
    if shutil.which("java") is None:
        pytest.fail("Java 17 is needed to run Nextflow (the README's setup installs the rest)")


@pytest.fixture(scope="session")
def test_profile_run(tmp_path_factory, nextflow_available) -> NextflowResult:
    """One real `-profile test` run shared by the tests that inspect its outputs."""
    launch = tmp_path_factory.mktemp("nf_test_profile")
    result = run_nextflow(["run", str(REPO), "-profile", "test", "--outdir", "results"], launch)
    assert result.returncode == 0, result.output[-6000:]
    return result
