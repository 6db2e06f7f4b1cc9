"""kNN lists and SEACells' adaptive RBF kernel (coem.graph)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from coem import graph
from coem.graph import adaptive_bandwidth, knn, rbf_kernel

# 6 points on a line, chosen so that no two neighbour distances tie.
LINE = np.array([[0.0], [1.0], [3.0], [4.0], [8.0], [10.0]])


def test_knn_matches_brute_force_with_self_first():
    X = np.random.default_rng(0).normal(size=(80, 5))
    idx, dist = knn(X, k=6, method="exact")
    assert idx.shape == dist.shape == (80, 6)
    assert np.array_equal(idx[:, 0], np.arange(80)) and np.all(dist[:, 0] == 0)
    full = cdist(X, X)
    expected = np.argsort(full, axis=1)[:, :6]
    assert np.array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expected, axis=1), atol=1e-12)


def test_knn_keeps_self_first_among_duplicates_and_caps_k():
    X = np.zeros((4, 2))  # every distance ties at 0: self must still be neighbour 0
    idx, dist = knn(X, k=10)
    assert idx.shape == (4, 4)
    assert np.array_equal(idx[:, 0], np.arange(4))
    assert all(sorted(row) == [0, 1, 2, 3] for row in idx.tolist())


def test_knn_hand_case():
    idx, dist = knn(LINE, k=3)
    assert idx.tolist() == [[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1], [4, 5, 3], [5, 4, 3]]
    assert dist.tolist() == [[0, 1, 3], [0, 1, 2], [0, 1, 2], [0, 1, 3], [0, 2, 4], [0, 2, 6]]


def test_knn_approx_uses_registered_backend_and_falls_back_without_one(monkeypatch):
    X = np.random.default_rng(1).normal(size=(30, 3))
    calls = []

    def fake(data, k, seed):
        calls.append((data.shape, k, seed))
        return graph._exact_knn(data, k)

    previous = graph.approx_knn_backend()
    graph.register_approx_knn(fake)
    try:
        idx, _ = knn(X, k=4, method="approx", seed=7)
        assert calls == [((30, 3), 4, 7)]
        knn(X, k=4, method="auto")  # below AUTO_APPROX_MIN_CELLS: exact, backend not called
        assert len(calls) == 1
        monkeypatch.setattr(graph, "AUTO_APPROX_MIN_CELLS", 30)
        knn(X, k=4, method="auto", seed=2)  # at the threshold: the backend
        assert calls[-1] == ((30, 3), 4, 2)
        graph.register_approx_knn(None)
        idx2, _ = knn(X, k=4, method="approx")  # no backend: exact with a warning
        assert np.array_equal(idx, idx2)
    finally:
        graph.register_approx_knn(previous)


def test_pynndescent_is_the_default_backend_when_installed():
    import importlib.util

    expected = graph.pynndescent_knn if importlib.util.find_spec("pynndescent") else None
    assert graph.approx_knn_backend() is expected


def test_self_first_moves_self_to_front_and_drops_the_last_when_missing():
    indices = np.array([[1, 0, 2, 3], [2, 0, 3, 1], [0, 1, 2, 3]])
    distances = np.array([[0.0, 0.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    idx, dist = graph.self_first(indices, distances, 3)
    assert idx.tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert dist.tolist() == [[0, 0, 1], [0, 1, 2], [0, 5, 6]]  # row 1: self was missing, last entry dropped


def test_pynndescent_wrapper_passes_seed_single_thread_and_restores_numba(monkeypatch):
    """A stand-in NNDescent: the wrapper's own logic, without 60 s of numba compilation."""
    import sys
    import types

    import numba

    seen = {}

    class FakeIndex:
        def __init__(self, data, **kwargs):
            seen.update(kwargs, dtype=data.dtype)
            numba.set_num_threads(1)  # as pynndescent does with n_jobs=1
            n = data.shape[0]
            # Self second in every list, then the next cells in order.
            self.neighbor_graph = (np.stack([(np.arange(n) + j - 1) % n for j in range(kwargs["n_neighbors"])], 1),
                                   np.tile(np.arange(kwargs["n_neighbors"], dtype=np.float32), (n, 1)))

    monkeypatch.setitem(sys.modules, "pynndescent", types.SimpleNamespace(NNDescent=FakeIndex))
    threads = numba.get_num_threads()
    idx, dist = graph.pynndescent_knn(np.zeros((40, 3)), 4, 9)
    assert seen["random_state"] == 9 and seen["n_jobs"] == 1 and seen["n_neighbors"] == 4 + graph.ANN_EXTRA_NEIGHBOURS
    assert seen["dtype"] == np.float32
    assert numba.get_num_threads() == threads
    assert idx[5].tolist() == [5, 4, 6, 7] and dist[5].tolist() == [0, 0, 2, 3]


@pytest.mark.skipif(not __import__("os").environ.get("COEM_SLOW_TESTS"),
                    reason="pynndescent compiles its numba kernels for about 60 s of CPU in every process; "
                           "set COEM_SLOW_TESTS=1 to run (benchmarks/bench_scale.py measures recall on 10^5 cells)")
def test_pynndescent_recall_and_determinism():
    X = np.random.default_rng(5).normal(size=(3000, 10))
    idx, _ = graph.pynndescent_knn(X, 15, 0)
    exact, _ = knn(X, k=15, method="exact")
    assert np.mean([np.intersect1d(a, b).size for a, b in zip(idx, exact)]) / 15 >= 0.9
    assert np.array_equal(idx, graph.pynndescent_knn(X, 15, 0)[0])


# ----------------------------------------------------------------------------- partition_knn


def _grid_parts(X: np.ndarray, n_parts: int) -> np.ndarray:
    """Parts by rank of the first coordinate: slabs, so that borders are known."""
    return (np.argsort(np.argsort(X[:, 0])) * n_parts // X.shape[0]).astype(np.int64)


def test_partition_knn_is_exact_when_every_part_is_probed():
    X = np.random.default_rng(6).normal(size=(400, 4))
    parts = _grid_parts(X, 2)
    idx, dist = graph.partition_knn(X, parts, k=8, probes=2)
    exact_idx, exact_dist = knn(X, k=8, method="exact")
    assert np.array_equal(idx, exact_idx)
    np.testing.assert_allclose(dist, exact_dist, atol=1e-9)


def test_partition_knn_recall_at_least_0_9_with_a_border_probe():
    X = np.random.default_rng(7).normal(size=(3000, 5))
    parts = _grid_parts(X, 8)
    exact, _ = knn(X, k=15, method="exact")
    own_only, _ = graph.partition_knn(X, parts, k=15, probes=1)
    idx, dist = graph.partition_knn(X, parts, k=15)
    recall = np.mean([np.intersect1d(a, b).size for a, b in zip(idx, exact)]) / 15
    recall_own = np.mean([np.intersect1d(a, b).size for a, b in zip(own_only, exact)]) / 15
    assert recall >= 0.9 and recall > recall_own  # the probes find the neighbours across borders
    assert np.array_equal(idx[:, 0], np.arange(3000)) and np.all(np.diff(dist, axis=1) >= 0)
    assert np.array_equal(idx, graph.partition_knn(X, parts, k=15)[0])


def test_partition_knn_searches_everything_for_cells_of_tiny_parts():
    X = np.random.default_rng(8).normal(size=(30, 2))
    parts = np.arange(30) % 10  # parts of 3 cells: two probed parts hold fewer than k=8
    idx, _ = graph.partition_knn(X, parts, k=8, probes=2)
    assert np.array_equal(idx, knn(X, k=8, method="exact")[0])
    with pytest.raises(ValueError, match="probes must be at least 1"):
        graph.partition_knn(X, parts, k=8, probes=0)


def test_rbf_kernel_with_given_bandwidths():
    idx, dist = knn(LINE, k=3)
    sigma = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 4.0])
    W = rbf_kernel(idx, dist, sigma=sigma).toarray()
    assert W[0, 1] == pytest.approx(np.exp(-1 / 2)) and W[4, 5] == pytest.approx(np.exp(-4 / 4))
    assert W[1, 0] == W[0, 1] and W[3, 4] == pytest.approx(np.exp(-16 / 1))
    with pytest.raises(ValueError, match="one positive bandwidth per cell"):
        rbf_kernel(idx, dist, sigma=np.ones(5))
    with pytest.raises(ValueError, match="one positive bandwidth per cell"):
        rbf_kernel(idx, dist, sigma=np.zeros(6))


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="knn method must be"):
        knn(LINE, method="annoy")
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn(LINE, k=0)


def test_rbf_kernel_equals_hand_computed_matrix():
    """k=3: sigma = distance to neighbour k//2 = 1 (self = 0) -> [1, 1, 1, 1, 2, 2].

    Union edges and their d^2 / (sigma_i sigma_j): 0-1: 1/1, 0-2: 9/1, 1-2: 4/1, 1-3: 9/1,
    2-3: 1/1, 3-4: 16/2, 3-5: 36/2, 4-5: 4/4; diagonal exp(0) = 1; everything else 0.
    """
    W = rbf_kernel(*knn(LINE, k=3))
    e = np.exp
    expected = np.array([
        [1, e(-1), e(-9), 0, 0, 0],
        [e(-1), 1, e(-4), e(-9), 0, 0],
        [e(-9), e(-4), 1, e(-1), 0, 0],
        [0, e(-9), e(-1), 1, e(-8), e(-18)],
        [0, 0, 0, e(-8), 1, e(-1)],
        [0, 0, 0, e(-18), e(-1), 1],
    ])
    assert sp.isspmatrix_csr(W)
    np.testing.assert_allclose(W.toarray(), expected, rtol=1e-12, atol=0)
    # 3-5 exists only because 5 lists 3 (3 does not list 5): the union keeps it.
    assert W[3, 5] > 0


def _seacells_kth_neighbor_distance(distances: sp.csr_matrix, k: int, i: int) -> float:
    """SEACells build_graph.kth_neighbor_distance, re-typed: the argsort trick on a row."""
    row = distances[i, :].toarray().ravel()
    num_nonzero = np.sum(row > 0)
    kth = np.argsort(np.argsort(-row)) == num_nonzero - k
    return float(np.linalg.norm(row[kth]))


def test_bandwidth_matches_seacells_semantics_for_k15():
    """SEACells: scanpy stores k-1 non-self distances; k//2 picks the 7th nearest other cell."""
    X = np.random.default_rng(2).normal(size=(60, 4))
    idx, dist = knn(X, k=15)
    # scanpy-like distance matrix: the 14 non-self neighbours of each cell.
    rows = np.repeat(np.arange(60), 14)
    scanpy_like = sp.csr_matrix((dist[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(60, 60))
    seacells = [_seacells_kth_neighbor_distance(scanpy_like, 15 // 2, i) for i in range(60)]
    np.testing.assert_allclose(adaptive_bandwidth(dist), seacells, rtol=1e-12)
    np.testing.assert_allclose(adaptive_bandwidth(dist), dist[:, 7])


def test_rbf_kernel_on_random_data_is_the_definition():
    X = np.random.default_rng(3).normal(size=(50, 3))
    idx, dist = knn(X, k=15)
    W = rbf_kernel(idx, dist).toarray()
    sigma = dist[:, 7]
    adj = np.zeros((50, 50), bool)
    adj[np.repeat(np.arange(50), 15), idx.ravel()] = True
    adj |= adj.T
    expected = np.where(adj, np.exp(-cdist(X, X) ** 2 / np.outer(sigma, sigma)), 0.0)
    np.testing.assert_allclose(W, expected, rtol=1e-10, atol=1e-300)
    assert np.allclose(W, W.T) and np.all(np.diag(W) == 1)


def test_zero_bandwidth_from_duplicates_stays_finite():
    X = np.vstack([np.zeros((5, 2)), np.random.default_rng(4).normal(size=(10, 2)) + 5])
    idx, dist = knn(X, k=5)
    sigma = adaptive_bandwidth(dist)
    assert np.all(sigma > 0)
    assert sigma[:5].tolist() == [sigma[5:].min()] * 5
    W = rbf_kernel(idx, dist)
    assert np.all(np.isfinite(W.data)) and W[0, 1] == 1.0
