"""Input readers: every input kind -> one checked MuData in the layout of docs/developer.md."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem import readers
from coem.errors import CoemInputError
from coem.samplesheet import SampleRow

pytestmark = [  # the hand-made inputs repeat a gene symbol on purpose; mudata warns about its own API
    pytest.mark.filterwarnings("ignore:(Variable|Observation|var_)(names| names) are not unique:UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:mudata"),
]
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GENES = ["CD2", "LYZ", "MS4A1", "NKG7", "CD14", "IL7R", "CD2", "GNLY"]  # CD2 twice: made unique
PEAKS = ["chr1:1000-1500", "chr1:5000-5600", "chr2:200-900", "chr2:3000-3300", "chrX:10-80",
         "chr5:100-400", "chr5:700-950", "chrUn_KI270302v1:5-90", "chr11:60-99", "chrM:1-50"]


@pytest.fixture
def shared_data() -> Path:
    """The real data folder (../shared/data); tests skip when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data from the repo root)")
    return DATA


@pytest.fixture
def reader_log(caplog):
    """Capture coem.readers log lines whether or not the logger propagates."""
    logger = logging.getLogger("coem.readers")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="coem.readers")
    yield caplog
    logger.removeHandler(caplog.handler)


def pair(n_cells: int = 30, seed: int = 0, atac_cells: list[str] | None = None) -> tuple[ad.AnnData, ad.AnnData]:
    """A small RNA/ATAC AnnData pair with integer counts and known feature annotations."""
    rng = np.random.default_rng(seed)
    cells = [f"BC{i:03d}-1" for i in range(n_cells)]
    rna_var = pd.DataFrame({
        "gene_ids": [f"ENSG{i:011d}" for i in range(len(GENES))],
        "interval": ["chr1:116754429-116754467", "chr12:69348340-69348386", "NA", "chr19:51372639-51372701",
                     "chr5:140633174-140633701", "chr5:35856890-35856892", "chr1:9-20", "chr2:85694290-85694426"],
    }, index=GENES)
    rna = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (n_cells, len(GENES))).astype(np.float32)),
                     obs=pd.DataFrame(index=cells), var=rna_var)
    atac_cells = cells if atac_cells is None else atac_cells
    atac = ad.AnnData(sp.csr_matrix(rng.poisson(0.6, (len(atac_cells), len(PEAKS))).astype(np.float32)),
                      obs=pd.DataFrame(index=atac_cells), var=pd.DataFrame(index=PEAKS))
    return rna, atac


def write_pair(tmp_path: Path, rna: ad.AnnData, atac: ad.AnnData) -> tuple[Path, Path]:
    rna.write_h5ad(tmp_path / "rna.h5ad")
    atac.write_h5ad(tmp_path / "atac.h5ad")
    return tmp_path / "rna.h5ad", tmp_path / "atac.h5ad"


def assert_layout(mdata: md.MuData) -> None:
    """The contract of docs/developer.md that every later step relies on."""
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert list(mdata.mod) == ["rna", "atac"]
    for mod in (rna, atac):
        assert isinstance(mod.X, sp.csr_matrix) and mod.X.dtype == np.float32
        assert np.all(mod.X.data == np.round(mod.X.data)) and mod.X.data.min() >= 0
    assert rna.obs_names.equals(atac.obs_names) and mdata.obs_names.equals(rna.obs_names)
    assert rna.var_names.is_unique and atac.var_names.is_unique
    assert {"chrom", "tss", "strand", "gene_id"} <= set(rna.var.columns)
    assert rna.var["tss"].dtype == float and set(rna.var["strand"]) <= {"+", "-", "."}
    assert list(atac.var.columns[:3]) == ["chrom", "start", "end"]
    assert atac.var["start"].dtype == np.int64 and atac.var["end"].dtype == np.int64
    names = atac.var["chrom"] + ":" + atac.var["start"].astype(str) + "-" + atac.var["end"].astype(str)
    assert (names == atac.var_names).all()


# ---------------------------------------------------------------------------------------------
# AnnData pair and the shared checks
# ---------------------------------------------------------------------------------------------

def test_anndata_pair_layout_and_10x_interval_tss(tmp_path: Path):
    rna, atac = pair()
    mdata = readers.read_anndata_pair(*write_pair(tmp_path, rna, atac), sample="S1")
    assert_layout(mdata)
    assert mdata.shape == (30, len(GENES) + len(PEAKS))
    var = mdata.mod["rna"].var
    assert list(var.index) == ["CD2", "LYZ", "MS4A1", "NKG7", "CD14", "IL7R", "CD2-1", "GNLY"]
    # 10x interval: BED start 116754429 -> 1-based TSS 116754430, strand unknown
    assert var.loc["CD2", ["chrom", "tss", "strand", "gene_id"]].tolist() == ["chr1", 116754430.0, ".", "ENSG00000000000"]
    assert var.loc["MS4A1", "chrom"] == "" and np.isnan(var.loc["MS4A1", "tss"])  # 'NA' interval: unknown
    assert mdata.mod["atac"].var.loc["chr2:200-900", ["chrom", "start", "end"]].tolist() == ["chr2", 200, 900]
    np.testing.assert_array_equal(mdata.mod["rna"].X.toarray(), rna.X.toarray())


def test_gene_table_interval_tss_per_strand():
    var = pd.DataFrame({"interval": ["chr1:99-200", "chr1:99-200", "chr1:99-200", "NA"],
                        "strand": ["+", "-", None, "+"]}, index=["A", "B", "C", "D"])
    table = readers.gene_table(var)
    assert table["tss"].tolist()[:3] == [100.0, 200.0, 100.0] and np.isnan(table.loc["D", "tss"])
    assert table["strand"].tolist() == ["+", "-", ".", "+"] and table["chrom"].tolist() == ["chr1"] * 3 + [""]


def test_gene_table_ensembl_index_uses_symbol_column():
    var = pd.DataFrame({"gene_symbols": ["CD2", "CD2", "LYZ"]}, index=["ENSG1", "ENSG2", "ENSG3"])
    table = readers.gene_table(var)
    assert table.index.tolist() == ["CD2", "CD2-1", "LYZ"] and table["gene_id"].tolist() == ["ENSG1", "ENSG2", "ENSG3"]


def test_counts_layer_preferred_over_normalised_x(tmp_path: Path):
    rna, atac = pair()
    rna.layers["counts"] = rna.X.copy()
    rna.X = sp.csr_matrix(np.log1p(rna.X.toarray()))
    mdata = readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))
    np.testing.assert_array_equal(mdata.mod["rna"].X.toarray(), rna.layers["counts"].toarray())


def test_counts_in_raw_when_x_is_normalised(tmp_path: Path, reader_log):
    """scanpy's habit: X log-normalised on HVGs only, raw counts of all genes in .raw."""
    rna, atac = pair()
    counts = rna.X.toarray()
    rna.raw = rna.copy()
    rna = rna[:, :5].copy()  # X keeps 5 of the 8 genes ...
    rna.X = sp.csr_matrix(np.log1p(rna.X.toarray()))  # ... normalised
    mdata = readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))
    assert mdata.mod["rna"].n_vars == len(GENES)  # all of .raw's genes
    np.testing.assert_array_equal(mdata.mod["rna"].X.toarray(), counts)
    assert "X is normalised; the raw counts in .raw are used (8 features)" in reader_log.text


def test_barcodes_intersected_in_rna_order(tmp_path: Path, reader_log):
    rna, _ = pair(30)
    atac_cells = [f"BC{i:03d}-1" for i in range(29, 4, -1)] + ["OTHER-1", "OTHER-2"]  # 25 shared, reversed
    _, atac = pair(30, atac_cells=atac_cells)
    mdata = readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))
    assert list(mdata.obs_names) == [f"BC{i:03d}-1" for i in range(5, 30)]
    expected = atac[mdata.obs_names].X.toarray()
    np.testing.assert_array_equal(mdata.mod["atac"].X.toarray(), expected)
    assert "barcodes: rna 30, atac 27, shared 25" in reader_log.text


@pytest.mark.parametrize(
    "modality, value, message",
    [
        ("rna", 0.5, "the rna matrix holds non-integer values (e.g. 2.5): it looks normalised"),
        ("atac", -3.0, "the atac matrix holds negative values (min -3)"),
        ("rna", np.nan, "the rna matrix holds NaN or infinite values"),
    ],
)
def test_bad_counts_name_the_modality(tmp_path: Path, modality: str, value: float, message: str):
    rna, atac = pair()
    target = rna if modality == "rna" else atac
    X = target.X.toarray()
    X[0, 0] = 2.0 + value if value == 0.5 else value
    target.X = sp.csr_matrix(X)
    with pytest.raises(CoemInputError) as err:
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac), sample="S9")
    assert message in str(err.value) and str(err.value).startswith("sample 'S9', file ")


def test_empty_and_all_zero_matrices():
    with pytest.raises(CoemInputError, match=r"the rna matrix is empty \(0 cells x 4 features\)"):
        readers.check_counts(sp.csr_matrix((0, 4)), "rna")
    with pytest.raises(CoemInputError, match="the atac matrix holds only zeros"):
        readers.check_counts(np.zeros((3, 4)), "atac")
    X = readers.check_counts(np.array([[0, 2], [1, 0]], dtype=np.int64), "rna")
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32 and X.nnz == 2


def test_barcode_mismatch_and_too_few_cells(tmp_path: Path):
    rna, _ = pair(30)
    _, atac = pair(30, atac_cells=[f"BC{i:03d}-1" for i in range(12)] + [f"X{i}" for i in range(18)])
    with pytest.raises(CoemInputError, match=r"only 12 barcodes are shared by rna \(30\) and atac \(30\); need at least 10 and 50%"):
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))
    rna, atac = pair(8)
    with pytest.raises(CoemInputError, match="only 8 barcodes are shared"):
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))


def test_duplicated_barcodes(tmp_path: Path):
    rna, atac = pair()
    atac.obs_names = list(atac.obs_names[:-1]) + [atac.obs_names[0]]
    with pytest.raises(CoemInputError, match=r"1 duplicated barcodes in the atac modality \(e.g. 'BC000-1'\)"):
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))


def test_peak_contigs():
    chroms = ["chr1", "1", "chrX", "MT", "chrM", "chrUn_KI270302v1", "GL000194.1", "chr1_KI270706v1_random"]
    assert readers.check_peak_contigs(chroms).all()
    assert readers.check_peak_contigs(chroms, scaffolds="drop").tolist() == [True] * 5 + [False] * 3
    with pytest.raises(CoemInputError, match="3 peaks lie on unplaced/alt scaffolds"):
        readers.check_peak_contigs(chroms, scaffolds="error")
    with pytest.raises(CoemInputError) as err:
        readers.check_peak_contigs(["chr1", "peak", "peak", "chr2L"], sample="S1")
    assert "3 peaks lie on contigs that are not chromosome names: 'peak' (2), 'chr2L' (1)" in str(err.value)
    assert readers.check_peak_contigs(["chr2L", "chr3R"], extra_allowed=["chr2L", "chr3R"]).all()


def test_unknown_contig_and_unparsable_peaks_in_reader(tmp_path: Path):
    rna, atac = pair()
    atac.var_names = PEAKS[:-1] + ["weird:1-50"]
    with pytest.raises(CoemInputError, match="1 peaks lie on contigs that are not chromosome names: 'weird' \\(1\\)"):
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))
    atac.var_names = PEAKS[:-1] + ["peak_10"]
    with pytest.raises(CoemInputError, match="1 peak names cannot be read as chrN:start-end or chrN-start-end"):
        readers.read_anndata_pair(*write_pair(tmp_path, rna, atac))


def test_peak_name_styles_and_scaffold_drop(tmp_path: Path):
    rna, atac = pair()
    atac.var_names = [p.replace(":", "-") for p in PEAKS]  # chrN-start-end (Signac style)
    mdata = readers.read_anndata_pair(*write_pair(tmp_path, rna, atac), scaffolds="drop")
    assert list(mdata.mod["atac"].var_names) == [p for p in PEAKS if "Un" not in p]
    kept = [i for i, p in enumerate(PEAKS) if "Un" not in p]
    np.testing.assert_array_equal(mdata.mod["atac"].X.toarray(), atac.X.toarray()[:, kept])


# ---------------------------------------------------------------------------------------------
# 10x h5 and h5mu
# ---------------------------------------------------------------------------------------------

def test_10x_h5_layout_and_roundtrip(tmp_path: Path):
    rna, atac = pair()
    mdata = readers.assemble(rna, atac)
    path = readers.write_10x_h5(mdata, tmp_path / "filtered_feature_bc_matrix.h5", genome="GRCh38")
    with h5py.File(path) as f:
        m = f["matrix"]
        assert set(m) == {"barcodes", "data", "indices", "indptr", "shape", "features"}
        assert set(m["features"]) == {"_all_tag_keys", "id", "name", "feature_type", "genome", "interval"}
        assert m["shape"][:].tolist() == [len(GENES) + len(PEAKS), 30]  # features x cells
        assert m["data"].dtype == np.int32 and m["indptr"].shape == (31,)
        assert m["features/feature_type"][0] == b"Gene Expression" and m["features/feature_type"][-1] == b"Peaks"
        assert m["features/interval"][0] == b"chr1:116754429-116754467" and m["features/id"][1] == b"ENSG00000000001"
        assert m["barcodes"][0] == b"BC000-1"
        csc = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
    np.testing.assert_array_equal(csc.toarray().T[:, : len(GENES)], rna.X.toarray())
    back = readers.read_10x_h5(path, sample="S1")
    assert_layout(back)
    for mod in ("rna", "atac"):
        assert (back.mod[mod].X != mdata.mod[mod].X).nnz == 0
        assert back.mod[mod].var_names.equals(mdata.mod[mod].var_names)
    pd.testing.assert_frame_equal(back.mod["rna"].var[["chrom", "tss", "strand", "gene_id"]],
                                  mdata.mod["rna"].var[["chrom", "tss", "strand", "gene_id"]])


def test_10x_h5_without_interval_column_writes_tss_interval(tmp_path: Path):
    rna, atac = pair()
    mdata = readers.assemble(rna, atac)
    mdata.mod["rna"].var = mdata.mod["rna"].var.drop(columns=["interval"])
    back = readers.read_10x_h5(readers.write_10x_h5(mdata, tmp_path / "m.h5"))
    np.testing.assert_array_equal(back.mod["rna"].var["tss"], mdata.mod["rna"].var["tss"])


def test_10x_h5_errors(tmp_path: Path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CoemInputError, match="cannot read the file as HDF5"):
        readers.read_10x_h5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("X")
    with pytest.raises(CoemInputError, match="no '/matrix' group"):
        readers.read_10x_h5(tmp_path / "other.h5")
    rna, atac = pair()
    only_rna = readers.assemble(rna, atac)
    path = readers.write_10x_h5(only_rna, tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        kinds = f["matrix/features/feature_type"]
        kinds[...] = np.array([b"Gene Expression"] * len(kinds))
    with pytest.raises(CoemInputError, match="the matrix has no 'Peaks' features"):
        readers.read_10x_h5(path)


@pytest.mark.parametrize("names", [("RNA", "ATAC"), ("gex", "peaks")])
def test_h5mu_modality_aliases_and_global_obs(tmp_path: Path, names):
    rna, atac = pair()
    rna.var["chrom"], rna.var["tss"], rna.var["strand"] = "chr3", np.arange(1, 9) * 100, ["+", "-"] * 4
    rna.var = rna.var.drop(columns=["interval"])
    src = md.MuData({names[0]: rna, names[1]: atac})
    src.obs["batch"] = ["a", "b"] * 15
    src.write(tmp_path / "in.h5mu")
    mdata = readers.read_h5mu(tmp_path / "in.h5mu")
    assert_layout(mdata)
    assert mdata.mod["rna"].var.loc["NKG7", ["chrom", "tss", "strand"]].tolist() == ["chr3", 400.0, "-"]
    assert mdata.obs["batch"].tolist() == ["a", "b"] * 15


def test_h5mu_without_atac_modality(tmp_path: Path):
    rna, atac = pair()
    md.MuData({"rna": rna, "protein": atac}).write(tmp_path / "in.h5mu")
    with pytest.raises(CoemInputError, match=r"no atac modality among \['protein', 'rna'\]"):
        readers.read_h5mu(tmp_path / "in.h5mu", sample="S1")


# ---------------------------------------------------------------------------------------------
# Annotation, labels, samplesheet rows
# ---------------------------------------------------------------------------------------------

def annotation_table(chrom_prefix: str = "") -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": ["CD2", "LYZ", "OTHER"], "gene_id": ["1", "2", "ENSG00000000002.7"],
        "chrom": [f"{chrom_prefix}1", f"{chrom_prefix}12", f"{chrom_prefix}MT"],
        "start": [100, 200, 300], "end": [150, 260, 390], "strand": ["+", "-", "-"], "tss": [100, 260, 390],
    })


def test_attach_annotation_by_symbol_then_gene_id(reader_log):
    mdata = readers.assemble(*pair())
    stats = readers.attach_annotation(mdata, annotation_table())  # Ensembl-style '1', 'MT' vs peaks 'chr'
    assert stats == {"genes": 8, "by_symbol": 2, "by_gene_id": 1, "with_tss": 8}
    var = mdata.mod["rna"].var
    assert var.loc["CD2", ["chrom", "tss", "strand"]].tolist() == ["chr1", 100.0, "+"]
    assert var.loc["LYZ", ["chrom", "tss", "strand"]].tolist() == ["chr12", 260.0, "-"]
    assert var.loc["MS4A1", ["chrom", "tss", "strand"]].tolist() == ["chrM", 390.0, "-"]  # by versionless id
    assert var.loc["NKG7", ["chrom", "tss", "strand"]].tolist() == ["chr19", 51372640.0, "."]  # kept
    assert "2 genes matched by symbol, 1 by gene_id; 8 of 8 genes have a TSS" in reader_log.text


def test_attach_annotation_matching_nothing():
    mdata = readers.assemble(*pair())
    table = annotation_table().assign(symbol=["A", "B", "C"], gene_id=["9", "8", "7"])
    with pytest.raises(CoemInputError, match="no gene matches the annotation by symbol or gene_id"):
        readers.attach_annotation(mdata, table, sample="S1")


def test_attach_labels_partial_and_header(tmp_path: Path, reader_log):
    mdata = readers.assemble(*pair())
    path = tmp_path / "labels.csv"
    path.write_text("barcode,label\n" + "".join(f"BC{i:03d}-1,{'T' if i % 2 else 'B'}\n" for i in range(20)) + "ZZZ,T\n")
    stats = readers.attach_labels(mdata, path)
    assert stats == {"cells": 30, "labelled": 20, "labels_not_in_data": 1}
    assert mdata.obs["label"].iloc[:3].tolist() == ["B", "T", "B"] and mdata.obs["label"].iloc[20:].isna().all()
    assert "20 of 30 cells labelled; 1 label rows" in reader_log.text


LABEL_ENCODINGS = {
    # case: (bytes of the file, how a user's tool wrote it)
    "utf8_bom": ("\ufeffbarcode,label\nBC000-1,Zellen Typ Ä\nBC001-1,T cell\n".encode("utf-8")),
    "utf16_excel_unicode_text": ("barcode\tlabel\nBC000-1\tZellen Typ Ä\nBC001-1\tT cell\n".encode("utf-16")),
    "cp1252_excel_csv": ("barcode;label\nBC000-1;Zellen Typ Ä\nBC001-1;T cell\n".encode("cp1252")),
    "utf8_plain_gzip": None,  # filled below: gzip of UTF-8
}


@pytest.mark.parametrize("case", list(LABEL_ENCODINGS))
def test_labels_in_the_encodings_spreadsheets_write(case, tmp_path: Path):
    import gzip

    data = LABEL_ENCODINGS[case]
    if data is None:
        data = gzip.compress("barcode,label\nBC000-1,Zellen Typ Ä\nBC001-1,T cell\n".encode("utf-8"))
    path = tmp_path / ("labels.csv.gz" if case.endswith("gzip") else "labels.csv")
    path.write_bytes(data)
    labels = readers.read_labels(path, "S1")
    assert labels.to_dict() == {"BC000-1": "Zellen Typ Ä", "BC001-1": "T cell"}


def test_attach_labels_errors(tmp_path: Path):
    mdata = readers.assemble(*pair())
    path = tmp_path / "labels.tsv"
    path.write_text("".join(f"BC{i:03d}\tT\n" for i in range(30)))
    with pytest.raises(CoemInputError, match="no barcode of the labels file is a cell of this sample \\(they match once the '-1'"):
        readers.attach_labels(mdata, path, sample="S1")
    path.write_text("BC000-1\tT\nBC000-1\tB\n")
    with pytest.raises(CoemInputError, match="names 1 barcodes twice"):
        readers.attach_labels(mdata, path)
    path.write_text("only_one_column\n")
    with pytest.raises(CoemInputError, match="needs two columns"):
        readers.attach_labels(mdata, path)


def test_read_sample_dispatch_and_h5mu_roundtrip(tmp_path: Path):
    rna_path, atac_path = write_pair(tmp_path, *pair())
    (tmp_path / "labels.csv").write_text("".join(f"BC{i:03d}-1,L{i % 3}\n" for i in range(30)))
    ann = tmp_path / "tss.tsv"
    annotation_table("chr").to_csv(ann, sep="\t", index=False)
    row = SampleRow(sample="S1", rna=str(rna_path), atac=str(atac_path), labels=str(tmp_path / "labels.csv"),
                    annotation=str(ann))
    mdata = readers.read_sample(row)
    assert mdata.mod["rna"].var.loc["LYZ", "strand"] == "-" and mdata.obs["label"].iloc[4] == "L1"
    out = tmp_path / "S1.h5mu"
    mdata.write(out)
    back = md.read_h5mu(out)
    assert back.mod["rna"].obs_names.equals(back.mod["atac"].obs_names)
    assert back.obs["label"].astype(str).tolist() == [f"L{i % 3}" for i in range(30)]
    h5 = readers.write_10x_h5(mdata, tmp_path / "S1.h5")
    from_dict = readers.read_sample({"sample": "S2", "h5": str(h5)})
    assert (from_dict.mod["atac"].X != mdata.mod["atac"].X).nnz == 0
    with pytest.raises(CoemInputError, match="sample 'S3': the samplesheet row has no input"):
        readers.read_sample({"sample": "S3"})


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_pbmc_h5mu_and_10x_roundtrip(shared_data: Path, tmp_path: Path):
    path = shared_data / "pbmc10x_muon" / "test_rna_atac.h5mu"
    mdata = readers.read_h5mu(path, sample="pbmc")
    assert_layout(mdata)
    assert (mdata.n_obs, mdata.mod["rna"].n_vars, mdata.mod["atac"].n_vars) == (1000, 45, 174)
    var = mdata.mod["rna"].var
    assert var.loc["CD2", ["chrom", "tss", "strand", "gene_id"]].tolist() == ["chr1", 116754430.0, ".", "ENSG00000116824"]
    assert var["tss"].notna().all()
    assert mdata.mod["atac"].var.loc["chr1:116754127-116754634", ["start", "end"]].tolist() == [116754127, 116754634]
    with h5py.File(path) as f:
        assert int(f["mod/rna/X/data"][:].sum()) == int(mdata.mod["rna"].X.sum())
    h5 = readers.write_10x_h5(mdata, tmp_path / "filtered_feature_bc_matrix.h5")
    back = readers.read_10x_h5(h5, sample="pbmc")
    for mod in ("rna", "atac"):
        assert back.mod[mod].obs_names.equals(mdata.mod[mod].obs_names)
        assert (back.mod[mod].X != mdata.mod[mod].X).nnz == 0
        assert back.mod[mod].var_names.equals(mdata.mod[mod].var_names)
    cols = ["chrom", "tss", "strand", "gene_id", "interval"]
    pd.testing.assert_frame_equal(back.mod["rna"].var[cols], var[cols])
    pd.testing.assert_frame_equal(back.mod["atac"].var[["chrom", "start", "end"]],
                                  mdata.mod["atac"].var[["chrom", "start", "end"]])
    assert set(back.mod["rna"].var["genome"]) == {"GRCh38"}
    stats = readers.attach_annotation(back, shared_data / "annotation" / "hg38_gene_tss.tsv")
    assert stats["by_symbol"] == 42 and stats["with_tss"] == 45
    assert set(back.mod["rna"].var["strand"]) == {"+", "-", "."}


@pytest.mark.realdata
def test_real_scicar_h5mu_with_labels(shared_data: Path, tmp_path: Path):
    mdata = readers.read_h5mu(shared_data / "scicar_a549" / "scicar_a549.h5mu", sample="a549")
    assert_layout(mdata)
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    assert (mdata.n_obs, rna.n_vars, atac.n_vars) == (2641, 1185, 51320)
    assert int(rna.var["tss"].notna().sum()) == 1087  # the data README (rebuilt 2026-11-30): 1,087 of 1,185
    assert (rna.var.loc[rna.var["tss"].isna(), "strand"] == ".").all()
    assert set(atac.X.data) == {1.0}
    assert rna.var.loc["FKBP5", "chrom"] == "chr6" and rna.var.loc["FKBP5", "strand"] == "-"
    labels = tmp_path / "labels.csv"
    mdata.obs["dex_time_h"].astype(str).to_frame().to_csv(labels, header=False)
    stats = readers.attach_labels(mdata, labels)
    assert stats == {"cells": 2641, "labelled": 2641, "labels_not_in_data": 0}
    assert mdata.obs["label"].value_counts().to_dict() == {"3": 1075, "1": 983, "0": 583}


def test_simulated_data_through_10x_h5_and_h5mu(tmp_path: Path):
    from coem import simulate
    sim = simulate.simulate_multiome(n_cells=40, n_genes=40, n_peaks=80, n_types=2, seed=3).mdata
    src_rna = sim.mod["rna"]
    back = readers.read_10x_h5(readers.write_10x_h5(sim, tmp_path / "sim.h5"), sample="sim")
    assert_layout(back)
    assert (back.mod["rna"].X != sp.csr_matrix(src_rna.X)).nnz == 0
    assert (back.mod["atac"].X != sp.csr_matrix(sim.mod["atac"].X)).nnz == 0
    np.testing.assert_array_equal(back.mod["rna"].var["tss"], src_rna.var["tss"].astype(float))
    assert set(back.mod["rna"].var["strand"]) == {"."}  # 10x files carry no strand
    sim.write(tmp_path / "sim.h5mu")
    from_h5mu = readers.read_h5mu(tmp_path / "sim.h5mu")
    assert_layout(from_h5mu)
    assert from_h5mu.mod["rna"].var["strand"].tolist() == src_rna.var["strand"].astype(str).tolist()
    assert from_h5mu.obs["cell_type"].tolist() == sim.obs["cell_type"].tolist()
