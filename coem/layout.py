"""A 2-D picture of the cells from the joint embedding z, for the report.

t-SNE (scikit-learn, already a dependency; no UMAP, which would add umap-learn and numba) on
at most ``MAX_CELLS`` cells drawn at random (seeded), initialised from PCA so that the picture
is stable, with perplexity 30 (less for tiny samples). t-SNE keeps neighbourhoods, which is what
a metacell is: cells of one metacell should sit together, and a metacell scattered over the
picture or straddling two islands of different labels is suspect.
"""

from __future__ import annotations

import numpy as np

MAX_CELLS = 1500
PERPLEXITY = 30.0
# 20 well-separated colours (Tableau 20), cycled over metacells and labels.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def cells_2d(z, max_cells: int = MAX_CELLS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the cells drawn, their 2-D t-SNE coordinates); PCA for fewer than 10 cells."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=max_cells, replace=False)) if n > max_cells else np.arange(n)
    X = z[idx]
    if idx.size < 10 or X.shape[1] < 2:
        xy = np.zeros((idx.size, 2))
        k = min(2, X.shape[1], idx.size)
        if k:
            xy[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(X)
        return idx, xy
    perplexity = min(PERPLEXITY, (idx.size - 1) / 3.0)
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1).fit_transform(X)
    return idx, xy


def colours(values) -> tuple[np.ndarray, dict]:
    """A colour per value (palette cycled in order of first appearance) and the value -> colour map."""
    values = np.asarray(values, dtype=object)
    order = list(dict.fromkeys(values.tolist()))
    mapping = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(order)}
    return np.array([mapping[v] for v in values.tolist()], dtype=object), mapping
