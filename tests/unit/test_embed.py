"""RNA PCA + ATAC LSI joint embedding (coem.embed) and the embed command."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA

from coem import embed
from coem.errors import CoemInputError


@contextmanager
def _quiet():
    """mudata 0.3 warns about its future pull_on_update default; tests do not care."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def test_normalize_log1p_by_hand():
    X = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 5.0]]))
    out = embed.normalize_log1p(X).toarray()
    expected = np.log1p(np.array([[2500.0, 7500.0, 0.0], [0.0, 0.0, 0.0], [5000.0, 0.0, 5000.0]]))
    np.testing.assert_allclose(out, expected)


def test_tfidf_is_signac_method_1():
    X = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 0.0, 0.0]]))
    # TF: row / row total; IDF: n_cells (3) / peak total (2, 3, 2); log1p(TF * IDF * 1e4).
    tf = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    idf = np.array([3 / 2, 3 / 3, 3 / 2])
    np.testing.assert_allclose(embed.tfidf(X).toarray(), np.log1p(tf * idf * 1e4))


def test_hvg_picks_planted_variable_genes():
    """400 Poisson genes (means 0.1-30) + 5 genes at 1.8x / 0.2x their mean in two groups.

    The planted genes keep ordinary overall means (2-15), so they sit inside the loess fit's
    range and only their variance stands out.
    """
    rng = np.random.default_rng(0)
    n, means = 300, np.exp(rng.uniform(np.log(0.1), np.log(30), size=400))
    planted = np.array([30, 120, 201, 333, 389])
    means[planted] = [2, 4, 6, 10, 15]
    counts = rng.poisson(means, size=(n, 400)).astype(float)
    group = rng.integers(0, 2, n)
    counts[:, planted] = rng.poisson(means[planted] * np.where(group[:, None] == 1, 1.8, 0.2))
    top, score = embed.highly_variable_genes(sp.csr_matrix(counts), n_top=5)
    assert sorted(top.tolist()) == planted.tolist()
    assert top[0] == 389  # the largest effect ranks first
    assert np.all(score[planted] > np.delete(score, planted).max())
    # Poisson genes sit near standardised variance 1 (the loess captures the mean-variance trend).
    assert np.median(np.delete(score, planted)) == pytest.approx(1.0, abs=0.1)


def test_sparse_pca_equals_dense_pca_of_standardised_data():
    rng = np.random.default_rng(1)
    dense = rng.poisson(0.7, size=(120, 25)).astype(float) * rng.uniform(0.5, 3, 25)
    scores, info = embed.sparse_pca(sp.csr_matrix(dense), 6)
    z = (dense - dense.mean(0)) / dense.std(0, ddof=1)
    ref = PCA(6, svd_solver="full").fit(z)
    ref_scores = ref.transform(z)
    for j in range(6):  # equal up to the sign of each component
        assert abs(np.corrcoef(scores[:, j], ref_scores[:, j])[0, 1]) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(np.abs(scores), np.abs(ref_scores), atol=1e-8)
    np.testing.assert_allclose(info["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-8)


def _atac(depth_varies: bool, signal: float, seed: int = 2):
    """Binary peaks for two groups: a fraction ``signal`` of a cell's open peaks comes from its
    group's peak pool (0-149 or 150-399), the rest from anywhere. Depth (open peaks per cell)
    varies 10-200 or is 60 for every cell."""
    rng = np.random.default_rng(seed)
    n, p = 300, 400
    group = rng.integers(0, 2, n)
    rows, cols = [], []
    for i in range(n):
        m = int(rng.integers(10, 200)) if depth_varies else 60
        pool = np.arange(150) if group[i] else np.arange(150, 400)
        prob = np.full(p, (1 - signal) / p)
        prob[pool] += signal / pool.size
        rows += [i] * m
        cols += rng.choice(p, size=m, replace=False, p=prob).tolist()
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, p))
    return X, group


def test_lsi_drops_the_depth_component_when_depth_dominates():
    X, _ = _atac(depth_varies=True, signal=0.3)
    lsi, info = embed.atac_lsi(X, n_lsi=8, seed=0)
    assert lsi.shape == (300, 8)
    r = np.asarray(info["depth_correlations"])
    assert info["dropped_component"] == 0 and info["dropped_for_depth"] is True
    assert abs(r[0]) > 0.5 and abs(r[0]) == np.abs(r).max()
    # What is left is not depth: no kept component correlates with depth as strongly.
    kept_r = embed.depth_correlations(lsi, np.asarray(X.sum(axis=1)).ravel())
    assert np.abs(kept_r).max() < abs(r[0])


def test_lsi_keeps_every_component_when_depth_is_constant():
    X, group = _atac(depth_varies=False, signal=0.8)
    lsi, info = embed.atac_lsi(X, n_lsi=8, seed=0)
    assert info["dropped_for_depth"] is False and info["dropped_component"] == 8  # the extra last one
    assert np.allclose(info["depth_correlations"], 0)
    assert abs(np.corrcoef(lsi[:, 0], group)[0, 1]) > 0.9  # the group signal is component 1


def test_lsi_is_deterministic_for_a_seed():
    X, _ = _atac(depth_varies=True, signal=0.3, seed=3)
    a, _ = embed.atac_lsi(X, n_lsi=5, seed=4)
    b, _ = embed.atac_lsi(X, n_lsi=5, seed=4)
    np.testing.assert_array_equal(a, b)


def test_joint_embedding_shapes_blocks_and_determinism(tiny_sim):
    emb, info = embed.pca_lsi_embedding(tiny_sim.mdata, n_hvg=150, n_pcs=12, n_lsi=9, seed=0)
    assert emb.shape == (200, 21) and emb.dtype == np.float32
    assert info["X_pca"].shape == (200, 12) and info["X_lsi"].shape == (200, 9)
    assert info["rna"]["n_hvg"] == 150 and len(info["rna"]["hvg"]) == 150
    assert set(info["rna"]["hvg"]) <= set(tiny_sim.mdata.mod["rna"].var_names)
    for block in (emb[:, :12], emb[:, 12:]):  # each block: centred, total variance 1
        np.testing.assert_allclose(block.mean(axis=0), 0, atol=1e-5)
        assert block.var(axis=0, ddof=1).sum() == pytest.approx(1.0, rel=1e-4)
    again, _ = embed.pca_lsi_embedding(tiny_sim.mdata, n_hvg=150, n_pcs=12, n_lsi=9, seed=0)
    np.testing.assert_array_equal(emb, again)
    # States of the simulation separate: nearest neighbours mostly share the state.
    from coem.graph import knn

    state = tiny_sim.mdata.obs["state"].to_numpy()
    idx, _ = knn(emb, k=6)
    assert (state[idx[:, 1:]] == state[:, None]).mean() > 0.8


def test_modalities_are_aligned_to_obs_order(tiny_sim):
    """ATAC stored in another cell order gives the same embedding (cells follow mdata.obs)."""
    rna, atac = tiny_sim.mdata.mod["rna"], tiny_sim.mdata.mod["atac"]
    order = np.random.default_rng(0).permutation(atac.n_obs)
    with _quiet():
        shuffled = md.MuData({"rna": rna.copy(), "atac": atac[order].copy()})
    assert shuffled.obs_names.equals(rna.obs_names)
    a, _ = embed.pca_lsi_embedding(tiny_sim.mdata, n_hvg=100, n_pcs=5, n_lsi=5, seed=0)
    b, _ = embed.pca_lsi_embedding(shuffled, n_hvg=100, n_pcs=5, n_lsi=5, seed=0)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_missing_modality_is_a_user_error():
    a = ad.AnnData(X=sp.csr_matrix(np.ones((5, 3), np.float32)), obs=pd.DataFrame(index=list("abcde")))
    with _quiet():
        mdata = md.MuData({"rna": a})
    with pytest.raises(CoemInputError, match="modality 'atac' is missing"):
        embed.pca_lsi_embedding(mdata)


def test_real_pbmc_embedding(shared_data):
    """The 10x PBMC test object (1,000 cells, 45 genes, 174 peaks): components capped by genes."""
    with _quiet():
        mdata = md.read_h5mu(str(shared_data / "pbmc10x_muon" / "test_rna_atac.h5mu"))
    emb, info = embed.pca_lsi_embedding(mdata, n_hvg=2000, n_pcs=50, n_lsi=20, seed=0)
    assert info["rna"]["n_hvg"] == 45 and info["rna"]["n_pcs"] == 44  # fewer genes than asked for
    assert emb.shape == (mdata.n_obs, 44 + 20) and np.all(np.isfinite(emb))
    assert info["atac"]["n_lsi"] == 20


def test_cli_writes_embedding_and_record(tmp_path, tiny_sim, monkeypatch):
    from coem.cli.embed import main

    path = tmp_path / "S1.qc.h5mu"
    with _quiet():
        tiny_sim.mdata.write(str(path))
    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S1", "--input", str(path), "--prefix", "P", "--seed", "5",
                 "--n-hvg", "100", "--n-pcs", "8", "--n-lsi", "6"]) == 0
    import anndata as ad

    out = ad.read_h5ad("P.embedding.h5ad")  # only what the step adds: no counts
    assert out.X is None and out.obs_names.equals(tiny_sim.mdata.obs_names)
    assert out.obsm["X_embedding"].shape == (200, 14)
    assert out.obsm["X_pca"].shape == (200, 8) and out.obsm["X_lsi"].shape == (200, 6)
    record = json.loads(out.uns["coem"]["embed"])
    assert record["seed"] == 5 and record["params"] == {"method": "pca_lsi", "n_hvg": 100, "n_pcs": 8, "n_lsi": 6,
                                                        "input": str(path)}
    assert record["info"]["atac"]["n_lsi"] == 6 and len(record["info"]["rna"]["hvg"]) == 100
    assert "COEM_EMBED" in Path("versions.yml").read_text()
    assert not Path("P.embedding.h5ad.partial").exists()


def test_cli_bad_input_is_a_user_error(tmp_path, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.embed import main

    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S2", "--input", "absent.h5mu"]) == 2
    assert "ERROR: sample 'S2', file 'absent.h5mu': input file not found" in capsys.readouterr().err
    assert run_cli(main, ["--sample", "S2", "--input", "absent.h5mu", "--n-pcs", "0"]) == 2
    assert "--n-pcs must be at least 1" in capsys.readouterr().err


def test_sparse_gram_matches_the_sparse_product_across_row_blocks():
    import scipy.sparse as sp

    from coem.embed import sparse_gram

    X = sp.random(250, 40, density=0.3, random_state=3, format="csr")
    # 37 rows per block: 7 blocks, the last one short.
    np.testing.assert_allclose(sparse_gram(X, chunk_entries=37 * 40), (X.T @ X).toarray(), rtol=1e-12, atol=1e-12)
    assert sparse_gram(X[:0]).shape == (40, 40) and not sparse_gram(X[:0]).any()
