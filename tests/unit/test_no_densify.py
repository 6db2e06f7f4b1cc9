"""No step turns a whole cells x features count matrix dense (what makes a million cells fit).

Every step's command runs on 2,500 simulated cells while ``toarray`` of scipy's sparse
matrices is watched: a dense block may hold all cells of a few columns (an embedding) or a
bounded number of cells of many features (a batch, a row block, a metacell matrix), never
most cells x many features. The bounds that make this true at this small size are the
steps' own constants, lowered here so that 2,500 cells are "many" (the row block of the PCA
gram matrix) or left as they are (1,024-cell VAE batches, peak-to-gene's --max-cells).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

N_CELLS = 2500
MIN_FEATURE_COLUMNS = 100  # more columns than any embedding (at most 50 PCs / LSI components)


@pytest.fixture(scope="module")
def sim_h5mu(tmp_path_factory):
    from coem.simulate import simulate_multiome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sim = simulate_multiome(n_cells=N_CELLS, n_genes=300, n_peaks=2000, seed=1)
        path = tmp_path_factory.mktemp("dense") / "sim.h5mu"
        sim.mdata.write(str(path))
    return path


@pytest.fixture
def densified(monkeypatch):
    """Shapes of every sparse -> dense conversion; fails on most cells x many columns."""
    from scipy.sparse._compressed import _cs_matrix

    shapes = []
    original = _cs_matrix.toarray

    def watched(self, *args, **kwargs):
        shapes.append(self.shape)
        rows, cols = self.shape
        assert not (rows > N_CELLS // 2 and cols >= MIN_FEATURE_COLUMNS), (
            f"a {rows} x {cols} sparse matrix was made dense: a cells x features matrix")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_cs_matrix, "toarray", watched)
    return shapes


def test_no_step_densifies_the_cells_by_features_matrix(sim_h5mu, tmp_path, monkeypatch, densified):
    import coem.embed
    from coem.cli import aggregate, embed, evaluate, metacells, peak2gene, qc, train_vae

    monkeypatch.setattr(coem.embed, "GRAM_CHUNK_ENTRIES", 200 * 500)  # 500-cell row blocks at 200 HVGs
    monkeypatch.chdir(tmp_path)
    common = ["--sample", "S", "--prefix", "S", "--seed", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert qc.main(common + ["--h5mu", str(sim_h5mu)]) == 0
        assert embed.main(common + ["--input", "S.qc.h5mu", "--n-hvg", "200"]) == 0
        assert metacells.main(common + ["--input", "S.embedding.h5ad", "--cells-per-metacell", "50"]) == 0
        assert aggregate.main(common + ["--input", "S.qc.h5mu", "--metacells", "S.metacells.h5ad"]) == 0
        assert peak2gene.main(common + ["--input", "S.aggregated.h5mu", "--cells", "S.qc.h5mu",
                                        "--max-cells", "1000", "--n-background", "5"]) == 0
        assert evaluate.main(common + ["--input", "S.qc.h5mu", "--metacells", "S.metacells.h5ad",
                                       "--n-hvg", "200"]) == 0
        assert train_vae.main(["--sample", "S", "--prefix", "V", "--input", "S.qc.h5mu", "--epochs", "1",
                               "--batch-size", "128", "--n-genes", "200", "--threads", "1"]) == 0
    # The guard saw real work: per-batch and per-block conversions of many columns.
    wide = [s for s in densified if s[1] >= MIN_FEATURE_COLUMNS]
    assert len(wide) > 20
    assert max(rows for rows, _ in wide) <= 1024
