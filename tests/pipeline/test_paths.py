"""Issue 15: paths with spaces, non-ASCII letters, commas and quotes work everywhere: the
samplesheet's folder, the data files, --outdir and the work directory."""

from __future__ import annotations

import csv
import shutil

import pytest

from .conftest import REPO, run_nextflow

pytestmark = pytest.mark.pipeline

ODD = "dossier été, l'essai"  # a space, non-ASCII letters, a comma and a single quote


def test_odd_paths_everywhere(tmp_path, nextflow_available):
    data = tmp_path / ODD / "données brutes"
    data.mkdir(parents=True)
    h5mu = data / "sim2, run 'A'.h5mu"
    labels = data / "étiquettes, v1.csv"
    shutil.copy(REPO / "assets" / "test_data" / "sim2.h5mu", h5mu)
    shutil.copy(REPO / "assets" / "test_data" / "sim2_labels.csv", labels)
    sheet = tmp_path / ODD / "feuille d'échantillons.csv"
    with sheet.open("w", newline="", encoding="utf-8") as handle:  # the csv module quotes the commas
        writer = csv.writer(handle)
        writer.writerow(["sample", "h5mu", "labels"])
        writer.writerow(["sim2", f"données brutes/{h5mu.name}", f"données brutes/{labels.name}"])
    outdir = tmp_path / f"{ODD} résultats"
    work = tmp_path / f"{ODD} work"
    launch = tmp_path / "launch"
    result = run_nextflow(["run", str(REPO), "-profile", "test", "--embedding", "pca_lsi", "--input", str(sheet),
                           "--outdir", str(outdir), "-work-dir", str(work)], launch)
    assert result.returncode == 0, result.output[-6000:]
    assert (outdir / "metacells" / "sim2.metacells.h5mu").is_file()
    assert (outdir / "peak2gene" / "sim2.peak2gene_significant.tsv").is_file()
    assert (outdir / "multiqc" / "multiqc_report.html").is_file()
    summary = (outdir / "pipeline_info" / "run_summary.tsv").read_text()
    assert "sim2\tok" in summary
