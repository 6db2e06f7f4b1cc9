"""Samplesheet validation: every problem named by line and column, all reported together."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coem.cli._common import run_cli
from coem.cli.samplesheet_check import main
from coem.errors import CoemInputError
from coem.samplesheet import COLUMNS, SAMPLE_ID, SampleRow, validate_samplesheet, validate_text, write_samplesheet

REPO = Path(__file__).resolve().parents[2]
HEADER = "sample,h5,h5mu,rna,atac,labels,annotation"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A launch dir with (empty) input files of every kind: only existence is checked here."""
    for name in ("a.h5", "b.h5mu", "c_rna.h5ad", "c_atac.h5ad", "labels.csv", "genes.gtf.gz", "tss.tsv", "x.txt"):
        (tmp_path / name).write_text("")
    return tmp_path


def problems(text: str, base: Path) -> str:
    with pytest.raises(CoemInputError) as err:
        validate_text(text, base, source="sheet.csv")
    return str(err.value)


def test_valid_sheet_resolves_paths_and_keeps_remote(inputs: Path):
    text = (
        f"{HEADER}\n"
        "S1,a.h5,,,,labels.csv,genes.gtf.gz\n"
        f"S2,,{inputs / 'b.h5mu'},,,,tss.tsv\n"
        "S_3.x,,,c_rna.h5ad,c_atac.h5ad,,\n"
        "S4,s3://bucket/run/filtered_feature_bc_matrix.h5,,,,,\n"
        "\n"
    )
    rows = validate_text(text, inputs)
    assert [r.sample for r in rows] == ["S1", "S2", "S_3.x", "S4"]
    assert rows[0].h5 == str((inputs / "a.h5").resolve())
    assert rows[0].labels == str((inputs / "labels.csv").resolve())
    assert rows[0].annotation.endswith("genes.gtf.gz") and Path(rows[0].annotation).is_absolute()
    assert rows[1].h5mu == str((inputs / "b.h5mu").resolve())
    assert (rows[2].rna, rows[2].atac) == (str(inputs / "c_rna.h5ad"), str(inputs / "c_atac.h5ad"))
    assert rows[3].h5 == "s3://bucket/run/filtered_feature_bc_matrix.h5"
    assert [r.input_kind for r in rows] == ["h5", "h5mu", "rna+atac", "h5"]


def test_partial_header_and_bom_are_fine(inputs: Path):
    rows = validate_text("\ufeffsample,h5mu\nP1,b.h5mu\n", inputs)
    assert rows == [SampleRow(sample="P1", h5mu=str(inputs / "b.h5mu"), line=2)]


def test_normalised_csv_has_all_columns(inputs: Path, tmp_path: Path):
    rows = validate_text("sample,h5mu\nP1,b.h5mu\n", inputs)
    out = write_samplesheet(rows, tmp_path / "valid.csv")
    with out.open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == list(COLUMNS) + ["line"] == ["sample", "h5", "h5mu", "rna", "atac", "labels", "annotation", "links", "line"]
    assert table[1] == ["P1", "", str(inputs / "b.h5mu"), "", "", "", "", "", "2"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sample,h5,fastq\nS1,a.h5,x\n", ["line 1, column 'fastq': unknown column"]),
        ("name,h5\nS1,a.h5\n", ["line 1, column 'sample': required column 'sample' is missing",
                                "line 1, column 'name': unknown column"]),
        ("sample,h5,h5\nS1,a.h5,a.h5\n", ["line 1, column 'h5': column appears more than once"]),
        ("sample,h5\n,a.h5\n", ["line 2, column 'sample': empty sample id"]),
        ("sample,h5\nmy sample,a.h5\n", ["line 2, column 'sample': sample id 'my sample' contains spaces"]),
        ("sample,h5\nS/1,a.h5\n", ["line 2, column 'sample': sample id 'S/1' has characters other than"]),
        ("sample,h5\nS1,a.h5\nS2,a.h5\nS1,a.h5\n", ["line 4, column 'sample': duplicate sample id 'S1' (first on line 2)"]),
        ("sample,h5\nS1,missing.h5\n", ["line 2, column 'h5': file not found:", "missing.h5", "base dir"]),
        ("sample,h5\nS1,x.txt\n", ["line 2, column 'h5': 'x.txt' has the wrong extension; expected .h5"]),
        ("sample,h5mu\nS1,a.h5\n", ["line 2, column 'h5mu': 'a.h5' has the wrong extension; expected .h5mu"]),
        ("sample,rna,atac\nS1,a.h5,c_atac.h5ad\n", ["line 2, column 'rna': 'a.h5' has the wrong extension; expected .h5ad"]),
        ("sample,h5,labels\nS1,a.h5,x.txt\n", ["line 2, column 'labels': 'x.txt' has the wrong extension"]),
        ("sample,h5,annotation\nS1,a.h5,labels.csv\n", ["line 2, column 'annotation': 'labels.csv' has the wrong extension",
                                                        ".gtf or .gtf.gz or .tsv or .tsv.gz"]),
        ("sample,h5,h5mu\nS1,a.h5,b.h5mu\n", ["line 2, column 'h5mu': more than one input kind (h5, h5mu)"]),
        ("sample,h5,rna,atac\nS1,a.h5,c_rna.h5ad,c_atac.h5ad\n", ["line 2, column 'rna': more than one input kind (h5, rna+atac)"]),
        ("sample,h5,labels\nS1,,labels.csv\n", ["line 2, column 'h5': no input given; fill exactly one of h5, h5mu or rna+atac"]),
        ("sample,rna,atac\nS1,c_rna.h5ad,\n", ["line 2, column 'atac': 'rna' is given without 'atac'"]),
        ("sample,rna,atac\nS1,,c_atac.h5ad\n", ["line 2, column 'rna': 'atac' is given without 'rna'"]),
        ("sample,h5\nS1,a.h5,extra\n", ["line 2: expected 2 comma-separated fields (as in the header), found 3"]),
        ("", ["line 1: the samplesheet is empty"]),
        ("sample,h5\n\n", ["line 2: the samplesheet has a header but no sample rows"]),
        ("sample,h5\nS1,gs://b/x.h5mu\n", ["line 2, column 'h5': 'gs://b/x.h5mu' has the wrong extension"]),
    ],
)
def test_each_problem_names_line_and_column(inputs: Path, text: str, expected: list[str]):
    message = problems(text, inputs)
    assert message.startswith("file 'sheet.csv': samplesheet has")
    for part in expected:
        assert part in message


def test_all_problems_reported_together(inputs: Path):
    text = "sample,h5,rna,atac\nS1,nope.h5,,\n,a.h5,,\nS 3,,c_rna.h5ad,\nS1,a.h5,,\n"
    message = problems(text, inputs)
    lines = message.splitlines()
    assert lines[0] == "file 'sheet.csv': samplesheet has 5 problems:"
    assert lines[1].startswith("line 2, column 'h5': file not found")
    assert lines[2] == "line 3, column 'sample': empty sample id"
    assert lines[3].startswith("line 4, column 'sample': sample id 'S 3' contains spaces")
    assert lines[4].startswith("line 4, column 'atac': 'rna' is given without 'atac'")
    assert lines[5] == "line 5, column 'sample': duplicate sample id 'S1' (first on line 2)"


def test_line_numbers_count_blank_lines(inputs: Path):
    assert "line 4, column 'h5': file not found" in problems("sample,h5\nS1,a.h5\n\nS2,gone.h5\n", inputs)


def test_relative_paths_use_base_dir_not_cwd(inputs: Path, tmp_path: Path, monkeypatch):
    sheet = tmp_path / "sheets" / "s.csv"
    sheet.parent.mkdir()
    sheet.write_text("sample,h5\nS1,a.h5\n")
    monkeypatch.chdir(sheet.parent)
    assert validate_samplesheet(sheet, base_dir=inputs)[0].h5 == str(inputs / "a.h5")
    with pytest.raises(CoemInputError, match=r"line 2, column 'h5': file not found"):
        validate_samplesheet(sheet)  # default base: the samplesheet's folder, which lacks a.h5


def test_cli_writes_normalised_sheet_and_versions(inputs: Path, tmp_path: Path):
    sheet = tmp_path / "in.csv"
    sheet.write_text("sample,h5\nS1,a.h5\n")
    out, versions = tmp_path / "valid.csv", tmp_path / "versions.yml"
    rc = main(["--input", str(sheet), "--base-dir", str(inputs), "--output", str(out),
               "--process-name", "COEM:SAMPLESHEET_CHECK", "--versions", str(versions)])
    assert rc == 0
    assert out.read_text().splitlines() == [",".join(COLUMNS) + ",line", f"S1,{inputs / 'a.h5'},,,,,,,2"]
    import yaml

    recorded = yaml.safe_load(versions.read_text())
    assert list(recorded) == ["COEM:SAMPLESHEET_CHECK"] and "coem" in recorded["COEM:SAMPLESHEET_CHECK"]


def test_cli_bad_sheet_exits_2_with_error_line(inputs: Path, tmp_path: Path, capsys):
    sheet = tmp_path / "in.csv"
    sheet.write_text("sample,h5\nS1,gone.h5\n")
    rc = run_cli(main, ["--input", str(sheet), "--base-dir", str(inputs), "--output", str(tmp_path / "o.csv"),
                        "--versions", str(tmp_path / "v.yml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: file '{sheet}': samplesheet has 1 problem:\nline 2, column 'h5': file not found")
    assert not (tmp_path / "o.csv").exists()


def test_bin_shim_runs(inputs: Path, tmp_path: Path):
    shim = REPO / "bin" / "coem_samplesheet_check.py"
    assert os.access(shim, os.X_OK)
    sheet = tmp_path / "in.csv"
    sheet.write_text("sample,h5\nS1,a.h5\n,a.h5\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(shim), "--input", str(sheet), "--base-dir", str(inputs),
                           "--output", str(tmp_path / "o.csv")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "line 3, column 'sample': empty sample id" in proc.stderr


def test_schema_matches_validator():
    schema = json.loads((REPO / "assets" / "schema_input.json").read_text())
    props = schema["items"]["properties"]
    assert tuple(props) == COLUMNS
    assert props["sample"]["pattern"] == SAMPLE_ID.pattern
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)

    def ok(row: dict) -> bool:
        return validator.is_valid([{k: v for k, v in row.items() if v}])  # empty cells are absent, as in nf-schema

    assert ok({"sample": "S1", "h5": "x.h5", "labels": "l.csv", "annotation": "g.gtf.gz"})
    assert ok({"sample": "S1", "rna": "r.h5ad", "atac": "a.h5ad", "annotation": "t.tsv"})
    assert not ok({"sample": "S 1", "h5": "x.h5"})
    assert not ok({"sample": "S1", "h5": "x.h5", "h5mu": "x.h5mu"})
    assert not ok({"sample": "S1", "rna": "r.h5ad"})
    assert not ok({"sample": "S1", "labels": "l.csv"})
    assert not ok({"sample": "S1", "h5mu": "x.h5"})
    assert not ok({"sample": "S1", "h5": "x.h5", "fastq": "r.fq"})


def test_no_check_files_skips_existence_but_not_the_rest(inputs: Path):
    rows = validate_text("sample,h5\nS1,missing.h5\n", inputs, check_files=False)
    assert rows[0].h5 == str(inputs / "missing.h5")
    with pytest.raises(CoemInputError, match=r"line 2, column 'h5': .*wrong extension"):
        validate_text("sample,h5\nS1,missing.txt\n", inputs, check_files=False)
