"""Samplesheet validation: every problem found at once, each named by line and column.

The samplesheet is a CSV with one row per sample: ``sample`` plus exactly one input kind

    h5            a 10x cellranger-arc filtered_feature_bc_matrix.h5
    h5mu          a MuData file with rna and atac modalities
    rna + atac    a pair of AnnData .h5ad files

and optionally ``labels`` (CSV/TSV: barcode,label), ``annotation`` (GTF or TSS table) and
``links`` (CSV/TSV with columns gene, peak: known links, e.g. a simulator's truth, to score the
peak-to-gene links against).
Line numbers are those of the file (1-based, header = line 1), so an operator can jump to
them. Relative paths resolve against ``base_dir`` (the pipeline's launch dir); remote URIs are
passed through without an existence check, because Nextflow stages them itself.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import astuple, dataclass
from pathlib import Path

from coem.errors import CoemInputError

COLUMNS = ("sample", "h5", "h5mu", "rna", "atac", "labels", "annotation", "links")
INPUT_KINDS = ("h5", "h5mu", "rna+atac")
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REMOTE_PREFIXES = ("s3://", "gs://", "az://", "http://", "https://")
EXTENSIONS = {
    "h5": (".h5",),
    "h5mu": (".h5mu",),
    "rna": (".h5ad",),
    "atac": (".h5ad",),
    "labels": (".csv", ".tsv", ".csv.gz", ".tsv.gz"),
    "annotation": (".gtf", ".gtf.gz", ".tsv", ".tsv.gz"),
    "links": (".csv", ".tsv", ".csv.gz", ".tsv.gz"),
}
FILE_COLUMNS = tuple(EXTENSIONS)


@dataclass(frozen=True)
class SampleRow:
    """One validated samplesheet row; absent inputs are empty strings, paths are absolute."""

    sample: str
    h5: str = ""
    h5mu: str = ""
    rna: str = ""
    atac: str = ""
    labels: str = ""
    annotation: str = ""
    links: str = ""
    line: int = 0  # line in the user's samplesheet, so later errors can point back to it

    @property
    def input_kind(self) -> str:
        """'h5', 'h5mu' or 'rna+atac'."""
        if self.h5:
            return "h5"
        if self.h5mu:
            return "h5mu"
        return "rna+atac"

    def as_dict(self) -> dict[str, str]:
        return dict(zip(COLUMNS, astuple(self)))  # input columns only (line is not one)



def is_remote(value: str) -> bool:
    """Remote URIs are staged by Nextflow: we cannot (and need not) check them here."""
    return value.lower().startswith(REMOTE_PREFIXES)


def validate_samplesheet(
    path: str | Path, base_dir: str | Path | None = None, check_files: bool = True
) -> list[SampleRow]:
    """Read and validate a samplesheet file; raise one CoemInputError listing every problem.

    ``check_files=False`` skips the existence checks (inside a container the user's files are
    not mounted; the pipeline then checks them itself when it stages them).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CoemInputError(f"cannot read the samplesheet: {err}", file=path) from err
    base = Path(base_dir) if base_dir is not None else path.parent
    return validate_text(text, base, source=str(path), check_files=check_files)


def validate_text(
    text: str, base_dir: str | Path, source: str | None = None, check_files: bool = True
) -> list[SampleRow]:
    """Validate samplesheet CSV text (kept apart from file reading so tests need no file)."""
    errors: list[str] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        _raise(["line 1: the samplesheet is empty; expected a header line starting with 'sample'"], source)
    header = [h.strip() for h in header]
    errors += _check_header(header)
    rows: list[SampleRow] = []
    seen: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(v.strip() for v in record):
            continue  # blank lines are harmless
        n_known = len(errors)
        row = _check_row(header, record, line, Path(base_dir), errors, check_files)
        if row is None:
            continue
        _name_sample(errors, n_known, row.sample)
        if row.sample in seen:
            errors.append(f"line {line}, column 'sample': duplicate sample id '{row.sample}' (first on line {seen[row.sample]})")
        elif row.sample:
            seen[row.sample] = line
        rows.append(row)
    if not rows and not errors:
        errors.append("line 2: the samplesheet has a header but no sample rows")
    if errors:
        _raise(errors, source)
    return rows


def _name_sample(errors: list[str], first: int, sample: str) -> None:
    """Suffix a row's problems (``errors[first:]``) with its sample id, so each names its sample."""
    if sample and SAMPLE_ID.match(sample):
        errors[first:] = [f"{problem} (sample '{sample}')" for problem in errors[first:]]


def _raise(errors: list[str], source: str | None) -> None:
    head = f"samplesheet has {len(errors)} problem{'s' if len(errors) > 1 else ''}:"
    raise CoemInputError("\n".join([head] + errors), file=source)


def _check_header(header: list[str]) -> list[str]:
    errors = []
    for name in header:
        if name not in COLUMNS:
            errors.append(f"line 1, column '{name}': unknown column; allowed columns are {', '.join(COLUMNS)}")
    for name in sorted({h for h in header if header.count(h) > 1}):
        errors.append(f"line 1, column '{name}': column appears more than once")
    if "sample" not in header:
        errors.append("line 1, column 'sample': required column 'sample' is missing")
    return errors


def _check_row(header, record, line, base_dir: Path, errors: list[str], check_files: bool = True) -> SampleRow | None:
    """Check one row; append its problems to ``errors``; return the row (None when unusable)."""
    if len(record) != len(header):
        errors.append(f"line {line}: expected {len(header)} comma-separated fields (as in the header), found {len(record)}")
        return None
    values = {h: v.strip() for h, v in zip(header, record) if h in COLUMNS}
    sample = values.get("sample", "")
    if "sample" in header:
        problem = _check_sample_id(sample)
        if problem:
            errors.append(f"line {line}, column 'sample': {problem}")
    out = {"sample": sample}
    for col in FILE_COLUMNS:
        value = values.get(col, "")
        if value:
            out[col], problem = _check_file(col, value, base_dir, check_files)
            if problem:
                errors.append(f"line {line}, column '{col}': {problem}")
    errors += [f"line {line}, {p}" for p in _check_input_kind(values)]
    return SampleRow(**out, line=line)


def _check_sample_id(sample: str) -> str | None:
    if not sample:
        return "empty sample id"
    if any(ch.isspace() for ch in sample):
        return f"sample id '{sample}' contains spaces; use letters, digits, '.', '_' or '-'"
    if not SAMPLE_ID.match(sample):
        return (f"sample id '{sample}' has characters other than letters, digits, '.', '_', '-' "
                "(or does not start with a letter or digit)")
    return None


def _check_file(col: str, value: str, base_dir: Path, check_files: bool = True) -> tuple[str, str | None]:
    """Return the resolved path and a problem (None when fine)."""
    if not value.lower().endswith(EXTENSIONS[col]):
        return value, f"'{value}' has the wrong extension; expected {' or '.join(EXTENSIONS[col])}"
    if is_remote(value):
        return value, None
    if value.startswith("file://"):
        value = value[len("file://"):]
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = Path(str(path.resolve()))
    if check_files and not path.is_file():
        return str(path), f"file not found: {path} (relative paths resolve against the base dir {base_dir})"
    return str(path), None


def _check_input_kind(values: dict[str, str]) -> list[str]:
    """Exactly one of h5 / h5mu / rna+atac, and rna and atac only together."""
    problems = []
    rna, atac = bool(values.get("rna")), bool(values.get("atac"))
    if rna and not atac:
        problems.append("column 'atac': 'rna' is given without 'atac'; an .h5ad pair needs both")
    if atac and not rna:
        problems.append("column 'rna': 'atac' is given without 'rna'; an .h5ad pair needs both")
    given = [k for k, present in (("h5", values.get("h5")), ("h5mu", values.get("h5mu")), ("rna+atac", rna or atac)) if present]
    if not given:
        problems.append("column 'h5': no input given; fill exactly one of h5, h5mu or rna+atac")
    elif len(given) > 1:
        problems.append(f"column '{given[1].split('+')[0]}': more than one input kind ({', '.join(given)}); "
                        "fill exactly one of h5, h5mu or rna+atac")
    return problems


def write_samplesheet(rows: list[SampleRow], path: str | Path) -> Path:
    """The normalised samplesheet: all columns, absolute paths, empty cells for absent inputs."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS + ("line",))
        for row in rows:
            writer.writerow(astuple(row))
    return path
