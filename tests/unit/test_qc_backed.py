"""QC with the counts left on disk (coem.qc_backed, issue 14): the same output as in memory.

The QC step streams an .h5mu's counts in row chunks when they are large (``--backed auto``) or
when asked (``--backed on``); these tests ask for it on the shipped test data with chunks much
smaller than the sample and compare every part of the output with the in-memory run's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem import qc_backed
from coem.cli import qc as qc_cli
from coem.cli._common import run_cli

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"


def _read(path) -> md.MuData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.read_h5mu(path)


def _run_qc(tmp_path: Path, prefix: str, backed: str, h5mu: Path, *extra: str) -> int:
    return run_cli(qc_cli.main, ["--sample", "S", "--prefix", str(tmp_path / prefix), "--h5mu", str(h5mu),
                                 "--backed", backed, *extra])


def test_streamed_qc_writes_what_the_in_memory_qc_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qc_backed, "CHUNK_ROWS", 64)  # about ten chunks of the 600-cell sample
    labels = ["--labels", str(TEST_DATA / "sim2_labels.csv"), "--annotation", str(TEST_DATA / "sim2_tss.tsv")]
    assert _run_qc(tmp_path, "memory", "off", TEST_DATA / "sim2.h5mu", *labels) == 0
    assert _run_qc(tmp_path, "streamed", "on", TEST_DATA / "sim2.h5mu", *labels) == 0
    memory, streamed = _read(tmp_path / "memory.qc.h5mu"), _read(tmp_path / "streamed.qc.h5mu")
    with h5py.File(tmp_path / "streamed.qc.h5mu") as f:  # written chunk by chunk into resizable datasets
        assert f["mod/atac/X/data"].maxshape == (None,)
    assert streamed.n_obs == memory.n_obs and memory.n_obs > 500
    for mod in ("rna", "atac"):
        a, b = memory.mod[mod], streamed.mod[mod]
        assert sp.isspmatrix_csr(b.X) and b.X.dtype == np.float32 and b.X.has_sorted_indices
        assert (a.X != b.X).nnz == 0 and a.X.nnz == b.X.nnz > 0
        pd.testing.assert_frame_equal(a.var, b.var)
        pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(memory.obs, streamed.obs)
    summaries = [json.loads((tmp_path / f"{p}.qc_summary.json").read_text()) for p in ("memory", "streamed")]
    assert summaries[0] == summaries[1]
    assert "label" in streamed.obs and streamed.mod["rna"].var["tss"].notna().any()


def test_streamed_qc_reports_non_integer_counts_like_the_in_memory_one(tmp_path, capsys):
    rna = ad.AnnData(X=sp.csr_matrix(np.full((60, 5), 2.5, dtype=np.float32)),
                     obs=pd.DataFrame(index=[f"c{i}" for i in range(60)]),
                     var=pd.DataFrame({"chrom": "chr1", "tss": np.arange(5) * 1000 + 1},
                                      index=[f"g{i}" for i in range(5)]))
    atac = ad.AnnData(X=sp.csr_matrix(np.ones((60, 4), dtype=np.float32)), obs=rna.obs.copy(),
                      var=pd.DataFrame(index=[f"chr1:{i * 1000}-{i * 1000 + 500}" for i in range(4)]))
    path = tmp_path / "bad.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md.MuData({"rna": rna, "atac": atac}).write(path)
    assert qc_backed.streamable(path) == ("rna", "atac")
    assert _run_qc(tmp_path, "bad", "on", path) == 2  # a bad-input error (run_cli)
    err = capsys.readouterr().err
    assert "the rna matrix holds non-integer values (e.g. 2.5)" in err and "bad.h5mu" in err and "S" in err
    assert not list(tmp_path.glob("bad.qc*"))  # nothing published


def test_only_h5mu_files_with_aligned_csr_counts_are_streamed(tmp_path):
    names = [f"c{i}" for i in range(30)]
    rna = ad.AnnData(X=sp.csr_matrix(np.ones((30, 3), dtype=np.float32)), obs=pd.DataFrame(index=names),
                     var=pd.DataFrame(index=["a", "b", "c"]))
    atac = ad.AnnData(X=np.ones((30, 2), dtype=np.float32), obs=pd.DataFrame(index=names),
                      var=pd.DataFrame(index=["chr1:1-100", "chr1:200-300"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md.MuData({"rna": rna, "atac": atac}).write(tmp_path / "dense.h5mu")
        atac.X = sp.csr_matrix(atac.X)
        md.MuData({"rna": rna, "atac": atac[::-1].copy()}).write(tmp_path / "reordered.h5mu")
        md.MuData({"rna": rna, "atac": atac}).write(tmp_path / "good.h5mu")
    assert qc_backed.streamable(tmp_path / "dense.h5mu") is None  # dense ATAC X
    assert qc_backed.streamable(tmp_path / "reordered.h5mu") is None  # barcodes in another order
    assert qc_backed.streamable(tmp_path / "good.h5mu") == ("rna", "atac")
    assert qc_backed.use_streaming(tmp_path / "good.h5mu", "auto") is None  # small: read into memory
    assert qc_backed.use_streaming(tmp_path / "good.h5mu", "off") is None
    assert qc_backed.streamable(TEST_DATA / "sim1_filtered_feature_bc_matrix.h5") is None  # a 10x file


@pytest.mark.parametrize("prefix", ["memory"])
def test_in_memory_qc_is_the_default_for_small_inputs(tmp_path, monkeypatch, caplog, prefix):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        assert _run_qc(tmp_path, prefix, "auto", TEST_DATA / "sim2.h5mu") == 0
    assert "counts read in chunks from disk" not in caplog.text
