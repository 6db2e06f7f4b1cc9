"""COEM in a notebook: scanpy-style tools on an in-memory MuData (``import coem.tl``).

Each function works on a MuData with ``rna`` and ``atac`` raw counts, writes its result where
scanpy/muon users look for it and returns the object that computed it:

============================  ==========================================  ===========================
function                      writes                                      returns
============================  ==========================================  ===========================
``embed_vae(mdata)``          ``obsm['X_embedding']`` (z)                  the fitted ``COEMVAE``
``embed_pca_lsi(mdata)``      ``obsm['X_embedding']``, ``X_pca``, ``X_lsi``  the embedding details
``metacells(mdata)``          ``obs['metacell']`` (``MC00001`` ...)        the fitted ``SpectralMetacells``
``dubious(mdata)``            –                                           per-metacell test table
``aggregate(mdata)``          –                                           a new MuData, one obs per
                                                                          metacell (summed counts,
                                                                          dubious flags in obs)
``evaluate(mdata)``           –                                           (per-metacell table, summary)
============================  ==========================================  ===========================

Peak-to-gene links are ``coem.peak2gene.peak_to_gene(aggregated)``. The model objects are
estimators: ``coem.model.COEMVAE`` (``fit``/``transform``/``save``/``load``) and
``coem.metacells.SpectralMetacells`` (scikit-learn, ``fit_predict``). docs/api.md walks
through all of it on the shipped test data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from coem.errors import CoemInputError

EMBEDDING_KEY = "X_embedding"
METACELL_KEY = "metacell"


def embed_vae(mdata, key_added: str = EMBEDDING_KEY, **params):
    """Train the joint VAE (``coem.model.COEMVAE(**params)``) and write z to ``obsm[key_added]``."""
    from coem.model import COEMVAE

    vae = COEMVAE(**params)
    mdata.obsm[key_added] = vae.fit_transform(mdata)
    return vae


def embed_pca_lsi(mdata, key_added: str = EMBEDDING_KEY, n_hvg: int = 2000, n_pcs: int = 30, n_lsi: int = 30,
                  random_state: int = 0) -> dict:
    """RNA PCA + ATAC LSI (the ``--embedding pca_lsi`` step): ``obsm[key_added]``, ``X_pca``, ``X_lsi``."""
    from coem.embed import pca_lsi_embedding

    embedding, info = pca_lsi_embedding(mdata, n_hvg=n_hvg, n_pcs=n_pcs, n_lsi=n_lsi, seed=random_state)
    mdata.obsm[key_added] = embedding
    mdata.obsm["X_pca"] = info.pop("X_pca")
    mdata.obsm["X_lsi"] = info.pop("X_lsi")
    return info


def metacells(mdata, use_rep: str = EMBEDDING_KEY, key_added: str = METACELL_KEY, **params):
    """Spectral metacells (``SpectralMetacells(**params)``) on ``obsm[use_rep]`` into ``obs[key_added]``."""
    from coem.metacells import SpectralMetacells

    if use_rep not in mdata.obsm:
        raise CoemInputError(f"obsm has no '{use_rep}'; compute an embedding first (coem.tl.embed_vae or "
                             f"coem.tl.embed_pca_lsi); obsm keys: {', '.join(mdata.obsm.keys()) or 'none'}")
    model = SpectralMetacells(**params).fit(np.asarray(mdata.obsm[use_rep]))
    mdata.obs[key_added] = model.names_
    return model


def dubious(mdata, key: str = METACELL_KEY, **params) -> pd.DataFrame:
    """The dubious-metacell test (``coem.dubious.dubious_metacells``): one row per metacell."""
    from coem.dubious import dubious_metacells

    return dubious_metacells(mdata, metacell_key=key, **params)


def aggregate(mdata, key: str = METACELL_KEY, label_key: str = "label", flag_dubious: bool = True,
              drop_dubious: bool = False, random_state: int = 0, **dubious_params):
    """Summed raw counts per metacell (a new MuData); obs ``size``, labels and the dubious flags.

    ``drop_dubious``: leave the metacells flagged dubious out (``coem.aggregate.drop_dubious``),
    e.g. before peak-to-gene.
    """
    from coem.aggregate import add_dubious, aggregate_metacells
    from coem.aggregate import drop_dubious as drop
    from coem.cli._common import quiet_mudata

    with quiet_mudata():
        agg = aggregate_metacells(mdata, key=key, label_key=label_key)
        if flag_dubious or drop_dubious:
            add_dubious(agg, dubious(mdata, key=key, seed=random_state, **dubious_params))
        if drop_dubious:
            agg = drop(agg)
    return agg


def evaluate(mdata, key: str = METACELL_KEY, label_key: str | None = "label", n_hvg: int = 2000, n_pcs: int = 50,
             n_lsi: int = 50, knn: int = 30, n_components: int = 10, n_eigs: int = 10, random_state: int = 0,
             flag_dubious: bool = True) -> tuple[pd.DataFrame, dict]:
    """Metacell quality as the evaluate step computes it (``coem.metrics``): SEACells' compactness
    and separation on Palantir diffusion components of RNA PCA / ATAC LSI (with medians and the
    nearly-disconnected flag), purity per metacell and per cell, size balance, dubious metacells.

    Returns (per-metacell table, summary).
    """
    from coem import metrics
    from coem.dubious import summary as dubious_summary

    if key not in mdata.obs.columns:
        raise CoemInputError(f"obs has no '{key}' column; run coem.tl.metacells first")
    ids = mdata.obs[key].astype(str).to_numpy()
    components = {}
    for mod in (m for m in ("rna", "atac") if m in mdata.mod):
        emb, _ = evaluation_embedding(mdata, mod, n_hvg=n_hvg, n_pcs=n_pcs, n_lsi=n_lsi, random_state=random_state)
        vals, vecs = metrics.diffusion_maps(emb, n_components=n_components, knn=knn, seed=random_state)
        components[mod] = metrics.multiscale_space(vals, vecs, n_eigs=n_eigs)
    labels = cell_labels(mdata, label_key)
    table, summary = metrics.evaluate_metacells(ids, components, labels)
    if flag_dubious:
        flags = dubious(mdata, key=key, seed=random_state)
        table = table.join(flags.rename(index=str))
        summary["dubious"] = dubious_summary(flags)
    return table, summary


def evaluation_embedding(mdata, mod: str, n_hvg: int = 2000, n_pcs: int = 50, n_lsi: int = 50,
                         random_state: int = 0) -> tuple[np.ndarray, dict]:
    """SEACells' evaluation embedding of one modality: PCA of log-normalised HVGs (``rna``) or
    LSI of TF-IDF (``atac``), on the raw counts with cells in ``mdata.obs_names`` order."""
    from coem import embed

    adata = mdata.mod[mod]
    if not adata.obs_names.equals(mdata.obs_names):
        adata = adata[mdata.obs_names]
    if mod == "rna":
        return embed.rna_pca(adata.X, n_hvg=n_hvg, n_pcs=n_pcs)
    return embed.atac_lsi(adata.X, n_lsi=n_lsi, seed=random_state)


def cell_labels(mdata, label_key: str | None = "label") -> np.ndarray | None:
    """Cell labels as str (None where unlabelled) for purity, or None when the column is absent or empty."""
    if not label_key or label_key not in mdata.obs.columns or mdata.obs[label_key].isna().all():
        return None
    labels = mdata.obs[label_key]
    return np.where(labels.isna(), None, labels.astype(str)).astype(object)
