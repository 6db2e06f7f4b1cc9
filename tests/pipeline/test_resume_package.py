"""-resume reruns the steps when the coem package changed (issue 15): every task exports
COEM_PACKAGE_DIGEST, a digest of coem/*.py and pyproject.toml that enters the task hash.

Runs on a copy of the pipeline (so the package can be edited): a first run, a -resume with
nothing changed (every task cached), then a -resume after a change to one coem/ file (every
coem step reruns)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO, latest_trace, run_nextflow

pytestmark = pytest.mark.pipeline
ARGS = ["-profile", "test", "--embedding", "pca_lsi", "--outdir", "results"]


def _copy_pipeline(dest):
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _status(outdir) -> dict[str, str]:
    return {r["name"]: r["status"] for r in latest_trace(outdir)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, nextflow_available):
    pipeline = _copy_pipeline(tmp_path_factory.mktemp("pipeline_copy"))
    launch = tmp_path_factory.mktemp("nf_digest")
    first = run_nextflow(["run", str(pipeline), *ARGS], launch)
    assert first.returncode == 0, first.output[-6000:]
    same = run_nextflow(["run", str(pipeline), *ARGS, "-resume"], launch)
    assert same.returncode == 0, same.output[-6000:]
    same_status = _status(same.outdir)
    with open(pipeline / "coem" / "metacells.py", "a") as handle:
        handle.write("\n# a change to the package\n")
    changed = run_nextflow(["run", str(pipeline), *ARGS, "-resume"], launch)
    assert changed.returncode == 0, changed.output[-6000:]
    return first, same_status, _status(changed.outdir)


def test_unchanged_package_is_cached(runs):
    _, same, _ = runs
    steps = {n: s for n, s in same.items() if ":QC " in n or ":METACELLS " in n or ":PEAK2GENE " in n}
    assert len(steps) == 6 and set(steps.values()) == {"CACHED"}, same


def test_changed_package_reruns_the_steps(runs):
    _, _, changed = runs
    steps = {n: s for n, s in changed.items() if ":QC " in n or ":METACELLS " in n or ":PEAK2GENE " in n}
    assert len(steps) == 6 and set(steps.values()) == {"COMPLETED"}, changed


def test_tasks_export_the_digest(runs):
    first = runs[0]
    workdir = next(r["workdir"] for r in latest_trace(first.outdir) if ":QC " in r["name"])
    from pathlib import Path

    script = (Path(workdir) / ".command.sh").read_text()
    assert "export COEM_PACKAGE_DIGEST=" in script and "export COEM_PACKAGE_DIGEST=unset" not in script
    assert "export COEM_PIPELINE_VERSION=0.1.0" in script
