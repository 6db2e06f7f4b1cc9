"""Gene annotation readers: where each gene's transcription start site (TSS) lies.

Peak-to-gene links need a TSS per gene. 10x matrices carry one (see ``coem.readers``); other
inputs need a GTF or a TSS table. Both readers return the same table, one row per gene:

    symbol, gene_id, chrom, start, end, strand, tss

with 1-based inclusive ``start``/``end`` (as in GTF) and ``tss`` 1-based: ``start`` for ``+``
strand genes, ``end`` for ``-`` strand genes (the convention of shared/data/annotation/*.tsv).
Non-empty symbols are unique: the first record of a symbol wins (deterministic; GTFs list the
primary chromosome copy of a PAR gene first). Rows without a symbol ('') are kept for gene_id
matching.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd

from coem.errors import CoemInputError

TSS_COLUMNS = ("symbol", "gene_id", "chrom", "start", "end", "strand", "tss")
_GTF_ATTR = re.compile(r'(\w+)\s+"([^"]*)"')
_GTF_FIELDS = 9


def read_annotation(path: str | Path) -> pd.DataFrame:
    """Read a GTF (``.gtf``/``.gtf.gz``) or a TSS table (``.tsv``/``.tsv.gz``), chosen by extension."""
    name = str(path).lower()
    if name.endswith((".gtf", ".gtf.gz")):
        return read_gtf(path)
    if name.endswith((".tsv", ".tsv.gz")):
        return read_tss_table(path)
    raise CoemInputError(
        "unknown annotation format: use a GTF (.gtf, .gtf.gz) or a TSS table (.tsv, .tsv.gz) "
        f"with columns {', '.join(TSS_COLUMNS)}",
        file=path,
    )


def read_tss_table(path: str | Path) -> pd.DataFrame:
    """Read a tab-separated TSS table with the columns of shared/data/annotation/*.tsv."""
    try:
        table = pd.read_csv(path, sep="\t", dtype={"symbol": str, "gene_id": str, "chrom": str, "strand": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CoemInputError(f"cannot read the TSS table: {err}", file=path) from err
    missing = [c for c in TSS_COLUMNS if c not in table.columns]
    if missing:
        raise CoemInputError(
            f"TSS table lacks column(s) {', '.join(missing)}; expected tab-separated columns "
            f"{', '.join(TSS_COLUMNS)} (found: {', '.join(map(str, table.columns))})",
            file=path,
        )
    table = table.loc[:, list(TSS_COLUMNS)]
    for col in ("start", "end", "tss"):
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2  # header is line 1
            raise CoemInputError(f"TSS table line {row}: column '{col}' is not an integer", file=path)
        table[col] = values.astype(np.int64)
    return _finish(table, path)


def read_gtf(path: str | Path) -> pd.DataFrame:
    """Gene records of a GTF -> one row per gene (symbol from ``gene_name``, else ``gene_id``).

    GTFs without ``gene`` lines (UCSC style) fall back to the span of each gene's transcripts.
    """
    records = _gtf_records(path, {"gene", "transcript"})
    genes = [r for r in records if r[0] == "gene"] or [r for r in records if r[0] == "transcript"]
    if not genes:
        raise CoemInputError("GTF has no gene or transcript records (column 3 'gene'/'transcript')", file=path)
    table = pd.DataFrame(
        [r[1:] for r in genes], columns=["chrom", "start", "end", "strand", "gene_id", "symbol"]
    )
    table = table.groupby(["gene_id"], sort=False).agg(
        symbol=("symbol", "first"), chrom=("chrom", "first"), start=("start", "min"),
        end=("end", "max"), strand=("strand", "first"),
    ).reset_index()
    table["tss"] = np.where(table["strand"] == "-", table["end"], table["start"]).astype(np.int64)
    return _finish(table.loc[:, list(TSS_COLUMNS)], path)


def _open_text(path: str | Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    return open(path, "rt")


def _gtf_records(path: str | Path, features: set[str]) -> list[tuple]:
    """Parse the GTF lines whose feature type is in ``features`` (one pass, streaming)."""
    out = []
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                if line.startswith("#") or not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) != _GTF_FIELDS:
                    raise CoemInputError(
                        f"GTF line {lineno}: expected 9 tab-separated fields, found {len(fields)}", file=path
                    )
                if fields[2] not in features:
                    continue
                attrs = dict(_GTF_ATTR.findall(fields[8]))
                gene_id = attrs.get("gene_id")
                if not gene_id:
                    raise CoemInputError(f"GTF line {lineno}: record has no gene_id attribute", file=path)
                try:
                    start, end = int(fields[3]), int(fields[4])
                except ValueError as err:
                    raise CoemInputError(f"GTF line {lineno}: start/end are not integers", file=path) from err
                symbol = attrs.get("gene_name") or gene_id
                out.append((fields[2], fields[0], start, end, fields[6], gene_id, symbol))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise CoemInputError(f"cannot read the GTF: {err}", file=path) from err
    return out


def _finish(table: pd.DataFrame, path) -> pd.DataFrame:
    """Common clean-up: strings, strand check, one row per symbol."""
    table = table.copy()
    for col in ("symbol", "gene_id", "chrom", "strand"):
        table[col] = table[col].fillna("").astype(str)
    bad = ~table["strand"].isin(["+", "-", "."])
    if bad.any():
        raise CoemInputError(
            f"annotation has strand values other than '+', '-', '.': {sorted(set(table.loc[bad, 'strand']))[:5]}",
            file=path,
        )
    if table.empty:
        raise CoemInputError("annotation holds no genes", file=path)
    # Rows without a symbol stay: they can still match by gene_id.
    table = table[(table["symbol"] == "") | ~table["symbol"].duplicated(keep="first")]
    return table.reset_index(drop=True)


def strip_version(gene_ids) -> np.ndarray:
    """``ENSG00000116824.12`` -> ``ENSG00000116824`` so that ids match across annotation releases."""
    return np.array([re.sub(r"^(ENS[A-Z]*\d+)\.\d+$", r"\1", str(g)) for g in gene_ids], dtype=object)
