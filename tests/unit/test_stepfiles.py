"""The published MuData is a compressed copy of the QC output (coem.stepfiles.compressed_copy):
the same content, MuData's header kept, the counts gzip-compressed (issue 14: the work directory
holds the counts once, uncompressed, plus this smaller copy)."""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem import stepfiles


def _mudata(path, n_cells=6000):
    rng = np.random.default_rng(0)
    counts = sp.random(n_cells, 400, density=0.2, format="csr", random_state=1,
                       data_rvs=lambda k: rng.integers(1, 9, k).astype(np.float32))
    obs = pd.DataFrame({"label": rng.choice(["a", "b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    mods = {"rna": ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs[[]].copy(),
                              var=pd.DataFrame(index=[f"g{i}" for i in range(400)])),
            "atac": ad.AnnData(X=sp.csr_matrix(counts[:, :300], dtype=np.float32), obs=obs[[]].copy(),
                               var=pd.DataFrame(index=[f"chr1:{i}00-{i}50" for i in range(300)]))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
        mdata.obs["label"] = obs["label"].to_numpy()
        mdata.write(path)
    return mdata


def test_compressed_copy_keeps_the_content_and_compresses_the_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(stepfiles, "_COPY_BLOCK", 10_000)  # several blocks per dataset
    original = _mudata(tmp_path / "qc.h5mu")
    stepfiles.compressed_copy(tmp_path / "qc.h5mu", tmp_path / "copy.h5mu")
    assert (tmp_path / "copy.h5mu").read_bytes()[:6] == b"MuData"  # mudata's user block, as written
    with h5py.File(tmp_path / "copy.h5mu") as f:
        assert f["mod/rna/X/data"].compression == "gzip" and f["mod/rna/X/data"].shuffle
        assert f["mod/rna/X"].attrs["encoding-type"] == "csr_matrix"
        assert f["mod/rna/var/_index"].compression is None  # small: copied as it is
    assert (tmp_path / "copy.h5mu").stat().st_size < 0.6 * (tmp_path / "qc.h5mu").stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = md.read_h5mu(tmp_path / "copy.h5mu")
    for mod in ("rna", "atac"):
        assert (copy.mod[mod].X != original.mod[mod].X).nnz == 0
        pd.testing.assert_index_equal(copy.mod[mod].var_names, original.mod[mod].var_names)
    assert list(copy.obs["label"]) == list(original.obs["label"])
    stepfiles.add_to_h5mu(tmp_path / "copy.h5mu", obs={"metacell": np.array(["MC1"] * copy.n_obs)},
                          obsm={"X_embedding": np.zeros((copy.n_obs, 2))}, records={"export": "{}"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        added = md.read_h5mu(tmp_path / "copy.h5mu")
    assert set(added.obs["metacell"]) == {"MC1"} and added.obsm["X_embedding"].shape == (copy.n_obs, 2)
