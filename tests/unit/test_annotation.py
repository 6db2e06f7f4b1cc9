"""Gene annotation readers: GTF and TSS table -> one row per gene with a 1-based stranded TSS."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from coem.annotation import TSS_COLUMNS, read_annotation, read_gtf, read_tss_table, strip_version
from coem.errors import CoemInputError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

GTF = "\n".join([
    "#!genome-build GRCh38",
    'chr1\tHAVANA\tgene\t1000\t5000\t.\t+\t.\tgene_id "ENSG01.5"; gene_type "protein_coding"; gene_name "PLUS";',
    'chr1\tHAVANA\ttranscript\t1000\t4000\t.\t+\t.\tgene_id "ENSG01.5"; transcript_id "T1"; gene_name "PLUS";',
    'chr1\tHAVANA\texon\t1000\t1200\t.\t+\t.\tgene_id "ENSG01.5"; transcript_id "T1"; gene_name "PLUS";',
    'chr2\tHAVANA\tgene\t7000\t9000\t.\t-\t.\tgene_id "ENSG02.1"; gene_name "MINUS";',
    'chrX\tHAVANA\tgene\t100\t200\t.\t+\t.\tgene_id "ENSG03.2";',
    'chrY\tHAVANA\tgene\t300\t400\t.\t+\t.\tgene_id "ENSG04.1"; gene_name "PLUS";',
    "",
])


def write_gtf(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["genes.gtf", "genes.gtf.gz"])
def test_gtf_gene_records_give_stranded_tss(tmp_path: Path, name: str):
    table = read_annotation(write_gtf(tmp_path / name, GTF))
    assert list(table.columns) == list(TSS_COLUMNS)
    rows = table.set_index("symbol")
    assert list(rows.index) == ["PLUS", "MINUS", "ENSG03.2"]  # duplicate PLUS (chrY) dropped: first wins
    assert rows.loc["PLUS", ["chrom", "start", "end", "strand", "tss", "gene_id"]].tolist() == [
        "chr1", 1000, 5000, "+", 1000, "ENSG01.5"]
    assert rows.loc["MINUS", ["chrom", "strand", "tss"]].tolist() == ["chr2", "-", 9000]
    assert rows.loc["ENSG03.2", "tss"] == 100  # no gene_name: the gene_id stands in


def test_gtf_without_gene_lines_uses_transcript_span(tmp_path: Path):
    text = "\n".join([
        'chr3\tUCSC\ttranscript\t500\t900\t.\t-\t.\tgene_id "G1"; transcript_id "a"; gene_name "UC";',
        'chr3\tUCSC\ttranscript\t400\t1500\t.\t-\t.\tgene_id "G1"; transcript_id "b"; gene_name "UC";',
        'chr3\tUCSC\texon\t400\t450\t.\t-\t.\tgene_id "G1"; transcript_id "b"; gene_name "UC";',
    ])
    table = read_gtf(write_gtf(tmp_path / "ucsc.gtf", text))
    assert table[["symbol", "start", "end", "tss"]].values.tolist() == [["UC", 400, 1500, 1500]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("chr1\tX\tgene\t1\t2\t.\t+\n", "GTF line 1: expected 9 tab-separated fields, found 7"),
        ('chr1\tX\tgene\t1\t2\t.\t+\t.\tgene_name "A";\n', "GTF line 1: record has no gene_id attribute"),
        ('chr1\tX\tgene\tone\t2\t.\t+\t.\tgene_id "A";\n', "GTF line 1: start/end are not integers"),
        ('chr1\tX\texon\t1\t2\t.\t+\t.\tgene_id "A";\n', "GTF has no gene or transcript records"),
        ('chr1\tX\tgene\t1\t2\t.\t?\t.\tgene_id "A";\n', "strand values other than"),
    ],
)
def test_bad_gtf_is_named(tmp_path: Path, text: str, message: str):
    with pytest.raises(CoemInputError, match=message.replace("(", r"\(")) as err:
        read_gtf(write_gtf(tmp_path / "bad.gtf", text))
    assert err.value.file == str(tmp_path / "bad.gtf")


def test_tss_table(tmp_path: Path):
    path = tmp_path / "t.tsv"
    path.write_text("symbol\tgene_id\tchrom\tstart\tend\tstrand\ttss\textra\n"
                    "A\t1\tchr1\t10\t20\t+\t10\tx\nB\t2\tchr2\t30\t50\t-\t50\ty\n")
    table = read_tss_table(path)
    assert list(table.columns) == list(TSS_COLUMNS)
    assert table["tss"].tolist() == [10, 50] and table["gene_id"].tolist() == ["1", "2"]
    assert str(table["tss"].dtype) == "int64"


def test_tss_table_missing_columns_and_bad_values(tmp_path: Path):
    path = tmp_path / "t.tsv"
    path.write_text("symbol\tchrom\ttss\nA\tchr1\t5\n")
    with pytest.raises(CoemInputError, match="lacks column\\(s\\) gene_id, start, end, strand"):
        read_tss_table(path)
    path.write_text("symbol\tgene_id\tchrom\tstart\tend\tstrand\ttss\nA\t1\tchr1\t10\t20\t+\t10\nB\t2\tchr1\t1\t2\t+\tNA\n")
    with pytest.raises(CoemInputError, match="TSS table line 3: column 'tss' is not an integer"):
        read_tss_table(path)


def test_unknown_annotation_format(tmp_path: Path):
    with pytest.raises(CoemInputError, match="unknown annotation format"):
        read_annotation(tmp_path / "genes.bed")


def test_strip_version():
    assert strip_version(["ENSG00000116824.12", "ENSMUSG0001.3", "12345", "ABC.1"]).tolist() == [
        "ENSG00000116824", "ENSMUSG0001", "12345", "ABC.1"]


@pytest.mark.realdata
def test_real_tss_tables():
    if not (DATA / "annotation").is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data from the repo root)")
    hg38 = read_tss_table(DATA / "annotation" / "hg38_gene_tss.tsv")
    assert len(hg38) == 28249 and hg38["symbol"].is_unique  # data README (rebuilt 2026-11-30): 28,249 genes
    plus = hg38[hg38["strand"] == "+"]
    minus = hg38[hg38["strand"] == "-"]
    assert (plus["tss"] == plus["start"]).all() and (minus["tss"] == minus["end"]).all()
    hg19 = read_annotation(DATA / "annotation" / "hg19_gene_tss.tsv")
    # Since the rebuild of ../shared/data (2026-11-30) the 95 genes without a symbol are dropped there
    # (its README): 23,274 - 95 = 23,179.
    assert len(hg19) == 23179
    assert (hg19["symbol"] == "").sum() == 0
    assert hg19.set_index("symbol").loc["WASH7P", ["chrom", "strand", "tss"]].tolist() == ["chr1", "-", 29961]
