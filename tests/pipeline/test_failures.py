"""Failures in real Nextflow runs: a bad sample publishes nothing, a killed run resumes.

a) Per-sample failure isolation: a samplesheet with a good sample and a corrupt (truncated) .h5mu:
   the good sample runs to the end and is published, the corrupt one stops at QC and publishes
   nothing, and the run exits non-zero listing both samples' fates (console and run_summary.tsv).
b) A run killed (SIGTERM to its process group) after its QC tasks finished is resumed with
   -resume: the finished tasks come from the cache, and the final tables equal a clean run's.

Every run uses ``--embedding pca_lsi`` (the VAE is slower and is tested elsewhere).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, _env, latest_trace, run_nextflow

pytestmark = pytest.mark.pipeline

SAMPLES = ("sim1", "sim2")
TEST_DATA = REPO / "assets" / "test_data"
PCA = ["--embedding", "pca_lsi"]
STEP_FOLDERS = ("qc", "embed", "metacells", "aggregate", "peak2gene", "evaluate", "baselines", "multiqc")
KILL_AFTER_S = 900  # give up waiting for the QC tasks of the run to be killed after this long
GRACE_S = 30  # SIGTERM, then SIGKILL after this


# ---------------------------------------------------------------------------------------------
# a) per-sample failure isolation: a corrupt sample stops, the good one runs to the end
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corrupt_sample_run(tmp_path_factory, nextflow_available):
    """Two samples: sim1 (good) and `corrupt`, a truncated copy of sim2.h5mu."""
    tmp = tmp_path_factory.mktemp("nf_corrupt")
    corrupt = tmp / "corrupt.h5mu"
    corrupt.write_bytes((TEST_DATA / "sim2.h5mu").read_bytes()[:5000])
    sheet = tmp / "samplesheet.csv"
    sheet.write_text(
        "sample,h5,h5mu,labels\n"
        f"sim1,{TEST_DATA / 'sim1_filtered_feature_bc_matrix.h5'},,{TEST_DATA / 'sim1_labels.csv'}\n"
        f"corrupt,,{corrupt},\n"
    )
    return run_nextflow(["run", str(REPO), "-profile", "test", *PCA, "--input", str(sheet),
                         "--outdir", "results"], tmp)


def test_corrupt_sample_fails_alone_and_the_run_exits_non_zero(corrupt_sample_run):
    result = corrupt_sample_run
    out = result.output
    assert result.returncode != 0, out[-4000:]
    # the end-of-run block lists both samples' fates
    assert "  sim1: ok" in out, out[-4000:]
    assert re.search(r"  corrupt: failed at QC: ERROR: sample 'corrupt', file 'corrupt.h5mu': cannot read", out), out[-4000:]
    assert "1 failed sample(s)" in out
    # the good sample ran to the end and is published; the report too
    for rel in ("metacells/sim1.metacells.h5mu", "metacells/sim1.metacell_sizes.tsv", "aggregate/sim1.aggregated.h5mu",
                "peak2gene/sim1.peak2gene.tsv", "peak2gene/sim1.peak2gene_significant.bedpe",
                "multiqc/multiqc_report.html"):
        assert (result.outdir / rel).is_file() and (result.outdir / rel).stat().st_size > 0, rel
    # nothing of the corrupt sample is published
    published = [p for folder in STEP_FOLDERS for p in (result.outdir / folder).rglob("*") if p.is_file()]
    assert not [p for p in published if "corrupt" in p.name], published
    assert not [p for p in published if p.name in ("coem_failed.txt", "coem_warnings.txt")], published


def test_run_summary_lists_every_sample_fate(corrupt_sample_run):
    summary = pd.read_csv(corrupt_sample_run.outdir / "pipeline_info" / "run_summary.tsv", sep="\t")
    fates = summary[summary["status"] != "warning"].set_index("sample")
    assert set(fates.index) == {"sim1", "corrupt"}
    assert fates.loc["sim1", "status"] == "ok"
    assert fates.loc["corrupt", "status"] == "failed" and fates.loc["corrupt", "step"] == "QC"
    assert "cannot read" in fates.loc["corrupt", "message"]
    report = (corrupt_sample_run.outdir / "multiqc" / "multiqc_report.html").read_text()
    assert 'id="coem_run_summary"' in report and "1 failed sample(s)" in report


def test_corrupt_sample_stops_at_its_failed_step(corrupt_sample_run):
    trace = {r["name"]: r for r in latest_trace(corrupt_sample_run.outdir)}
    qc = trace["COEM_NF:COEM:QC (corrupt)"]
    assert qc["status"] == "COMPLETED" and qc["exit"] == "0", qc  # a failure record, not retried
    assert not [n for n in trace if "corrupt" in n and ":QC " not in n], "a step ran after the failure"
    status = {n.split(" ")[0]: r["status"] for n, r in trace.items()}
    assert status["COEM_NF:COEM:RUN_STATUS"] == "FAILED"  # the run's verdict, after the report
    assert status["COEM_NF:COEM:MULTIQC"] == "COMPLETED"


# ---------------------------------------------------------------------------------------------
# b) kill and resume
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, nextflow_available):
    """The reference: one uninterrupted `-profile test --embedding pca_lsi` run (same seed)."""
    launch = tmp_path_factory.mktemp("nf_clean")
    result = run_nextflow(["run", str(REPO), "-profile", "test", *PCA, "--outdir", "results"], launch)
    assert result.returncode == 0, result.output[-6000:]
    return result


def completed_tasks(log: Path) -> set[str]:
    """Names of the tasks .nextflow.log reports as completed with exit 0."""
    if not log.exists():
        return set()
    done = re.findall(r"Task completed > TaskHandler\[id: \d+; name: ([^;]+); status: COMPLETED; exit: 0;",
                      log.read_text(errors="replace"))
    return set(done)


def run_and_kill(launch: Path, wanted: set[str]) -> tuple[set[str], str]:
    """Start the run, SIGTERM its process group once ``wanted`` tasks completed; return what had completed."""
    launch.mkdir(parents=True, exist_ok=True)
    log = launch / ".nextflow.log"
    with open(launch / "killed_run.out", "w") as out:
        proc = subprocess.Popen([str(REPO / "nextflow"), "run", str(REPO), "-profile", "test", *PCA,
                                 "--outdir", "results"], cwd=launch, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + KILL_AFTER_S
            while not wanted <= completed_tasks(log):
                assert proc.poll() is None, (launch / "killed_run.out").read_text()[-4000:]
                assert time.monotonic() < deadline, f"{wanted} not completed after {KILL_AFTER_S} s"
                time.sleep(1)
            time.sleep(3)  # let Nextflow record the finished tasks and start the next ones
            assert proc.poll() is None, "the run finished before it could be killed"
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=GRACE_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode != 0
    return completed_tasks(log), (launch / "killed_run.out").read_text()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, nextflow_available):
    """A run killed after its QC tasks, then resumed to completion in the same launch dir."""
    launch = tmp_path_factory.mktemp("nf_killed")
    qc_tasks = {f"COEM_NF:COEM:QC ({s})" for s in SAMPLES}
    done_before_kill, killed_output = run_and_kill(launch, qc_tasks)
    assert not (launch / "results" / "peak2gene").exists(), "the killed run got to the end: kill came too late"
    result = run_nextflow(["run", str(REPO), "-profile", "test", *PCA, "--outdir", "results", "-resume"], launch)
    assert result.returncode == 0, result.output[-6000:]
    return result, done_before_kill


def test_resume_after_kill_reuses_finished_tasks(resumed_run):
    result, done_before_kill = resumed_run
    assert {f"COEM_NF:COEM:QC ({s})" for s in SAMPLES} <= done_before_kill
    status = {r["name"]: r["status"] for r in latest_trace(result.outdir)}
    not_cached = sorted(name for name in done_before_kill if status.get(name) != "CACHED")
    assert not not_cached, f"finished before the kill but re-run on -resume: {not_cached}; trace: {status}"
    reran = [n for n, s in status.items() if s == "COMPLETED"]
    assert any(":PEAK2GENE " in n for n in reran), f"the resume did not finish the pipeline: {status}"


def metacell_assignment(path: Path) -> pd.Series:
    """Cell -> metacell id, from the published metacells .h5mu."""
    from coem.cli._common import quiet_mudata, read_mudata

    with quiet_mudata():
        mdata = read_mudata(str(path), path.name.split(".")[0], "a published metacells .h5mu")
    return mdata.obs["metacell"].astype(str).rename("metacell")


@pytest.mark.parametrize("sample", SAMPLES)
def test_resumed_outputs_equal_a_clean_run(resumed_run, clean_run, sample):
    resumed, clean = resumed_run[0].outdir, clean_run.outdir
    pd.testing.assert_series_equal(metacell_assignment(resumed / "metacells" / f"{sample}.metacells.h5mu"),
                                   metacell_assignment(clean / "metacells" / f"{sample}.metacells.h5mu"))
    for table in (f"metacells/{sample}.metacell_sizes.tsv", f"peak2gene/{sample}.peak2gene.tsv"):
        resumed_table = pd.read_csv(resumed / table, sep="\t")
        assert len(resumed_table) > 0, table
        pd.testing.assert_frame_equal(resumed_table, pd.read_csv(clean / table, sep="\t"), check_exact=True)


def test_warnings_reach_the_summary_and_the_report_section(tmp_path, nextflow_available):
    """A step's warnings file (here written by a beforeScript, in a -stub run) is listed at the end
    of the run, in run_summary.tsv and in the report's 'Warnings and failed samples' section."""
    config = tmp_path / "warn.config"
    config.write_text(
        "process {\n    withName: 'QC' {\n"
        "        beforeScript = { \"printf '%s\\\\tQC\\\\tonly 12 cells left after QC\\\\n' '${task.tag}' > coem_warnings.txt\" }\n"
        "    }\n}\n"
    )
    result = run_nextflow(["run", str(REPO), "-profile", "test", "-stub", "-c", str(config), "--outdir", "results"], tmp_path)
    assert result.returncode == 0, result.output[-4000:]
    assert "Warnings (2):" in result.output and "  sim1 (QC): only 12 cells left after QC" in result.output
    assert "  sim1: ok" in result.output and "  sim2: ok" in result.output
    summary = pd.read_csv(result.outdir / "pipeline_info" / "run_summary.tsv", sep="\t")
    assert sorted(summary["status"]) == ["ok", "ok", "warning", "warning"]
    section = next((tmp_path / "work").rglob("coem_run_summary_mqc.yaml")).read_text()
    assert "Warnings and failed samples" in section and "0 failed sample(s), 2 warning(s)" in section
