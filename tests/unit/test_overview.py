"""The report's overview table (coem.overview): one row per sample from the steps' tables."""

from __future__ import annotations

import json

from coem import multiqc
from coem.cli.overview import main
from coem.overview import overview_rows, read_sections


def _write_steps(folder):
    multiqc.table(folder / "a_qc_summary_mqc.json", "coem_qc_summary", "QC", "",
                  {"S1": {"cells_before": 620, "cells_after": 600}, "S2": {"cells_before": 100, "cells_after": 90}})
    multiqc.table(folder / "S1_vae_summary_mqc.json", "coem_vae_summary", "VAE", "",
                  {"S1": {"device": "cpu (1 threads)", "seconds_per_epoch": 0.5, "epochs_run": 20}})
    multiqc.table(folder / "S1_metacells_summary_mqc.json", "coem_metacells_summary", "MC", "",
                  {"S1": {"metacells": 8, "seconds": 1.25}})
    multiqc.table(folder / "S2_metacells_summary_mqc.json", "coem_metacells_summary", "MC", "",
                  {"S2": {"metacells": 2, "seconds": 0.5}})
    multiqc.table(folder / "S1_peak2gene_summary_mqc.json", "coem_peak2gene_summary", "P2G", "",
                  {"S1": {"significant": 171, "pairs": 3949}})
    multiqc.table(folder / "S1_evaluation_mqc.json", "coem_evaluation", "Eval", "",
                  {"S1": {"purity_cells": 0.81, "purity_mean": 0.8, "dubious_pct": 25.0, "warnings": "none"}})
    multiqc.boxplot(folder / "S1_purity_mqc.json", "coem_purity", "Purity", "", {"S1": [1.0, 0.5]})


def test_overview_rows_gather_each_sample(tmp_path):
    _write_steps(tmp_path)
    rows = overview_rows(read_sections(sorted(tmp_path.glob("*_mqc.json"))))
    assert rows["S1"] == {"cells_in": 620, "cells_out": 600, "metacells": 8, "purity": 0.81, "dubious_pct": 25.0,
                          "significant_links": 171, "warnings": "none", "seconds": 11.2,  # 0.5 * 20 + 1.25
                          "device": "cpu (1 threads)"}
    assert rows["S2"] == {"cells_in": 100, "cells_out": 90, "metacells": 2, "seconds": 0.5, "device": "cpu (no VAE)"}


def test_cli_writes_the_overview_section(tmp_path, monkeypatch):
    (tmp_path / "1").mkdir()  # MULTIQC stages each input under its own folder
    _write_steps(tmp_path / "1")
    monkeypatch.chdir(tmp_path)
    assert main(["--input-dir", ".", "--output", "coem_overview_mqc.json"]) == 0
    content = json.loads((tmp_path / "coem_overview_mqc.json").read_text())
    assert content["id"] == "coem_overview" and content["plot_type"] == "table"
    assert set(content["data"]) == {"S1", "S2"} and set(content["headers"]) >= set(content["data"]["S1"])
    assert "Good:" in content["description"]
    # run again: its own output is not read back
    assert main(["--input-dir", ".", "--output", "coem_overview_mqc.json"]) == 0
    assert json.loads((tmp_path / "coem_overview_mqc.json").read_text())["data"] == content["data"]
