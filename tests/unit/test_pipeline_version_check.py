"""Each task checks that the coem package it runs is the pipeline's version (issue 15)."""

from __future__ import annotations

import coem
from coem.cli._common import run_cli


def _main(argv=None):
    print("ran")
    return 0


def test_mismatch_is_one_error_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("COEM_PIPELINE_VERSION", "9.9.9")
    assert run_cli(_main, []) == 2
    captured = capsys.readouterr()
    assert "ran" not in captured.out  # the step does not start
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ")
    assert "9.9.9" in lines[0] and coem.__version__ in lines[0]
    assert "pip install -e ." in lines[0] and "container" in lines[0]


def test_same_version_runs(monkeypatch, capsys):
    monkeypatch.setenv("COEM_PIPELINE_VERSION", coem.__version__)
    assert run_cli(_main, []) == 0
    assert "ran" in capsys.readouterr().out


def test_outside_nextflow_no_check(monkeypatch, capsys):
    monkeypatch.delenv("COEM_PIPELINE_VERSION", raising=False)
    assert run_cli(_main, []) == 0


def test_manifest_version_is_the_package_version():
    import re
    from pathlib import Path

    config = (Path(__file__).resolve().parents[2] / "nextflow.config").read_text()
    assert re.search(r"version\s*=\s*'([^']+)'", config.split("manifest {")[1]).group(1) == coem.__version__
