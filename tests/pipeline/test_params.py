"""Fail early on parameters (issue 15): a misspelt parameter names the closest known one, and
values outside the schema's bounds are rejected before any task starts."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO, run_nextflow

pytestmark = pytest.mark.pipeline


def test_misspelt_parameter_names_the_closest(tmp_path):
    result = run_nextflow(["run", str(REPO), "-profile", "test", "--n_metacell", "5", "--outdir", "x"], tmp_path)
    assert result.returncode != 0
    assert "Unknown parameter --n_metacell: did you mean --n_metacells?" in result.output
    assert result.seconds < 60, f"took {result.seconds:.0f} s"
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir()), "a task ran"


@pytest.mark.parametrize("flag,value,message", [
    ("--n_metacells", "2", "--n_metacells: 2 is below the minimum 3"),
    ("--cells_per_metacell", "1", "--cells_per_metacell: 1 is below the minimum 2"),
    ("--knn_k", "1", "--knn_k: 1 is below the minimum"),
    ("--vae_epochs", "0", "--vae_epochs: 0 is below the minimum 1"),
    ("--p2g_fdr", "0", "--p2g_fdr: 0 must be above 0"),
])
def test_out_of_range_value_fails_before_any_task(tmp_path, flag, value, message):
    result = run_nextflow(["run", str(REPO), "-profile", "test", flag, value, "--outdir", "x"], tmp_path)
    assert result.returncode != 0
    assert message in result.output, result.output[-2000:]
    assert not (tmp_path / "x" / "qc").exists()


def test_schema_bounds_the_parameters_that_need_it():
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    props = {n: d for group in schema["$defs"].values() for n, d in group["properties"].items()}
    assert props["n_metacells"]["minimum"] == 3
    assert props["cells_per_metacell"]["minimum"] == 2
    assert props["knn_k"]["minimum"] >= 2
    assert props["vae_epochs"]["minimum"] == 1
    assert props["p2g_fdr"]["exclusiveMinimum"] == 0 and props["p2g_fdr"]["maximum"] == 1
    unbounded = [n for n, d in props.items()
                 if {"integer", "number"} & set(d["type"] if isinstance(d["type"], list) else [d["type"]])
                 and not {"minimum", "exclusiveMinimum"} & set(d)]
    assert not unbounded, f"numeric parameters without a lower bound: {unbounded}"
