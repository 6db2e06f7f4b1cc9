"""coem.model.COEMVAE: the VAE as a model object (fit / transform / save / load) on a MuData."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from coem.errors import CoemInputError
from coem.model import COEMVAE, FeatureMismatchError

PARAMS = dict(n_latent=4, n_hidden=64, n_centroids=3, n_genes=40, max_peak_fraction=0.5, epochs=3,
              warmup_epochs=1, batch_size=64, threads=1, gmm_init="random", log_every=0, random_state=1)


@pytest.fixture(scope="module")
def mdata():
    from coem.simulate import simulate_multiome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return simulate_multiome(n_cells=240, n_genes=60, n_peaks=300, n_types=3, trajectory_fraction=0.0,
                                 seed=0, atac_median_counts=20).mdata


@pytest.fixture(scope="module")
def fitted(mdata):
    vae = COEMVAE(**PARAMS)
    return vae, vae.fit_transform(mdata)


def _renamed(mdata, mod, old, new):
    """A copy of ``mdata`` with one feature of ``mod`` renamed."""
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        adata = mdata.mod[mod].copy()
        adata.var_names = [new if v == old else v for v in adata.var_names]
        mods = {k: (adata if k == mod else mdata.mod[k]) for k in mdata.mod}
        return md.MuData(mods)


def test_fit_transform_shapes_and_fitted_attributes(fitted, mdata):
    vae, z = fitted
    assert z.shape == (240, 4) and z.dtype == np.float32 and np.isfinite(z).all()
    assert len(vae.genes_) == 40 and len(vae.peaks_) > 0 and set(vae.genes_) <= set(mdata.mod["rna"].var_names)
    assert vae.history_["epochs_run"] == 3 and vae.n_train_cells_ + vae.n_val_cells_ == 240
    assert set(vae.timings_) == {"features_s", "train_s", "embed_s"}
    np.testing.assert_array_equal(vae.transform(mdata), z)  # transform after fit: the same z
    assert vae.get_params()["random_state"] == 1  # scikit-learn style parameters


def test_same_seed_same_z(fitted, mdata):
    np.testing.assert_array_equal(COEMVAE(**PARAMS).fit_transform(mdata), fitted[1])


def test_save_load_round_trip_gives_the_same_z_with_safe_loading(fitted, mdata, tmp_path):
    vae, z = fitted
    path = vae.save(tmp_path / "m.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)  # only tensors and strings inside
    assert raw["format"] == "coem-vae" and raw["format_version"] == 1 and isinstance(raw["metadata"], str)
    again = COEMVAE.load(path, mdata=mdata)
    assert again.genes_ == vae.genes_ and again.peaks_ == vae.peaks_
    assert again.n_latent == 4 and again.n_hidden == 64 and again.batch_size == 64
    assert again.history_["epochs_run"] == 3
    np.testing.assert_array_equal(again.transform(mdata), z)


def test_features_are_matched_by_name_in_any_order(fitted, mdata):
    """Cells' features reordered (and with the model's features anywhere): z is unchanged."""
    import mudata as md

    vae, z = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        shuffled = md.MuData({"rna": mdata.mod["rna"][:, ::-1].copy(), "atac": mdata.mod["atac"][:, ::-1].copy()})
    np.testing.assert_allclose(vae.transform(shuffled), z, rtol=1e-5, atol=1e-6)


def test_loading_against_mismatched_genes_fails_clearly(fitted, mdata, tmp_path):
    vae, _ = fitted
    path = vae.save(tmp_path / "m.pt")
    gene = vae.genes_[3]
    bad = _renamed(mdata, "rna", gene, "NOT_A_GENE")
    with pytest.raises(FeatureMismatchError, match=rf"1 of the 40 genes the model was trained on are missing "
                                                   rf"\('{gene}'\) in 'rna'"):
        COEMVAE.load(path, mdata=bad)
    with pytest.raises(ValueError, match="genes the model was trained on are missing"):
        vae.transform(bad)  # a ValueError and a CoemInputError
    peak = vae.peaks_[0]
    with pytest.raises(CoemInputError, match=rf"1 of the {len(vae.peaks_)} peaks .* missing \('{peak}'\) in 'atac'"):
        COEMVAE.load(path, mdata=_renamed(mdata, "atac", peak, "chrZ:1-2"))


def test_load_refuses_pickled_objects_and_reads_the_earlier_format(fitted, mdata, tmp_path):
    vae, z = fitted

    import argparse

    unsafe = tmp_path / "unsafe.pt"  # any pickled class instance is refused by weights_only loading
    torch.save({"state_dict": vae.model_.state_dict(), "config": vae.model_.config,
                "x": argparse.Namespace(a=1)}, unsafe)
    with pytest.raises(CoemInputError, match="cannot read as a COEM VAE checkpoint with safe loading"):
        COEMVAE.load(unsafe)
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": {k: v.cpu() for k, v in vae.model_.state_dict().items()},
                "config": vae.model_.config, "history": {"epochs": []}, "genes": vae.genes_,
                "peaks": vae.peaks_, "binarize_atac": True, "versions": {"coem": "0.1.0"}}, legacy)
    np.testing.assert_array_equal(COEMVAE.load(legacy, mdata=mdata).transform(mdata), z)


def test_unfitted_and_bad_parameters_are_user_errors(mdata, tmp_path):
    with pytest.raises(CoemInputError, match="not fitted yet"):
        COEMVAE().transform(mdata)
    with pytest.raises(CoemInputError, match="checkpoint not found"):
        COEMVAE.load(tmp_path / "missing.pt")
    with pytest.raises(CoemInputError, match="n_latent must be at least 1, got 0"):
        COEMVAE(n_latent=0).fit(mdata)
    with pytest.raises(CoemInputError, match="fewer than n_centroids 500"):
        COEMVAE(**{**PARAMS, "n_centroids": 500}).fit(mdata)
