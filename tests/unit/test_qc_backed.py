"""QC with the counts left on disk (coem.qc_backed, issue 14): the same output as in memory.

The QC step streams a 10x .h5's, an .h5mu's or an .h5ad pair's counts in row chunks when they
are large (``--backed auto``) or when asked (``--backed on``); these tests ask for it on the
shipped test data with chunks much smaller than the sample and compare every part of the output
with the in-memory run's.
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


def _run_qc(tmp_path: Path, prefix: str, backed: str, h5mu: Path | None, *extra: str) -> int:
    given = ["--h5mu", str(h5mu)] if h5mu else []
    return run_cli(qc_cli.main, ["--sample", "S", "--prefix", str(tmp_path / prefix), *given, "--backed", backed,
                                 *extra])


def _assert_same_qc_output(tmp_path: Path, memory: str = "memory", streamed: str = "streamed") -> md.MuData:
    """Every part of the two runs' outputs is equal; the streamed one was written chunk by chunk."""
    a_data, b_data = _read(tmp_path / f"{memory}.qc.h5mu"), _read(tmp_path / f"{streamed}.qc.h5mu")
    with h5py.File(tmp_path / f"{streamed}.qc.h5mu") as f:  # written chunk by chunk into resizable datasets
        assert f["mod/atac/X/data"].maxshape == (None,)
    assert b_data.n_obs == a_data.n_obs and a_data.n_obs > 300
    for mod in ("rna", "atac"):
        a, b = a_data.mod[mod], b_data.mod[mod]
        assert sp.isspmatrix_csr(b.X) and b.X.dtype == np.float32 and b.X.has_sorted_indices
        assert a.X.shape == b.X.shape and (a.X != b.X).nnz == 0 and a.X.nnz == b.X.nnz > 0
        pd.testing.assert_frame_equal(a.var, b.var)
        pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a_data.obs, b_data.obs)
    summaries = [json.loads((tmp_path / f"{p}.qc_summary.json").read_text()) for p in (memory, streamed)]
    assert summaries[0] == summaries[1]
    return b_data


def test_streamed_qc_writes_what_the_in_memory_qc_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qc_backed, "CHUNK_ROWS", 64)  # about ten chunks of the 600-cell sample
    labels = ["--labels", str(TEST_DATA / "sim2_labels.csv"), "--annotation", str(TEST_DATA / "sim2_tss.tsv")]
    assert _run_qc(tmp_path, "memory", "off", TEST_DATA / "sim2.h5mu", *labels) == 0
    assert _run_qc(tmp_path, "streamed", "on", TEST_DATA / "sim2.h5mu", *labels) == 0
    streamed = _assert_same_qc_output(tmp_path)
    assert "label" in streamed.obs and streamed.mod["rna"].var["tss"].notna().any()


def test_a_10x_h5_is_streamed_like_it_is_read_in_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qc_backed, "CHUNK_ROWS", 50)
    h5 = ["--h5", str(TEST_DATA / "sim1_filtered_feature_bc_matrix.h5"),
          "--labels", str(TEST_DATA / "sim1_labels.csv")]
    assert _run_qc(tmp_path, "memory", "off", None, *h5) == 0
    with caplog.at_level("INFO"):
        assert _run_qc(tmp_path, "streamed", "on", None, *h5) == 0
    assert "counts read in chunks from disk" in caplog.text
    streamed = _assert_same_qc_output(tmp_path)
    assert "label" in streamed.obs and streamed.mod["atac"].n_vars > 1000


def _write_pair(tmp_path: Path, rna_cells, atac_cells, normalised_rna_x: bool = False) -> list[str]:
    """sim2 as an .h5ad pair of the given cells; optionally the RNA counts in layers['counts'] under a
    normalised X, as scanpy users keep them."""
    source = _read(TEST_DATA / "sim2.h5mu")
    rna, atac = source.mod["rna"][rna_cells].copy(), source.mod["atac"][atac_cells].copy()
    if normalised_rna_x:
        rna.layers["counts"] = rna.X.copy()
        rna.X = sp.csr_matrix(rna.X.multiply(1.0 / np.maximum(rna.X.sum(axis=1), 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rna.write_h5ad(tmp_path / "rna.h5ad")
        atac.write_h5ad(tmp_path / "atac.h5ad")
    return ["--rna", str(tmp_path / "rna.h5ad"), "--atac", str(tmp_path / "atac.h5ad")]


def test_an_h5ad_pair_with_cells_in_one_modality_only_is_streamed_like_in_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qc_backed, "CHUNK_ROWS", 64)
    n = 600
    # Each modality lacks some cells the other has; the shared ones keep their order.
    pair = _write_pair(tmp_path, np.arange(0, n - 40), np.arange(25, n), normalised_rna_x=True)
    with h5py.File(pair[1]) as f:
        assert qc_backed.counts_group(f) == ("layers/counts", "var")  # X is normalised here
    assert qc_backed.open_on_disk({"rna": pair[1], "atac": pair[3]}).kind == "pair"
    assert _run_qc(tmp_path, "memory", "off", None, *pair) == 0
    with caplog.at_level("INFO"):
        assert _run_qc(tmp_path, "streamed", "on", None, *pair) == 0
    assert "counts read in chunks from disk" in caplog.text
    _assert_same_qc_output(tmp_path)
    coem_input = _read(tmp_path / "streamed.qc.h5mu").uns["coem_input"]
    assert (coem_input["rna_barcodes"], coem_input["atac_barcodes"], coem_input["shared_barcodes"]) == \
        (n - 40, n - 25, n - 65)


def test_an_h5ad_pair_in_two_orders_is_read_into_memory(tmp_path):
    pair = _write_pair(tmp_path, np.arange(600), np.arange(600)[::-1])
    assert qc_backed.open_on_disk({"rna": pair[1], "atac": pair[3]}) is None  # one read per cell otherwise


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
    assert qc_backed.open_on_disk({"h5mu": str(path)}) is not None
    assert _run_qc(tmp_path, "bad", "on", path) == 2  # a bad-input error (run_cli)
    err = capsys.readouterr().err
    assert "the rna matrix holds non-integer values (e.g. 2.5)" in err and "bad.h5mu" in err and "S" in err
    assert not list(tmp_path.glob("bad.qc*"))  # nothing published


def test_only_csr_counts_with_shared_cells_in_one_order_are_streamed(tmp_path):
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
    on_disk = lambda name: qc_backed.open_on_disk({"h5mu": str(tmp_path / name)})  # noqa: E731
    assert on_disk("dense.h5mu") is None  # dense ATAC X
    assert on_disk("reordered.h5mu") is None  # barcodes in another order
    good = on_disk("good.h5mu")
    assert good.kind == "h5mu" and good.nnz == 30 * 3 + 30 * 2
    assert qc_backed.use_streaming({"h5mu": str(tmp_path / "good.h5mu")}, "auto") is None  # small: in memory
    assert qc_backed.use_streaming({"h5mu": str(tmp_path / "good.h5mu")}, "off") is None
    assert qc_backed.use_streaming({"h5mu": str(tmp_path / "good.h5mu")}, "on") is not None
    tenx = qc_backed.open_on_disk({"h5": str(TEST_DATA / "sim1_filtered_feature_bc_matrix.h5")})
    assert tenx.kind == "h5" and tenx.rna.source is tenx.atac.source  # one matrix, two column sets
    assert tenx.rna.columns.size + tenx.atac.columns.size == tenx.rna.source.shape[1]
    assert qc_backed.open_on_disk({"h5mu": str(TEST_DATA / "sim1_filtered_feature_bc_matrix.h5")}) is None


@pytest.mark.parametrize("prefix", ["memory"])
def test_in_memory_qc_is_the_default_for_small_inputs(tmp_path, monkeypatch, caplog, prefix):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        assert _run_qc(tmp_path, prefix, "auto", TEST_DATA / "sim2.h5mu") == 0
    assert "counts read in chunks from disk" not in caplog.text


def test_auto_streams_when_the_in_memory_read_would_peak_above_the_limit(monkeypatch):
    row = {"h5": str(TEST_DATA / "sim1_filtered_feature_bc_matrix.h5")}
    disk = qc_backed.open_on_disk(row)
    with h5py.File(row["h5"]) as f:
        assert disk.nnz == f["matrix/data"].shape[0]  # genes and peaks share one matrix, counted once
    # A 10x file's in-memory read makes more copies than an .h5mu's, so it streams from fewer counts.
    assert qc_backed.in_memory_bytes(disk) == disk.nnz * qc_backed.IN_MEMORY_BYTES_PER_ENTRY["h5"]
    assert qc_backed.IN_MEMORY_BYTES_PER_ENTRY["h5"] > qc_backed.IN_MEMORY_BYTES_PER_ENTRY["h5mu"]
    monkeypatch.setattr(qc_backed, "BACKED_AUTO_BYTES", qc_backed.in_memory_bytes(disk) - 1)
    assert qc_backed.use_streaming(row, "auto") is not None
    monkeypatch.setattr(qc_backed, "BACKED_AUTO_BYTES", qc_backed.in_memory_bytes(disk))
    assert qc_backed.use_streaming(row, "auto") is None


@pytest.mark.parametrize("kept_fraction", [0.9, 0.2])  # subtracting the removed cells / counting the kept ones
def test_feature_counts_over_kept_cells_equal_a_direct_count(kept_fraction):
    from coem.chunked import CSRSource

    rng = np.random.default_rng(0)
    rna = sp.random(97, 30, density=0.2, format="csr", random_state=1, data_rvs=lambda n: rng.integers(1, 5, n))
    atac = sp.random(120, 40, density=0.1, format="csr", random_state=2, data_rvs=lambda n: rng.integers(1, 3, n))
    atac_rows = np.sort(rng.choice(120, 97, replace=False))  # ATAC has 23 more cells, same order
    counts = qc_backed.StreamedCounts(
        {"rna": (CSRSource(rna), np.arange(97), None), "atac": (CSRSource(atac), atac_rows, np.arange(5, 40))},
        mito=np.zeros(30, dtype=bool), chunk_rows=10)
    metrics = counts.metrics(pd.Index([f"c{i}" for i in range(97)]))
    np.testing.assert_array_equal(metrics["atac_total_counts"], atac[atac_rows][:, 5:].sum(axis=1).A1)
    keep = rng.random(97) < kept_fraction
    for mod, matrix in (("rna", rna), ("atac", atac[atac_rows][:, 5:])):
        direct = np.asarray((matrix[keep] > 0).sum(axis=0)).ravel()
        np.testing.assert_array_equal(counts.feature_cells(mod, keep), direct)


def test_passes_over_a_large_sample_log_their_time(monkeypatch, caplog):
    from coem.chunked import CSRSource

    counts = qc_backed.StreamedCounts({"rna": (CSRSource(sp.eye(30, 4, format="csr")), np.arange(30), None),
                                       "atac": (CSRSource(sp.eye(30, 5, format="csr")), np.arange(30), None)},
                                      mito=np.zeros(4, dtype=bool), chunk_rows=7)
    with caplog.at_level("INFO", logger="coem.qc_backed"):
        counts.metrics(pd.Index([f"c{i}" for i in range(30)]))
    assert "cells read in" not in caplog.text  # small: silent
    monkeypatch.setattr(qc_backed, "PROGRESS_MIN_ROWS", 30)
    with caplog.at_level("INFO", logger="coem.qc_backed"):
        counts.metrics(pd.Index([f"c{i}" for i in range(30)]))
    assert "metrics and count checks (rna): 30 cells read in" in caplog.text
    assert "metrics and count checks (atac): 30 cells read in" in caplog.text
