"""Counts read in row chunks (coem.chunked, issue 14): the streamed results equal the in-memory ones.

Every function that reads counts takes an in-memory matrix or a source on disk; these tests run
both, with chunks far smaller than the data and no cache (each pass reads the file again), and
ask for the same numbers: exactly where the arithmetic is exact (sums of integer counts), to
rounding where sums are reordered (PCA, randomised SVD).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from coem import aggregate, dubious, embed
from coem.chunked import ChunkedMatrix, H5CSRSource, truncated_svd
from coem.errors import CoemInputError
from coem.h5mu_backed import BackedMuData

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "assets" / "test_data"


def _counts(n_cells: int, n_features: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_features, density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 6, k).astype(np.float64))
    return sp.csr_matrix(X, dtype=np.float32)


def _on_disk(X: sp.csr_matrix, tmp_path: Path, name: str = "x.h5ad") -> H5CSRSource:
    path = tmp_path / name
    ad.AnnData(X=X).write_h5ad(path)
    return H5CSRSource(path, "X")


@pytest.mark.parametrize("shape", [(300, 900), (900, 120)])  # both orientations of the range finder
def test_truncated_svd_equals_scikit_learn_in_chunks_and_from_the_cache(shape):
    X = embed.tfidf(_counts(*shape, density=0.05, seed=1))
    reference = TruncatedSVD(12, algorithm="randomized", n_iter=7, random_state=3)
    expected = reference.fit_transform(X)
    for cache_bytes in (0, None):
        rows = ChunkedMatrix(X, chunk_rows=41, cache_bytes=cache_bytes)
        scores, singular_values, components = truncated_svd(rows, 12, seed=3)
        np.testing.assert_allclose(scores, expected, atol=1e-9)
        np.testing.assert_allclose(singular_values, reference.singular_values_, rtol=1e-10)
        np.testing.assert_allclose(components, reference.components_, atol=1e-10)
        assert (rows._cache is None) == (cache_bytes == 0)
    with pytest.raises(CoemInputError, match="n_components"):
        truncated_svd(ChunkedMatrix(X), min(shape))


def test_rna_pca_and_atac_lsi_from_disk_in_chunks_equal_the_in_memory_result(tmp_path):
    rna, atac = _counts(400, 300, 0.2, seed=2), _counts(400, 1500, 0.04, seed=3)
    pcs, pca_info = embed.rna_pca(rna, n_hvg=100, n_pcs=10)
    streamed, streamed_info = embed.rna_pca(_on_disk(rna, tmp_path, "rna.h5ad"), n_hvg=100, n_pcs=10,
                                            chunk_rows=37, cache_bytes=0)
    assert streamed_info["hvg_index"] == pca_info["hvg_index"]
    np.testing.assert_allclose(streamed, pcs, atol=1e-9)
    lsi, lsi_info = embed.atac_lsi(atac, n_lsi=8, seed=5)
    streamed, streamed_info = embed.atac_lsi(_on_disk(atac, tmp_path, "atac.h5ad"), n_lsi=8, seed=5, chunk_rows=37,
                                             cache_bytes=0)
    assert streamed_info["dropped_component"] == lsi_info["dropped_component"]
    np.testing.assert_allclose(streamed, lsi, atol=1e-9)
    # ... and LSI is still scikit-learn's TruncatedSVD of Signac's TF-IDF.
    expected = TruncatedSVD(9, algorithm="randomized", n_iter=7, random_state=5).fit_transform(embed.tfidf(atac))
    keep = [i for i in range(9) if i != lsi_info["dropped_component"]]
    np.testing.assert_allclose(lsi, expected[:, keep], atol=1e-9)


@pytest.mark.parametrize("dense_limit", [aggregate.DENSE_SUM_BYTES, 0])  # dense table, then sparse sums
def test_metacell_sums_from_disk_in_chunks_are_exact(tmp_path, monkeypatch, dense_limit):
    monkeypatch.setattr(aggregate, "DENSE_SUM_BYTES", dense_limit)
    X = _counts(500, 700, 0.05, seed=4)
    codes = np.random.default_rng(0).integers(0, 9, 500)
    expected = (aggregate.indicator_matrix(codes, 9) @ X).toarray()
    summed = aggregate.sum_counts(_on_disk(X, tmp_path), codes, 9, chunk_rows=33)
    assert summed.dtype == np.float32 and summed.shape == (9, 700)
    np.testing.assert_array_equal(summed.toarray(), expected)


def test_dubious_test_is_the_same_from_disk_and_on_any_number_of_threads(tmp_path):
    X = _counts(240, 400, 0.1, seed=6)
    ids = np.repeat([f"MC{i}" for i in range(8)], 30)
    one = dubious.homogeneity_test(X, ids, n_features=50, n_permutations=20, seed=1, n_threads=1)
    two = dubious.homogeneity_test(_on_disk(X, tmp_path), ids, n_features=50, n_permutations=20, seed=1, n_threads=2)
    pd.testing.assert_frame_equal(one, two, rtol=1e-9)
    assert one["statistic"].notna().all() and len(one) == 8


def _mudata(tmp_path: Path, atac_order=None, drop_atac_cells: int = 0) -> Path:
    rna, atac = _counts(60, 30, 0.3, seed=7), _counts(60, 80, 0.2, seed=8)
    names = [f"c{i}" for i in range(60)]
    rna_mod = ad.AnnData(X=rna, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    atac_mod = ad.AnnData(X=atac, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[f"p{i}" for i in range(80)]))
    if atac_order is not None:
        atac_mod = atac_mod[atac_order].copy()
    if drop_atac_cells:
        atac_mod = atac_mod[drop_atac_cells:].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna_mod, "atac": atac_mod})
        path = tmp_path / "m.h5mu"
        mdata.write(path)
    return path


def test_backed_mudata_streams_aligned_modalities_and_reorders_the_others(tmp_path):
    path = _mudata(tmp_path, atac_order=np.arange(60)[::-1])
    backed = BackedMuData(path)
    assert list(backed.obs_names[:2]) == ["c0", "c1"] and backed.n_obs == 60
    assert isinstance(backed.mod["rna"].X, H5CSRSource)  # aligned: left on disk
    atac = backed.mod["atac"]
    assert sp.issparse(atac.X) and atac.obs_names.equals(backed.obs_names)  # reversed in the file: reordered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inmem = md.read_h5mu(path)
    np.testing.assert_array_equal(atac.X.toarray(), inmem.mod["atac"][inmem.obs_names].X.toarray())


def test_backed_mudata_names_a_modality_that_lacks_cells(tmp_path):
    path = _mudata(tmp_path, drop_atac_cells=5)
    with pytest.raises(CoemInputError, match="modality 'atac' lacks 5 of the MuData's cells"):
        BackedMuData(path)


def test_aggregate_and_evaluate_steps_give_the_same_results_streamed_in_small_chunks(tmp_path, monkeypatch):
    """The steps read the counts from disk; 50-row chunks and no cache give the in-memory results."""
    from coem.cli import aggregate as aggregate_cli
    from coem.cli import evaluate, metacells, qc
    from coem.cli import embed as embed_cli

    monkeypatch.chdir(tmp_path)
    common = ["--sample", "S", "--seed", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert qc.main(common + ["--h5mu", str(TEST_DATA / "sim2.h5mu")]) == 0
        assert embed_cli.main(common + ["--input", "S.qc.h5mu"]) == 0
        assert metacells.main(common + ["--input", "S.embedding.h5ad"]) == 0
        assert aggregate_cli.main(common + ["--input", "S.qc.h5mu", "--metacells", "S.metacells.h5ad"]) == 0
    env = {**os.environ, "COEM_CHUNK_ROWS": "50", "COEM_CHUNK_CACHE_GB": "0"}
    code = ("import sys\nfrom coem.cli import aggregate\n"
            "sys.exit(aggregate.main(['--sample', 'S', '--prefix', 'T', '--seed', '0', '--input', 'S.qc.h5mu', "
            "'--metacells', 'S.metacells.h5ad']))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory, streamed = md.read_h5mu("S.aggregated.h5mu"), md.read_h5mu("T.aggregated.h5mu")
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(streamed.mod[mod].X.toarray(), memory.mod[mod].X.toarray())
    pd.testing.assert_frame_equal(pd.read_csv("T.dubious.tsv", sep="\t"), pd.read_csv("S.dubious.tsv", sep="\t"),
                                  rtol=1e-9)
    # The evaluation embeddings (RNA PCA, ATAC LSI) of the streamed step equal the in-memory ones.
    code = ("import numpy as np\nfrom coem.h5mu_backed import BackedMuData\nfrom coem.tl import evaluation_embedding\n"
            "b = BackedMuData('S.qc.h5mu')\n"
            "np.savez('streamed.npz', **{m: evaluation_embedding(b, m)[0] for m in ('rna', 'atac')})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from coem.tl import evaluation_embedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inmem = md.read_h5mu("S.qc.h5mu")
    streamed_emb = np.load("streamed.npz")
    for mod in ("rna", "atac"):
        np.testing.assert_allclose(streamed_emb[mod], evaluation_embedding(inmem, mod)[0], atol=1e-8)
    assert evaluate.main(common + ["--input", "S.qc.h5mu", "--metacells", "S.metacells.h5ad",
                                   "--dubious-table", "S.dubious.tsv"]) == 0
    assert len(pd.read_csv("S.evaluation.tsv", sep="\t")) == memory.n_obs
