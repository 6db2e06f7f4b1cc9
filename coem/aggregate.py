"""Metacell aggregation: raw counts summed per metacell for every modality.

The sum is one sparse product ``S @ X`` with S the metacells x cells indicator matrix, so
nothing cells x features is ever dense. Labels, when present, give each metacell its
majority label and the fraction of its labelled cells that carry it (purity).
"""

from __future__ import annotations

import copy

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem.chunked import CHUNK_ROWS, ChunkedMatrix
from coem.errors import CoemInputError


def indicator_matrix(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Sparse groups x cells matrix with a 1 where cell j belongs to group codes[j]."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.size
    return sp.csr_matrix((np.ones(n, dtype=np.float64), (codes, np.arange(n))), shape=(n_groups, n))


def _codes(metacells: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer code per cell and the sorted metacell ids; missing assignments are an error."""
    missing = metacells.isna()
    if missing.any():
        raise CoemInputError(
            f"{int(missing.sum())} cells have no metacell assignment in obs['{metacells.name}']; "
            "run the metacells step on this file first"
        )
    cat = pd.Categorical(metacells.astype(str))
    ids = pd.Index(cat.categories, name=metacells.name)
    return np.asarray(cat.codes, dtype=np.int64), ids


def has_labels(labels: pd.Series | None) -> bool:
    """True when a label column exists and carries at least one non-missing value."""
    return labels is not None and bool(labels.notna().any())


def majority_labels(codes: np.ndarray, ids: pd.Index, labels: pd.Series) -> pd.DataFrame:
    """Most frequent label per metacell (ties: first in sorted label order) and its fraction.

    The fraction is over the metacell's labelled cells; metacells with no labelled cell get
    NaN for both.
    """
    lab = pd.Series(np.asarray(labels, dtype=object), dtype=object)
    known = lab.notna().to_numpy()
    table = pd.crosstab(pd.Series(codes[known], name="mc"), pd.Series(lab[known].astype(str).to_numpy(), name="lab"))
    table = table.reindex(index=np.arange(len(ids)), fill_value=0)
    table = table.reindex(columns=sorted(table.columns))
    totals = table.sum(axis=1).to_numpy()
    best = table.to_numpy().argmax(axis=1) if table.shape[1] else np.zeros(len(ids), dtype=int)
    top = table.to_numpy()[np.arange(len(ids)), best] if table.shape[1] else np.zeros(len(ids))
    names = np.asarray(table.columns, dtype=object)[best] if table.shape[1] else np.full(len(ids), np.nan)
    out = pd.DataFrame(index=ids)
    out["label"] = np.where(totals > 0, names, np.nan).astype(object)
    out["label_fraction"] = np.divide(top, totals, out=np.full(len(ids), np.nan), where=totals > 0)
    return out


def metacell_table(metacells: pd.Series, labels: pd.Series | None = None) -> pd.DataFrame:
    """One row per metacell (sorted id): ``size`` and, with labels, ``label``/``label_fraction``."""
    codes, ids = _codes(metacells)
    out = pd.DataFrame({"size": np.bincount(codes, minlength=len(ids)).astype(np.int64)}, index=ids)
    if has_labels(labels):
        out = out.join(majority_labels(codes, ids, labels))
    return out


# Largest dense groups x features table for the per-metacell sums (bytes); beyond it the sums
# stay sparse (slower: each chunk's part is added to a sparse total).
DENSE_SUM_BYTES = 4 * 2**30


def sum_counts(X, codes: np.ndarray, n_groups: int, chunk_rows: int = CHUNK_ROWS) -> sp.csr_matrix:
    """Sum the rows of X per group: (S @ X) as float32 CSR.

    ``X``: a sparse matrix or a ``coem.chunked`` source (counts on disk), read ``chunk_rows`` rows
    at a time; each chunk's per-group sums go into one dense float64 groups x features table
    (metacells are few; integer counts add up exactly) when it fits in ``DENSE_SUM_BYTES``, so
    memory is a chunk plus that table.
    """
    rows = ChunkedMatrix(X, chunk_rows=chunk_rows, cache_bytes=0)
    n_features = rows.source.shape[1]
    dense = n_groups * n_features * 8 <= DENSE_SUM_BYTES
    total = np.zeros((n_groups, n_features)) if dense else sp.csr_matrix((n_groups, n_features))
    for start, block in rows.blocks():
        part = sp.csr_matrix(indicator_matrix(codes[start : start + block.shape[0]], n_groups) @ block)
        if not dense:
            total = total + part
            continue
        part.sum_duplicates()  # unique (group, feature) pairs: a fancy-index += adds each once
        rows_of_entries = np.repeat(np.arange(n_groups), np.diff(part.indptr))
        total.reshape(-1)[rows_of_entries * n_features + part.indices] += part.data
    return sp.csr_matrix(total, dtype=np.float32)


# Per-cell library sizes that count more than the kept features (e.g. sci-CAR's UMIs over all
# genes, 'umi_all_genes'): summed per metacell into obs['library_size'] for peak-to-gene.
LIBRARY_SIZE_COLUMNS = ("library_size", "umi_all_genes")


def _summed_library(mod, codes: np.ndarray, ids: pd.Index) -> pd.DataFrame:
    obs = pd.DataFrame(index=ids.astype(str))
    for column in LIBRARY_SIZE_COLUMNS:
        if column in mod.obs:
            values = pd.to_numeric(mod.obs[column], errors="coerce").to_numpy(dtype=np.float64)
            if np.all(np.isfinite(values)) and np.all(values > 0):
                obs["library_size"] = np.bincount(codes, weights=values, minlength=len(ids))
                break
    return obs


def aggregate_metacells(mdata, key: str = "metacell", label_key: str = "label") -> md.MuData:
    """A MuData with one observation per metacell and summed raw counts per modality.

    obs: ``size`` and (when ``mdata.obs[label_key]`` has values) ``label`` and
    ``label_fraction``; a modality whose cells carry a library size (``LIBRARY_SIZE_COLUMNS``)
    gets its per-metacell sum as ``obs['library_size']``; var of each modality copied
    unchanged; ``uns`` copied.
    """
    if key not in mdata.obs:
        raise CoemInputError(f"obs['{key}'] is missing; run the metacells step on this file first")
    metacells = mdata.obs[key]
    labels = mdata.obs[label_key] if label_key in mdata.obs else None
    table = metacell_table(metacells, labels)
    codes, ids = _codes(metacells)
    code_of_cell = pd.Series(codes, index=mdata.obs_names)
    mods = {}
    for name, mod in mdata.mod.items():
        mod_codes = code_of_cell.reindex(mod.obs_names)
        if mod_codes.isna().any():
            raise CoemInputError(f"modality '{name}' has cells that are not in the MuData obs")
        X = sum_counts(mod.X, mod_codes.to_numpy(dtype=np.int64), len(ids))
        mods[name] = ad.AnnData(X=X, obs=_summed_library(mod, mod_codes.to_numpy(dtype=np.int64), ids), var=mod.var.copy())
    out = md.MuData(mods)
    for col in table.columns:
        out.obs[col] = table[col].to_numpy()
    out.uns.update(copy.deepcopy(dict(mdata.uns)))
    return out


# Aggregated obs columns written from ``coem.dubious.dubious_metacells`` (see ``add_dubious``).
DUBIOUS_COLUMNS = ("dubious", "dubious_rna", "dubious_atac", "excess_rna", "excess_atac", "q_rna", "q_atac")


def add_dubious(aggregated, table: pd.DataFrame) -> None:
    """Copy the dubious-metacell test (``coem.dubious.dubious_metacells``) into the aggregated obs:
    ``dubious`` (bool, any modality), ``dubious_<mod>``, ``dubious_excess_<mod>``, ``dubious_q_<mod>``."""
    table = table.reindex(aggregated.obs_names.astype(str))
    if table["dubious"].isna().any():
        raise CoemInputError("the dubious-metacell table does not cover every aggregated metacell")
    aggregated.obs["dubious"] = table["dubious"].astype(bool).to_numpy()
    for col in table.columns:
        if col == "dubious":
            continue
        name = col if col.startswith("dubious_") else f"dubious_{col}"
        values = table[col].to_numpy()
        aggregated.obs[name] = values.astype(bool) if col.startswith("dubious_") else values.astype(np.float64)


def drop_dubious(aggregated, key: str = "dubious"):
    """The aggregated MuData without the metacells flagged in ``obs[key]`` (e.g. before peak-to-gene).

    Returns a new MuData (the input is not changed); ``uns['coem']`` is kept. A missing column is
    an error naming the step that writes it; dropping every metacell is an error too.
    """
    if key not in aggregated.obs.columns:
        raise CoemInputError(f"obs['{key}'] is missing: the aggregated MuData carries no dubious-metacell flags; "
                             "run the aggregate step with its dubious-metacell test (coem_aggregate.py)")
    flags = aggregated.obs[key].astype(bool).to_numpy()
    if flags.all():
        raise CoemInputError(f"all {flags.size} metacells are flagged dubious; nothing would be left")
    kept = aggregated[~flags].copy()
    return kept
