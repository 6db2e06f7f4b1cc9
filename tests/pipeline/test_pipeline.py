"""Real Nextflow runs of the pipeline: test profile, -stub, -resume, bad input, --help."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from .conftest import REPO, latest_trace, run_nextflow

pytestmark = pytest.mark.pipeline

SAMPLES = ("sim1", "sim2")
# Section ids our steps write; MultiQC drops an invalid section silently, so assert them.
EXPECTED_SECTIONS = {
    "coem_qc_summary", "coem_qc_rna_counts", "coem_qc_atac_counts",
    "coem_metacells_summary", "coem_metacell_sizes",
    "coem_peak2gene_summary", "coem_peak2gene_r", "coem_peak2gene_distance", "coem_peak2gene_truth",
    "coem_overview", "coem_vae_summary", "coem_vae_loss", "coem_evaluation", "coem_purity",
    *(f"coem_cells_2d_{what}_{sample}" for what in ("metacell", "label") for sample in SAMPLES),
}
# Tables among them (rendered as <table>); the others are plots (rendered as SVG by plotly).
TABLE_SECTIONS = {"coem_qc_summary", "coem_metacells_summary", "coem_peak2gene_summary", "coem_peak2gene_truth",
                  "coem_overview", "coem_vae_summary", "coem_evaluation"}


def _multiqc_data(outdir):
    return json.loads((outdir / "multiqc" / "multiqc_data" / "multiqc_data.json").read_text())


def test_test_profile_publishes_every_step(test_profile_run):
    out = test_profile_run.outdir
    assert (out / "multiqc" / "multiqc_report.html").stat().st_size > 10_000
    for sample in SAMPLES:
        assert (out / "qc" / f"{sample}.qc_summary.json").exists()
        assert (out / "metacells" / f"{sample}.metacells.h5mu").exists()
        assert (out / "metacells" / f"{sample}.metacell_sizes.tsv").exists()
        assert (out / "aggregate" / f"{sample}.aggregated.h5mu").exists()
        assert (out / "peak2gene" / f"{sample}.peak2gene.tsv").exists()
        assert (out / "peak2gene" / f"{sample}.peak2gene_significant.bedpe").exists()
    versions = (out / "pipeline_info" / "coem_software_mqc_versions.yml").read_text()
    assert "Nextflow" in versions and "numpy" in versions


def test_report_has_our_sections_with_one_row_per_sample(test_profile_run):
    data = _multiqc_data(test_profile_run.outdir)
    section_ids = {s for s in data["report_data_sources"].get("Custom content", {})} | set(
        data.get("report_plot_data", {}).keys()
    )
    text = json.dumps(data)
    missing = {sid for sid in EXPECTED_SECTIONS if sid not in text}
    assert not missing, f"sections missing from multiqc_data.json: {missing}; found {sorted(section_ids)[:30]}"
    saved = data["report_saved_raw_data"]
    assert set(saved["multiqc_coem_qc_summary_plot"]) == set(SAMPLES)  # one QC row per sample
    assert set(saved["multiqc_coem_metacells_summary_plot"]) == set(SAMPLES)
    assert set(saved["multiqc_coem_peak2gene_summary_plot"]) == set(SAMPLES)
    assert set(saved["multiqc_coem_peak2gene_truth_plot"]) == set(SAMPLES)  # the test samplesheet's links column
    assert set(saved["multiqc_general_stats"]) == set(SAMPLES)
    # HTML-only sections keep no data in multiqc_data.json: look for them in the report itself.
    report = (test_profile_run.outdir / "multiqc" / "multiqc_report.html").read_text()
    assert 'id="coem-params-summary"' in report and "Software Versions" in report


def test_report_reads_well(test_profile_run):
    """Issue 16: loss curves in epoch order, no number above 1e6 in any table unless flagged,
    the overview row per sample, the dubious-metacell share."""
    data = _multiqc_data(test_profile_run.outdir)
    lines = data["report_plot_data"]["coem_vae_loss_plot"]["datasets"][0]["lines"]
    assert len(lines) == 4  # train and validation per sample
    for line in lines:
        xs = [x for x, _ in line["pairs"]]
        assert all(isinstance(x, (int, float)) for x in xs) and xs == sorted(xs) and xs[0] == 1
    saved = data["report_saved_raw_data"]
    for table_id, table in saved.items():
        for sample, row in table.items():
            if not isinstance(row, dict):
                continue
            flagged = str(row.get("warnings", "none")) != "none"
            for col, value in row.items():
                if isinstance(value, (int, float)) and abs(value) > 1e6:
                    assert flagged, f"{table_id} {sample} {col} = {value:.3g} unflagged"
    evaluation = saved["multiqc_coem_evaluation_plot"]
    overview = saved["multiqc_coem_overview_plot"]
    assert set(evaluation) == set(overview) == set(SAMPLES)
    for sample in SAMPLES:
        assert 0 <= evaluation[sample]["dubious_pct"] <= 100
        assert evaluation[sample]["compactness_atac_median"] < 1e6
        row = overview[sample]
        assert row["cells_in"] >= row["cells_out"] > 0 and row["metacells"] > 0 and row["significant_links"] > 0
        assert 0 < row["purity"] <= 1 and row["device"].startswith("cpu") and row["seconds"] > 0


def test_every_section_renders_in_a_headless_browser(test_profile_run):
    """The report opened in headless Chromium: every section of ours is drawn (plots as SVG,
    tables as <table>), with none left behind a 'Show plot' button."""
    import re
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium/Chrome on PATH to open the report")
    report = test_profile_run.outdir / "multiqc" / "multiqc_report.html"
    dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=300).stdout
    for sid in EXPECTED_SECTIONS:
        start = dom.find(f'id="{sid}_plot"')
        assert start >= 0, f"{sid} not in the rendered report"
        section = dom[start:]
        end = section.find('class="mqc-section', 10)
        section = section[: end if end > 0 else len(section)]
        assert ("<table" if sid in TABLE_SECTIONS else "main-svg") in section, f"{sid} not drawn"
    # the overview comes first among our sections
    order = [m.group(1) for m in re.finditer(r'id="(coem_[a-z0-9_]+?)_plot"', dom)]
    assert order[0] == "coem_overview"


def test_metacell_count_matches_request(test_profile_run):
    import mudata

    for sample in SAMPLES:
        qc = json.loads((test_profile_run.outdir / "qc" / f"{sample}.qc_summary.json").read_text())
        sizes = pd.read_csv(test_profile_run.outdir / "metacells" / f"{sample}.metacell_sizes.tsv", sep="\t")
        n_cells = sizes["size"].sum()
        assert n_cells == qc["cells_after"]
        assert len(sizes) == max(1, round(n_cells / 20))  # test profile: 20 cells per metacell
        assert (sizes["size"] > 0).all()
        agg = mudata.read_h5mu(test_profile_run.outdir / "aggregate" / f"{sample}.aggregated.h5mu")
        assert agg.n_obs == len(sizes)


def test_links_of_the_test_data_are_calibrated_against_the_planted_truth(test_profile_run):
    """The simulator's planted links (the samplesheet's links column) score the published links."""
    for sample in SAMPLES:
        summary = json.loads((test_profile_run.outdir / "peak2gene" / f"{sample}.peak2gene_summary.json").read_text())
        truth = summary["known_links"]
        significant = pd.read_csv(test_profile_run.outdir / "peak2gene" / f"{sample}.peak2gene_significant.tsv",
                                  sep="\t")
        assert summary["metacells"]["n_significant"] == len(significant) > 50
        assert truth["precision"] >= 0.85  # FDR 0.1: at most ~10% not planted (measured 0.90-0.92)
        assert truth["auprc"] >= 3 * truth["base_rate"]  # measured 0.68-0.69 against 0.14


def test_resume_caches_every_finished_task(test_profile_run):
    result = run_nextflow(
        ["run", str(REPO), "-profile", "test", "--outdir", "results", "-resume"], test_profile_run.launch_dir
    )
    assert result.returncode == 0, result.output[-4000:]
    rows = latest_trace(test_profile_run.outdir)
    assert rows, "empty trace"
    not_cached = [r["name"] for r in rows if r["status"] != "CACHED"]
    assert not not_cached, f"tasks re-run on -resume: {not_cached}"


def test_stub_run_of_the_whole_dag(tmp_path):
    result = run_nextflow(
        ["run", str(REPO), "-profile", "test", "-stub", "--run_baselines", "--outdir", "results"], tmp_path
    )
    assert result.returncode == 0, result.output[-4000:]
    processes = {r["process"].split(":")[-1] for r in latest_trace(tmp_path / "results")}
    assert {"SAMPLESHEET_CHECK", "QC", "METACELLS", "AGGREGATE", "PEAK2GENE", "EVALUATE", "BASELINES", "MULTIQC"} <= processes
    assert processes & {"TRAIN_VAE", "EMBED"}


def test_missing_file_fails_fast_naming_line_and_problem(tmp_path):
    data = REPO / "assets" / "test_data"
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(
        "sample,h5mu,labels\n"
        f"good,{data / 'sim2.h5mu'},\n"
        f"bad,{tmp_path / 'does_not_exist.h5mu'},\n"
    )
    result = run_nextflow(["run", str(REPO), "--input", str(sheet), "--outdir", "x"], tmp_path)
    assert result.returncode != 0
    assert "line 3" in result.output and "does_not_exist.h5mu" in result.output
    assert "not found" in result.output or "does not exist" in result.output
    assert result.seconds < 60, f"took {result.seconds:.0f} s"
    assert not (tmp_path / "x" / "qc").exists(), "nothing may be published for a bad samplesheet"


def test_help_lists_parameters_from_schema(tmp_path):
    result = run_nextflow(["run", str(REPO), "--help"], tmp_path)
    assert result.returncode == 0, result.output[-2000:]
    for param in ("--input", "--cells_per_metacell", "--embedding", "--qc_min_genes", "--p2g_window"):
        assert param in result.output


def test_invalid_parameter_value_is_rejected(tmp_path):
    result = run_nextflow(
        ["run", str(REPO), "-profile", "test", "--embedding", "umap", "--vae_max_peak_fraction", "1.5",
         "--vae_n_peaks", "-1", "--outdir", "x"], tmp_path
    )
    assert result.returncode != 0
    assert "--embedding" in result.output and "umap" in result.output
    # Every bad value is reported in the same run, with the schema's bound.
    assert "--vae_max_peak_fraction: 1.5 is above the maximum 1" in result.output
    assert "--vae_n_peaks: -1 is below the minimum 0" in result.output


def test_no_profile_no_resource_flags_runs_on_this_machine(tmp_path, nextflow_available):
    """What a newcomer runs: no -profile, no --max_cpus / --max_memory, on the CI machine (2 cores
    here). Only science parameters are shortened (15 epochs, as in the test profile) to keep CI quick."""
    import os

    sheet = REPO / "assets" / "samplesheet_test.csv"
    result = run_nextflow(["run", str(REPO), "--input", str(sheet), "--outdir", "results",
                           "--vae_epochs", "15", "--cells_per_metacell", "20"], tmp_path)
    assert result.returncode == 0, result.output[-6000:]
    rows = latest_trace(result.outdir)
    train = [r for r in rows if r["process"].endswith("TRAIN_VAE")]
    assert len(train) == 2 and all(r["status"] == "COMPLETED" for r in rows)
    assert {int(r["cpus"]) for r in train} == {min(4, os.cpu_count())}  # asked for 4, capped at the machine
    for sample in SAMPLES:
        qc = json.loads((result.outdir / "qc" / f"{sample}.qc_summary.json").read_text())
        assert qc["mode"] == "auto" and qc["cells_after"] >= 0.97 * qc["cells_before"]
        assert qc["derivation"]["min_rna_counts"]["source"] in {"mad", "floor"}
    row = _multiqc_data(result.outdir)["report_saved_raw_data"]["multiqc_coem_qc_summary_plot"]["sim1"]
    assert row["qc_mode"] == "auto" and "threshold_min_rna_counts" in row and "failed_min_rna_counts" in row


def _task_bytes(task_dir):
    """(bytes of the staged inputs, bytes the task wrote) of one Nextflow task directory."""
    read = written = 0
    for path in task_dir.iterdir():
        if path.name.startswith(".command") or path.name in (".exitcode",):
            continue
        if path.is_symlink():  # a staged input
            target = path.resolve()
            read += sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() \
                else target.stat().st_size
        elif path.is_file():
            written += path.stat().st_size
    return read, written


def test_steps_after_qc_write_only_what_they_add(test_profile_run):
    """Issue 14: the counts are written once (QC) and once more for the published MuData (EXPORT);
    every other step writes under a tenth of the sample's counts (the QC output, what each step
    would have copied before). The VAE checkpoint is left out of TRAIN_VAE's share: its size is
    the model's (features x hidden units), not the sample's, and dominates on the 600-cell test
    data. AGGREGATE writes the metacell counts: 30 metacells of 20 cells each keep most of the
    features' non-zeros here (about a fifth of the QC file)."""
    work = test_profile_run.launch_dir / "work"
    counts = {p.name.split(".")[0]: p.stat().st_size for p in work.glob("*/*/*.qc.h5mu") if not p.is_symlink()}
    assert set(counts) == set(SAMPLES)
    seen = set()
    for command in work.glob("*/*/.command.sh"):
        script = command.read_text()
        step = next((s for s in ("train_vae", "embed", "metacells", "aggregate", "evaluate", "peak2gene", "export",
                                 "qc") if f"coem_{s}.py" in script), None)
        if step is None:
            continue
        seen.add(step)
        sample = next(s for s in SAMPLES if f"--sample {s}" in script)
        read, written = _task_bytes(command.parent)
        if step == "train_vae":
            written -= sum(p.stat().st_size for p in command.parent.glob("*.vae.pt"))
        assert read > 0 and written > 0, step
        if step in ("qc", "export"):
            continue  # the counts, once filtered and once published
        limit = 0.25 if step == "aggregate" else 0.1
        assert written < limit * counts[sample], f"{step} wrote {written:,} bytes; the counts are {counts[sample]:,}"
    assert {"qc", "train_vae", "metacells", "aggregate", "evaluate", "peak2gene", "export"} <= seen
