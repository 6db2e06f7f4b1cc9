"""Dubious metacells: is a metacell's content homogeneous? (mcRigor's idea, per modality.)

mcRigor (Liu & Li, 2025) showed that metacells can be "dubious": made of cells from different
states, which averaging then hides. Its test: within a homogeneous metacell the cells differ only
by sampling noise, so features are (nearly) uncorrelated across the metacell's cells; a mixture
of two states makes every feature that differs between them co-vary. Here, per metacell and
modality:

1. features: the ``n_features`` most variable features of the sample (variance of log1p counts
   per 10,000), counts normalised per cell (log1p CP10k, library size over all features);
2. statistic: the mean squared off-diagonal Pearson correlation between those features over the
   metacell's cells (features constant in the metacell left out);
3. null: each feature's values permuted independently across the metacell's cells
   (``n_permutations`` times, seeded per metacell), which keeps every feature's distribution and
   removes any dependence; p from a normal with the permutations' mean and sd (the statistic
   is a mean of thousands of squared correlations): a permutation p cannot go below
   1 / (1 + n_permutations), too coarse for Benjamini-Hochberg over hundreds of metacells;
4. effect size: ``excess`` = observed minus the null mean. Normalised counts of a homogeneous
   metacell keep a little correlation (library size, the log), which with dozens of cells is
   already "significant"; on simulated data (4 types, 200 top features, 30-200 cells) pure
   metacells had excess 0.0002-0.005 (RNA) and -0.0004-0.005 (ATAC), half-and-half mixtures
   of two distinct types 0.008-0.086 (RNA) and 0.25-0.49 (ATAC);
5. flag: dubious in a modality when the Benjamini-Hochberg q over metacells is at most ``fdr``
   and the excess is at least ``min_excess`` (0.005, about an extra RMS correlation of 0.07)
   and at least ``NULL_SDS`` (3) null standard deviations (small metacells are noisier); a
   metacell is dubious when it is dubious in any modality tested.

Metacells with fewer than ``MIN_CELLS`` cells are not tested (NaN, not dubious).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from coem.chunked import ChunkedMatrix, threads

from coem._logging import get_logger
from coem.errors import CoemInputError

_log = get_logger("coem.dubious")

N_FEATURES = 200
N_PERMUTATIONS = 100
FDR = 0.05
MIN_EXCESS = 0.005
MIN_CELLS = 5
# A progress line every this many metacells (a million cells make about 13,000).
PROGRESS_EVERY = 2000
# The excess must also reach this many null standard deviations (small metacells: noisier).
NULL_SDS = 3.0
# Permutations per block: block x cells x features doubles stay under about 160 MB.
_BLOCK_VALUES = 20_000_000
MODALITIES = ("rna", "atac")


def log_normalise(X) -> sp.csr_matrix:
    """log1p of counts per 10,000 (library size over all features), CSR float64."""
    X = sp.csr_matrix(X, dtype=np.float64)
    lib = np.asarray(X.sum(axis=1)).ravel()
    lib[lib <= 0] = 1.0
    out = sp.csr_matrix(sp.diags(1e4 / lib) @ X)
    out.data = np.log1p(out.data)
    return out


def top_variable(Xn, n_features: int) -> np.ndarray:
    """Indices of the ``n_features`` features of highest variance (sorted ascending); ``Xn`` a
    sparse matrix or a ``ChunkedMatrix`` (two passes)."""
    Xn = Xn if isinstance(Xn, ChunkedMatrix) else ChunkedMatrix(Xn)
    n = max(Xn.shape[0], 1)
    mean = Xn.column_sums() / n
    var = Xn.column_sums(squares=True) / n - mean ** 2
    n_top = min(int(n_features), int((var > 0).sum()))
    return np.sort(np.argsort(-var, kind="stable")[:n_top])


def normalised_top_features(counts, n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The log-normalised counts (``log_normalise``) of the ``n_features`` most variable features
    (cells x features CSR) and those features' indices; ``counts`` is read in row chunks, so only
    the selected columns are ever held for all cells."""
    rows = ChunkedMatrix(counts, lambda block, _: log_normalise(block))
    cols = top_variable(rows, n_features)
    return sp.vstack([block[:, cols] for _, block in rows.blocks()], format="csr"), cols


def mean_squared_correlation(Z: np.ndarray) -> np.ndarray:
    """Mean squared off-diagonal correlation between the columns of Z (..., cells, features).

    Constant columns are left out. ||C||_F^2 is computed from the smaller Gram matrix
    (cells x cells or features x features), both batched over the leading axes.
    """
    Z = Z - Z.mean(axis=-2, keepdims=True)
    norm = np.sqrt((Z ** 2).sum(axis=-2, keepdims=True))
    ok = norm > 1e-12
    Z = np.where(ok, Z / np.where(ok, norm, 1.0), 0.0)
    n, p = Z.shape[-2], Z.shape[-1]
    G = Z @ np.swapaxes(Z, -1, -2) if n <= p else np.swapaxes(Z, -1, -2) @ Z
    fro = (G ** 2).sum(axis=(-1, -2))
    q = ok.sum(axis=-1)[..., 0].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(q >= 2, (fro - q) / (q * (q - 1)), np.nan)


def permutation_test(values: np.ndarray, n_permutations: int = N_PERMUTATIONS,
                     seed=0) -> tuple[float, float, float, float]:
    """Observed statistic, null mean, null sd and permutation p for one metacell (cells x features)."""
    values = np.asarray(values, dtype=np.float64)
    n, p = values.shape
    observed = float(mean_squared_correlation(values))
    if not np.isfinite(observed):
        return float("nan"), float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    block = max(1, min(int(n_permutations), _BLOCK_VALUES // max(1, n * p)))
    nulls = []
    for start in range(0, int(n_permutations), block):
        b = min(block, int(n_permutations) - start)
        order = rng.random((b, n, p)).argsort(axis=1)
        nulls.append(mean_squared_correlation(np.take_along_axis(np.broadcast_to(values, (b, n, p)), order, axis=1)))
    null = np.concatenate(nulls)
    sd = float(null.std(ddof=1)) if null.size > 1 else 0.0
    if sd > 0:
        pval = float(norm.sf((observed - float(null.mean())) / sd))
    else:
        pval = (1.0 + float(np.sum(null >= observed))) / (1.0 + null.size)
    return observed, float(null.mean()), sd, pval


def benjamini_hochberg(p) -> np.ndarray:
    """BH-adjusted p-values (q); NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * ok.size / np.arange(1, ok.size + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def homogeneity_test(counts, metacells, n_features: int = N_FEATURES, n_permutations: int = N_PERMUTATIONS,
                     fdr: float = FDR, min_excess: float = MIN_EXCESS, seed: int = 0,
                     n_threads: int | None = None) -> pd.DataFrame:
    """Per metacell (rows sorted by id) of one modality's raw ``counts`` (cells x features; a
    sparse matrix or a ``coem.chunked`` source): ``n_cells``, ``statistic``, ``null_mean``,
    ``excess``, ``p``, ``q``, ``dubious``. Metacells are tested on ``n_threads`` threads (default
    ``threads()``); the result does not depend on it."""
    if n_permutations < 1 or n_features < 2 or not 0 < fdr < 1:
        raise CoemInputError(f"dubious-metacell test needs n_permutations >= 1, n_features >= 2 and fdr in (0, 1); "
                             f"got {n_permutations}, {n_features}, {fdr}")
    mc = pd.Series(np.asarray(metacells, dtype=object))
    if mc.isna().any():
        raise CoemInputError(f"{int(mc.isna().sum())} cells have no metacell; every cell must be assigned")
    if counts.shape[0] != len(mc):
        raise CoemInputError(f"counts ({counts.shape[0]} cells) and metacell ids ({len(mc)}) differ in length")
    cat = pd.Categorical(mc.astype(str))
    ids = pd.Index(cat.categories, name="metacell")
    codes = np.asarray(cat.codes)
    Xn, cols = normalised_top_features(counts, n_features)
    members_of = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes, minlength=len(ids)))[:-1])

    start = time.perf_counter()

    def test_one(i: int) -> tuple:
        if i and i % PROGRESS_EVERY == 0:
            _log.info("dubious-metacell test: %d of %d metacells (%.0f s)", i, len(ids), time.perf_counter() - start)
        members = members_of[i]
        if members.size < MIN_CELLS or cols.size < 2:
            return (members.size, np.nan, np.nan, np.nan, np.nan)
        return (members.size, *permutation_test(Xn[members].toarray(), n_permutations, seed=[int(seed), i]))

    # Metacells are independent and seeded by their index: threads give the same table as a loop
    # (numpy's sort and BLAS release the GIL; BLAS itself is kept to one thread per test).
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max(1, n_threads or threads())) as pool:
        rows = list(pool.map(test_one, range(len(ids))))
    out = pd.DataFrame(rows, index=ids, columns=["n_cells", "statistic", "null_mean", "null_sd", "p"])
    out["excess"] = out["statistic"] - out["null_mean"]
    out["q"] = benjamini_hochberg(out["p"].to_numpy())
    big = (out["excess"] >= min_excess) & (out["excess"] >= NULL_SDS * out["null_sd"])
    out["dubious"] = ((out["q"] <= fdr) & big).fillna(False).astype(bool)
    return out[["n_cells", "statistic", "null_mean", "null_sd", "excess", "p", "q", "dubious"]]


def dubious_metacells(mdata, metacell_key: str = "metacell", modalities=MODALITIES, n_features: int = N_FEATURES,
                      n_permutations: int = N_PERMUTATIONS, fdr: float = FDR, min_excess: float = MIN_EXCESS,
                      seed: int = 0) -> pd.DataFrame:
    """The test for every modality of ``mdata`` present in ``modalities``, one row per metacell.

    Columns: ``excess_<mod>``, ``p_<mod>``, ``q_<mod>``, ``dubious_<mod>`` per modality, and
    ``dubious`` (any modality). ``mdata.obs[metacell_key]`` holds the metacell of every cell.
    """
    if metacell_key not in mdata.obs.columns:
        raise CoemInputError(f"obs has no '{metacell_key}' column (metacell id per cell); run the metacells step first")
    ids = mdata.obs[metacell_key]
    tested = [m for m in modalities if m in mdata.mod]
    if not tested:
        raise CoemInputError(f"none of the modalities {', '.join(modalities)} is present (found: "
                             f"{', '.join(mdata.mod) or 'none'})")
    parts = []
    for mod in tested:
        adata = mdata.mod[mod]
        if not adata.obs_names.equals(mdata.obs_names):
            adata = adata[mdata.obs_names]
        res = homogeneity_test(adata.X, ids.to_numpy(), n_features=n_features, n_permutations=n_permutations,
                               fdr=fdr, min_excess=min_excess, seed=seed)
        parts.append(res[["excess", "p", "q", "dubious"]].add_suffix(f"_{mod}"))
        _log.info("%s: %d of %d metacells dubious (q <= %g, excess >= %g)", mod, int(res["dubious"].sum()),
                  len(res), fdr, min_excess)
    out = pd.concat(parts, axis=1)
    out["dubious"] = out[[f"dubious_{m}" for m in tested]].any(axis=1)
    return out


def summary(table: pd.DataFrame) -> dict:
    """Counts and share of dubious metacells, overall and per modality (JSON-safe)."""
    n = int(len(table))
    out = {"n_metacells": n, "n_dubious": int(table["dubious"].sum()),
           "pct_dubious": float(100.0 * table["dubious"].mean()) if n else None}
    for col in table.columns:
        if col.startswith("dubious_"):
            out[f"n_{col}"] = int(table[col].sum())
    return out
