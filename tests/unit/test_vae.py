"""The joint VAE: model shapes and gradients, GMM KL, sparse minibatches, training, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from coem.errors import CoemInputError
from coem.model import JointVAE, embed, gmm_kl, kl_warmup_weight, prepare_data, resolve_device, train_vae
from coem.model.data import CSRSource, H5CSRSource, MultiomeData, select_genes, select_peaks, split_rows

SMALL = dict(n_latent=4, n_hidden=32, n_centroids=3, n_attention_heads=4, n_attention_tokens=2)
FAST = dict(batch_size=64, threads=1, log_every=0, gmm_init="random")


def _toy_counts(n_cells=240, n_genes=60, n_peaks=300, seed=0):
    """Two-state NB RNA + Bernoulli ATAC (used when coem.simulate is not available)."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 2, n_cells)
    base = rng.gamma(2.0, 1.0, (2, n_genes))
    mean = base[state] * rng.lognormal(0, 0.3, (n_cells, 1)) * 3
    rna = rng.negative_binomial(5, 5 / (5 + mean)).astype(np.float32)
    openness = rng.uniform(0.0, 0.08, (2, n_peaks))
    atac = (rng.random((n_cells, n_peaks)) < openness[state]).astype(np.float32)
    return sp.csr_matrix(rna), sp.csr_matrix(atac), np.array(["A", "B"])[state]


@pytest.fixture(scope="module")
def sim():
    """(rna CSR, atac CSR, state labels): the project simulator when present, else toy data."""
    try:
        from coem.simulate import simulate_multiome
    except ImportError:
        return _toy_counts()
    s = simulate_multiome(n_cells=240, n_genes=60, n_peaks=300, n_types=3, trajectory_fraction=0.0,
                          seed=0, atac_median_counts=20)
    m = s.mdata
    return m.mod["rna"].X.tocsr(), m.mod["atac"].X.tocsr(), m.obs["state"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def data(sim):
    rna, atac, _ = sim
    return prepare_data(rna, atac, n_genes=40, max_peak_fraction=0.5, seed=0)


def small_model(data, seed=0, **kw):
    return JointVAE(data.n_genes, data.n_peaks, seed=seed, **{**SMALL, **kw})


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("rna_lik, atac_lik", [("nb", "zip"), ("zinb", "bernoulli"), ("poisson", "nb")])
def test_forward_shapes(rna_lik, atac_lik):
    gen = torch.Generator().manual_seed(0)
    model = JointVAE(30, 50, n_latent=5, n_hidden=64, n_centroids=4, rna_likelihood=rna_lik, atac_likelihood=atac_lik)
    model.eval()  # no dropout: encode() and forward() must then agree on the posterior mean
    x_rna = torch.poisson(torch.full((7, 30), 2.0), generator=gen)
    x_atac = (torch.rand(7, 50, generator=gen) < 0.2).float()
    out = model(x_rna, x_atac)
    assert out["z"].shape == out["z_mean"].shape == out["z_logvar"].shape == (7, 5)
    assert out["rna"]["mean"].shape == (7, 30) and out["atac"]["mean"].shape == (7, 50)
    assert (out["rna"]["theta"] is not None) == (rna_lik in ("nb", "zinb"))
    assert (out["rna"]["pi_logits"] is not None) == (rna_lik == "zinb")
    # Count decoders: the mean is proportions x observed library, so it sums to the cell's total.
    torch.testing.assert_close(out["rna"]["mean"].sum(1), x_rna.sum(1), rtol=1e-4, atol=1e-3)
    parts = model.loss(x_rna, x_atac)
    assert parts["loss"].ndim == 0 and torch.isfinite(parts["loss"])
    mu, logvar = model.encode(x_rna, x_atac)
    torch.testing.assert_close(mu, out["z_mean"])
    assert not torch.equal(out["z"], mu)  # forward samples z ...
    assert torch.equal(model(x_rna, x_atac, sample=False)["z"], mu)  # ... unless told not to


@pytest.mark.parametrize("rna_lik, atac_lik", [("nb", "zip"), ("zinb", "bernoulli")])
def test_gradients_reach_every_parameter_group(rna_lik, atac_lik):
    model = JointVAE(30, 50, n_latent=5, n_hidden=64, n_centroids=4, rna_likelihood=rna_lik,
                     atac_likelihood=atac_lik, dropout_rate=0.0, seed=1)
    gen = torch.Generator().manual_seed(0)
    x_rna = torch.poisson(torch.full((16, 30), 3.0), generator=gen)
    x_atac = (torch.rand(16, 50, generator=gen) < 0.3).float()
    model.loss(x_rna, x_atac).get("loss").backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    groups = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert {"rna_encoder", "atac_encoder", "joint", "z_mean", "z_logvar", "prior_logits", "prior_mu",
            "prior_logvar", "rna_decoder", "atac_decoder"} <= groups
    assert any("attention" in name for name, _ in model.named_parameters())


def test_attention_layout_and_bad_hidden_size():
    model = JointVAE(10, 20)  # defaults: 128 hidden = 8 tokens of 16, 8 heads
    attn = model.atac_encoder.attention
    assert attn.embed_dim == 16 and attn.num_heads == 8 and attn.batch_first
    assert model.joint[0].in_features == 256 and model.joint[0].out_features == 128
    assert model.config["rna_likelihood"] == "nb" and model.config["atac_likelihood"] == "zip"
    assert (model.rna_weight, model.atac_weight) == (3.0, 1.0)
    with pytest.raises(ValueError, match="n_hidden=100"):
        JointVAE(10, 20, n_hidden=100)
    with pytest.raises(ValueError, match="unknown likelihood"):
        JointVAE(10, 20, atac_likelihood="gaussian")


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = JointVAE(10, 20, seed=5), JointVAE(10, 20, seed=5), JointVAE(10, 20, seed=6)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.prior_mu, c.prior_mu)
    rebuilt = JointVAE.from_config(a.config)
    assert torch.equal(rebuilt.prior_mu, a.prior_mu)


def test_gmm_kl_with_one_component_is_the_gaussian_kl():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen) * 0.5
    prior_mu, prior_logvar = torch.randn(1, 3, generator=gen), torch.randn(1, 3, generator=gen) * 0.5
    kl, gamma = gmm_kl(mu, logvar, mu, torch.zeros(1), prior_mu, prior_logvar)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(prior_mu[0], torch.exp(0.5 * prior_logvar[0]))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum(1))
    assert torch.equal(gamma, torch.ones(6, 1))


def test_gmm_kl_responsibilities_and_sign():
    prior_mu = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    prior_logvar = torch.zeros(2, 2)
    z = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    kl, gamma = gmm_kl(z, torch.zeros(2, 2), z, torch.zeros(2), prior_mu, prior_logvar)
    assert gamma[0, 0] > 0.999 and gamma[1, 1] > 0.999
    # Posterior = one of two equally likely components: KL ~ log 2 (the choice of component).
    torch.testing.assert_close(kl, torch.full((2,), float(np.log(2))), atol=1e-4, rtol=0)
    gen = torch.Generator().manual_seed(1)
    kl_rand, _ = gmm_kl(torch.randn(50, 2, generator=gen), torch.randn(50, 2, generator=gen),
                        torch.randn(50, 2, generator=gen), torch.randn(2, generator=gen), prior_mu, prior_logvar)
    assert (kl_rand >= 0).all()


def test_kl_warmup_is_linear_then_flat():
    assert [kl_warmup_weight(e, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_warmup_weight(0, 0) == 1.0


# ---------------------------------------------------------------- data


def test_gene_selection_keeps_the_variable_genes():
    rng = np.random.default_rng(0)
    n = 200
    flat = rng.poisson(5.0, (n, 8))
    state = np.arange(n) % 2
    variable = np.stack([rng.poisson(np.where(state == 1, 40.0, 0.5)) for _ in range(3)], axis=1)
    counts = sp.csr_matrix(np.hstack([flat[:, :4], variable, flat[:, 4:]]).astype(np.float32))
    np.testing.assert_array_equal(select_genes(CSRSource(counts), 3, chunk_rows=37), [4, 5, 6])
    np.testing.assert_array_equal(select_genes(CSRSource(counts), 0), np.arange(11))
    np.testing.assert_array_equal(select_genes(CSRSource(counts), 50), np.arange(11))


def test_peak_filter_drops_ubiquitous_and_empty_peaks():
    n = 100
    cols = np.zeros((n, 4), np.float32)
    cols[:50, 0] = 1  # 50% open
    cols[:10, 1] = 2  # 10% open: kept (limit is inclusive)
    cols[:11, 2] = 1  # 11%: dropped
    # column 3 never open: dropped
    np.testing.assert_array_equal(select_peaks(CSRSource(sp.csr_matrix(cols)), 0.1, chunk_rows=30), [1])
    with pytest.raises(CoemInputError, match=r"raise --max-peak-fraction"):
        select_peaks(CSRSource(sp.csr_matrix(cols[:, [0, 2]])), 0.1)


def test_batches_are_dense_binarised_seeded_and_cover_every_row():
    rng = np.random.default_rng(3)
    rna = sp.csr_matrix(rng.poisson(1.0, (50, 6)).astype(np.float32))
    atac = sp.random(50, 9, density=0.1, random_state=1, format="csr", dtype=np.float32) * 3
    atac.data = np.ceil(atac.data)
    data = prepare_data(rna, atac, n_genes=4, max_peak_fraction=1.0, val_fraction=0.2, seed=0)
    assert data.train_idx.size == 40 and data.val_idx.size == 10
    assert np.intersect1d(data.train_idx, data.val_idx).size == 0
    seen = []
    gen = torch.Generator().manual_seed(0)
    for x_rna, x_atac in data.batches(data.train_idx, 16, gen):
        assert x_rna.dtype == torch.float32 and x_rna.shape[1] == 4 and x_atac.shape[1] == data.n_peaks
        assert set(torch.unique(x_atac).tolist()) <= {0.0, 1.0}
        seen.append(x_rna)
    assert [b.shape[0] for b in seen] == [16, 16, 8]
    # Every training row once: the shuffled batches hold the same rows as the ordered pass.
    all_rows = torch.cat(seen)
    ordered = torch.cat([b for b, _ in data.batches(data.train_idx, 16)])
    assert sorted(map(tuple, all_rows.tolist())) == sorted(map(tuple, ordered.tolist()))
    # Same generator seed, same order; the ordered pass follows the requested row order.
    again = torch.cat([b for b, _ in data.batches(data.train_idx, 16, torch.Generator().manual_seed(0))])
    assert torch.equal(again, all_rows)
    rows = np.array([7, 2, 30])
    x_rna, _ = next(data.batches(rows, 8))
    np.testing.assert_array_equal(x_rna.numpy(), rna[rows][:, data.gene_idx].toarray())
    raw = MultiomeData(data.rna, data.atac, data.gene_idx, data.peak_idx, binarize_atac=False)
    assert raw.get_batch(np.arange(50))[1].max() > 1


def test_h5_source_reads_the_same_rows_as_memory(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    x = sp.random(40, 12, density=0.3, random_state=2, format="csr", dtype=np.float32)
    ad.AnnData(X=x).write_h5ad(tmp_path / "x.h5ad")
    source = H5CSRSource(tmp_path / "x.h5ad", "X")
    try:
        assert source.shape == (40, 12) and len(source) == 40
        for rows in (np.array([0, 1, 2, 5, 39]), np.sort(rng.choice(40, 17, replace=False)), np.array([3])):
            np.testing.assert_array_equal(source.get_rows(rows).toarray(), x[rows].toarray())
    finally:
        source.close()


def test_prepare_data_rejects_bad_input():
    good = sp.csr_matrix(np.ones((5, 3), np.float32))
    with pytest.raises(CoemInputError, match="RNA has 5 cells but ATAC has 4"):
        prepare_data(good, good[:4])
    with pytest.raises(CoemInputError, match="negative values"):
        prepare_data(-good, good, max_peak_fraction=1.0)
    assert split_rows(10, 0.0, 0)[1].size == 0


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss(data):
    model = small_model(data)
    history = train_vae(model, data, epochs=6, n_warmup_epochs=0, seed=0, **FAST)
    epochs = history["epochs"]
    assert len(epochs) == history["epochs_run"] == 6
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["recon_rna"] < epochs[0]["recon_rna"]
    assert set(epochs[0]) >= {"train_loss", "val_loss", "recon_rna", "recon_atac", "kl", "seconds"}
    assert history["device"].startswith("cpu") and history["best_epoch"] >= 1


def test_same_seed_gives_identical_z(data):
    zs = []
    for seed in (3, 3, 4):
        model = small_model(data, seed=seed)
        train_vae(model, data, epochs=2, n_warmup_epochs=1, seed=seed, **{**FAST, "gmm_init": "kmeans"})
        zs.append(embed(model, data, batch_size=100))
    assert zs[0].dtype == np.float32 and zs[0].shape == (data.n_obs, 4)
    np.testing.assert_array_equal(zs[0], zs[1])
    assert not np.allclose(zs[0], zs[2])


def test_cells_per_epoch_draws_a_seeded_subset_each_epoch(data, monkeypatch):
    """Each epoch trains on cells_per_epoch distinct training cells, a new draw every epoch,
    and validates on a fixed subset of the same proportion; the same seed repeats the draws."""
    import coem.model.train as train_module

    seen = []
    run_epoch = train_module._run_epoch

    def spy(model, data_, rows, *args, **kwargs):
        seen.append((kwargs.get("optimizer", args[3] if len(args) > 3 else None) is not None, np.asarray(rows).copy()))
        return run_epoch(model, data_, rows, *args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", spy)
    n_train, n_val = data.train_idx.size, data.val_idx.size
    history = train_vae(small_model(data), data, epochs=3, n_warmup_epochs=0, seed=0, cells_per_epoch=100, **FAST)
    train_rows = [rows for is_train, rows in seen if is_train]
    val_rows = [rows for is_train, rows in seen if not is_train]
    assert [r.size for r in train_rows] == [100, 100, 100]
    assert all(np.unique(r).size == 100 and np.isin(r, data.train_idx).all() for r in train_rows)
    assert not np.array_equal(train_rows[0], train_rows[1])
    expected_val = round(n_val * 100 / n_train)
    assert all(np.array_equal(r, val_rows[0]) and r.size == expected_val for r in val_rows)
    assert np.isin(val_rows[0], data.val_idx).all()
    assert history["cells_per_epoch"] == 100 and history["val_cells_per_epoch"] == expected_val
    assert [e["train_cells"] for e in history["epochs"]] == [100, 100, 100]
    first = train_rows[0]
    seen.clear()
    train_vae(small_model(data), data, epochs=1, n_warmup_epochs=0, seed=0, cells_per_epoch=100, **FAST)
    np.testing.assert_array_equal(seen[0][1], first)
    with pytest.raises(ValueError, match="cells_per_epoch must be at least 1"):
        train_vae(small_model(data), data, epochs=1, cells_per_epoch=0, **FAST)


def test_kmeans_initialises_the_prior(data):
    model = small_model(data)
    random_mu = model.prior_mu.detach().clone()
    history = train_vae(model, data, epochs=1, seed=0, **{**FAST, "gmm_init": "kmeans"})
    assert history["gmm_init"] == "kmeans"
    assert not torch.allclose(model.prior_mu.detach(), random_mu)
    torch.testing.assert_close(torch.softmax(model.prior_logits.detach(), 0).sum(), torch.tensor(1.0))


def test_early_stopping_keeps_the_best_epoch(data):
    model = small_model(data)
    history = train_vae(model, data, epochs=30, lr=0.0, patience=2, n_warmup_epochs=0, seed=0, **FAST)
    assert history["stopped_early"]
    assert history["epochs_run"] == history["best_epoch"] + 2 < 30
    best = min(e["val_loss"] for e in history["epochs"])
    assert history["epochs"][history["best_epoch"] - 1]["val_loss"] == best


def test_embedding_order_matches_rows(data):
    model = small_model(data)
    z_all = embed(model, data, batch_size=50)
    rows = np.array([200, 3, 77])
    np.testing.assert_allclose(embed(model, data, rows=rows), z_all[rows], rtol=1e-5, atol=1e-6)


def test_prefetch_yields_the_same_batches_in_order(data):
    from coem.model.train import _prefetched

    plain = list(data.batches(data.val_idx, 7))
    fetched = list(_prefetched(data.batches(data.val_idx, 7), True))
    assert len(fetched) == len(plain) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, fetched))


def test_normalised_input_ignores_sequencing_depth():
    model = JointVAE(20, 30, n_hidden=64, input_transform="log1p_norm", seed=0).eval()
    gen = torch.Generator().manual_seed(2)
    x_rna = torch.poisson(torch.full((4, 20), 3.0), generator=gen)
    x_atac = torch.poisson(torch.full((4, 30), 1.0), generator=gen)
    mu, _ = model.encode(x_rna, x_atac)
    mu_deep, _ = model.encode(x_rna * 10, x_atac * 10)
    torch.testing.assert_close(mu, mu_deep, rtol=1e-4, atol=1e-5)
    raw = JointVAE(20, 30, n_hidden=64, input_transform="log1p", seed=0).eval()
    assert not torch.allclose(raw.encode(x_rna, x_atac)[0], raw.encode(x_rna * 10, x_atac * 10)[0])
    with pytest.raises(ValueError, match="input_transform"):
        JointVAE(20, 30, input_transform="scale")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="CUDA requested but not available"):
            assert resolve_device("cuda") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda(data):
    model = small_model(data)
    history = train_vae(model, data, epochs=2, device="cuda", seed=0, **{**FAST, "threads": None})
    assert history["device"].startswith("cuda")
    z = embed(model, data)
    assert z.shape == (data.n_obs, 4) and np.isfinite(z).all()


def _knn_agreement(z: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of cells whose k nearest other cells mostly share their label (leave-one-out)."""
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    neighbours = labels[idx[:, 1:]]
    votes = (neighbours == labels[:, None]).sum(axis=1)
    return float(np.mean(votes > k / 2))


def test_vae_separates_simulated_states(sim, data):
    """A short training already groups cells of a state: kNN label agreement well above chance."""
    _, _, labels = sim
    model = small_model(data)
    train_vae(model, data, epochs=25, n_warmup_epochs=3, seed=0, **{**FAST, "gmm_init": "kmeans", "batch_size": 32})
    agreement = _knn_agreement(embed(model, data), labels)
    chance = max(np.mean(labels == lab) for lab in np.unique(labels))
    assert agreement > chance + 0.3, (agreement, chance)


# ---------------------------------------------------------------- command line


@pytest.fixture()
def h5mu(tmp_path, sim):
    import anndata as ad
    import mudata as md

    rna, atac, labels = sim
    names = [f"c{i}" for i in range(rna.shape[0])]
    mods = {"rna": ad.AnnData(X=rna.astype(np.float32), obs={"_": np.zeros(len(names))}),
            "atac": ad.AnnData(X=atac.astype(np.float32), obs={"_": np.zeros(len(names))})}
    for name, adata in mods.items():
        adata.obs_names = names
        adata.var_names = [f"{name}{j}" for j in range(adata.n_vars)]
    mdata = md.MuData(mods)
    mdata.obs["label"] = labels
    path = tmp_path / "S1.qc.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(str(path))
    return path


def _write_normalised_rna(mdata, path) -> None:
    """The MuData with RNA scaled by 0.37 (non-integer, as normalised data would be)."""
    import mudata as md

    normalised = mdata.mod["rna"].copy()
    normalised.X = normalised.X.multiply(0.37).tocsr()
    md.MuData({"rna": normalised, "atac": mdata.mod["atac"]}).write(str(path))


def test_cli_writes_embedding_checkpoint_history_and_multiqc(h5mu, tmp_path, monkeypatch):
    import mudata as md

    from coem.cli.train_vae import main
    from coem.model import COEMVAE
    from coem.provenance import read_step

    monkeypatch.chdir(tmp_path)
    rc = main(["--sample", "S1", "--input", str(h5mu), "--prefix", "S1", "--epochs", "3", "--n-latent", "4",
               "--n-hidden", "64", "--n-centroids", "3", "--batch-size", "64", "--n-genes", "40",
               "--max-peak-fraction", "0.5", "--threads", "1", "--seed", "1", "--warmup-epochs", "1"])
    assert rc == 0
    import anndata as ad

    cells = ad.read_h5ad(tmp_path / "S1.embedding.h5ad")  # only what the step adds: z, no counts
    assert cells.X is None
    out = md.read_h5mu(h5mu)
    assert cells.obs_names.equals(out.obs_names)
    z = cells.obsm["X_embedding"]
    assert z.shape == (240, 4) and np.isfinite(z).all()
    record = read_step(cells, "embed")
    assert record["params"]["method"] == "vae" and record["seed"] == 1
    assert record["epochs_run"] == 3 and record["device"].startswith("cpu")
    assert record["torch"] == torch.__version__ and "seconds_per_epoch" in record
    assert record["n_genes_used"] == 40
    history = (tmp_path / "S1.vae_history.tsv").read_text().splitlines()
    assert history[0].startswith("epoch\ttrain_loss\tval_loss") and len(history) == 4
    loss = json.loads((tmp_path / "S1_vae_loss_mqc.json").read_text())
    assert loss["id"] == "coem_vae_loss" and loss["plot_type"] == "linegraph"
    assert set(loss["data"]) == {"S1 train", "S1 validation"} and len(loss["data"]["S1 train"]) == 3
    # numeric [epoch, loss] pairs in epoch order (MultiQC sorts string keys as strings)
    assert [x for x, _ in loss["data"]["S1 train"]] == [1.0, 2.0, 3.0]
    summary = json.loads((tmp_path / "S1_vae_summary_mqc.json").read_text())
    assert summary["id"] == "coem_vae_summary"
    row = summary["data"]["S1"]
    assert row["epochs_run"] == 3 and row["seed"] == 1 and row["device"].startswith("cpu")
    assert "COEM_TRAIN_VAE" in (tmp_path / "versions.yml").read_text()
    vae = COEMVAE.load(tmp_path / "S1.vae.pt", mdata=out)
    assert vae.model_.config["n_latent"] == 4 and len(vae.genes_) == 40 and vae.n_latent == 4
    assert len(vae.history_["epochs"]) == 3
    # The checkpoint reproduces the written embedding, through the model object and by hand.
    np.testing.assert_allclose(vae.transform(out), z, rtol=1e-4, atol=1e-5)
    x_rna = torch.from_numpy(out.mod["rna"][:, vae.genes_].X.toarray())
    x_atac = torch.from_numpy((out.mod["atac"][:, vae.peaks_].X.toarray() > 0).astype(np.float32))
    with torch.no_grad():
        mu, _ = vae.model_.encode(x_rna, x_atac)
    np.testing.assert_allclose(mu.numpy(), z, rtol=1e-4, atol=1e-5)


def test_cli_reports_bad_input_as_input_errors(h5mu, tmp_path, monkeypatch):
    import mudata as md

    from coem.cli._common import run_cli
    from coem.cli.train_vae import main

    monkeypatch.chdir(tmp_path)
    base = ["--sample", "S1", "--prefix", "S1", "--epochs", "1"]
    with pytest.raises(CoemInputError, match="input file not found"):
        main(base + ["--input", str(tmp_path / "missing.h5mu")])
    with pytest.raises(CoemInputError, match="bernoulli needs binarised peaks"):
        main(base + ["--input", str(h5mu), "--atac-likelihood", "bernoulli", "--no-binarize-atac"])
    mdata = md.read_h5mu(h5mu)
    rna_only = md.MuData({"rna": mdata.mod["rna"]})
    rna_only.write(str(tmp_path / "rna_only.h5mu"))
    with pytest.raises(CoemInputError, match="modality 'atac' is missing"):
        main(base + ["--input", str(tmp_path / "rna_only.h5mu")])
    _write_normalised_rna(mdata, tmp_path / "norm.h5mu")
    with pytest.raises(CoemInputError, match=r"sample 'S1', file .*norm.h5mu.*RNA values are not integers"):
        main(base + ["--input", str(tmp_path / "norm.h5mu")])
    assert run_cli(main, base + ["--input", str(h5mu), "--max-peak-fraction", "0.0001"]) == 2
    assert not (tmp_path / "S1.embedding.h5ad").exists()


CLI_SMALL = ["--epochs", "2", "--n-latent", "4", "--n-hidden", "64", "--n-centroids", "3", "--batch-size", "64",
             "--n-genes", "40", "--max-peak-fraction", "0.5", "--threads", "1", "--seed", "1", "--warmup-epochs", "1"]


def test_cli_backed_streams_from_the_file_and_matches_memory(h5mu, tmp_path, monkeypatch):
    """--backed on reads batches from the h5mu (rows only) and gives the in-memory z exactly;
    both write the same per-cell file: obs, z and the step records, earlier records kept."""
    import mudata as md

    from coem.cli.train_vae import main, use_backed
    from coem.provenance import read_step

    mdata = md.read_h5mu(h5mu)
    mdata.uns["coem"] = {"qc": json.dumps({"step": "qc", "seed": 0})}
    mdata.write(str(h5mu))
    assert use_backed(str(h5mu), "auto", "S1") is False  # small: memory
    assert use_backed(str(h5mu), "on", "S1") is True
    monkeypatch.chdir(tmp_path)
    for mode in ("off", "on"):
        assert main(["--sample", "S1", "--input", str(h5mu), "--prefix", mode, "--backed", mode] + CLI_SMALL) == 0
    import anndata as ad

    memory, backed = ad.read_h5ad(tmp_path / "off.embedding.h5ad"), ad.read_h5ad(tmp_path / "on.embedding.h5ad")
    np.testing.assert_array_equal(backed.obsm["X_embedding"], memory.obsm["X_embedding"])
    assert read_step(backed, "embed")["backed"] is True and read_step(memory, "embed")["backed"] is False
    assert read_step(backed, "qc") == {"step": "qc", "seed": 0}  # earlier records travel on
    assert list(backed.obs["label"]) == list(memory.obs["label"]) == list(mdata.obs["label"])
    assert backed.X is None and backed.obs_names.equals(mdata.obs_names)
    assert not list(tmp_path.glob("*.partial"))


def test_cli_backed_rejects_what_it_cannot_stream(h5mu, tmp_path, monkeypatch):
    import anndata as ad
    import mudata as md

    from coem.cli.train_vae import main

    monkeypatch.chdir(tmp_path)
    mdata = md.read_h5mu(h5mu)
    dense = md.MuData({"rna": ad.AnnData(mdata.mod["rna"].X.toarray(), obs=mdata.mod["rna"].obs,
                                         var=mdata.mod["rna"].var), "atac": mdata.mod["atac"]})
    dense.write(str(tmp_path / "dense.h5mu"))
    base = ["--sample", "S1", "--prefix", "S1", "--backed", "on"] + CLI_SMALL
    with pytest.raises(CoemInputError, match=r"dense.h5mu.*--backed on needs 'rna' and 'atac' stored as CSR"):
        main(base + ["--input", str(tmp_path / "dense.h5mu")])
    _write_normalised_rna(mdata, tmp_path / "norm.h5mu")
    with pytest.raises(CoemInputError, match=r"norm.h5mu.*RNA values are not integers"):
        main(base + ["--input", str(tmp_path / "norm.h5mu")])
    assert not (tmp_path / "S1.embedding.h5ad").exists()
