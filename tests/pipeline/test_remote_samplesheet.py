"""A samplesheet that lives remotely (issue 15): its relative paths resolve against its remote
folder. The test samplesheet and data are served over HTTP from 127.0.0.1 and the whole pipeline
runs on them (Nextflow stages http:// files itself, offline mode included)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time

import pytest

from .conftest import REPO, latest_trace, run_nextflow

pytestmark = pytest.mark.pipeline
SAMPLES = ("sim1", "sim2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_assets(tmp_path_factory):
    """assets/ (samplesheet_test.csv with paths relative to it, and test_data/) over HTTP."""
    port = _free_port()
    log = tmp_path_factory.mktemp("http") / "access.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(REPO / "assets")], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the HTTP server did not start"
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", log
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def remote_run(http_assets, tmp_path_factory, nextflow_available):
    url, log = http_assets
    launch = tmp_path_factory.mktemp("nf_remote")
    result = run_nextflow(["run", str(REPO), "-profile", "test", "--embedding", "pca_lsi",
                           "--input", f"{url}/samplesheet_test.csv", "--outdir", "results"], launch)
    return result, url, log


def test_relative_paths_resolve_against_the_remote_folder(remote_run):
    result, url, log = remote_run
    assert result.returncode == 0, result.output[-6000:]
    valid = (result.outdir / "pipeline_info" / "samplesheet.valid.csv").read_text()
    assert f"{url}/test_data/sim1_filtered_feature_bc_matrix.h5" in valid
    assert f"{url}/test_data/sim2.h5mu" in valid and f"{url}/test_data/sim2_links.tsv" in valid
    served = log.read_text()
    for name in ("sim1_filtered_feature_bc_matrix.h5", "sim2.h5mu", "sim1_labels.csv", "sim2_links.tsv"):
        assert f"GET /test_data/{name} HTTP/1.1\" 200" in served, name


def test_remote_inputs_run_the_whole_pipeline(remote_run):
    result = remote_run[0]
    for sample in SAMPLES:
        assert (result.outdir / "metacells" / f"{sample}.metacells.h5mu").is_file()
        assert (result.outdir / "peak2gene" / f"{sample}.peak2gene.tsv").stat().st_size > 0
    # QC read the served bytes, not a local path
    trace = {r["name"]: r for r in latest_trace(result.outdir)}
    workdir = trace["COEM_NF:COEM:QC (sim2)"]["workdir"]
    from pathlib import Path

    staged = Path(workdir) / "sim2.h5mu"
    original = REPO / "assets" / "test_data" / "sim2.h5mu"
    assert hashlib.sha256(staged.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
    assert "/stage-" in str(staged.resolve()) or staged.resolve() != original.resolve()
