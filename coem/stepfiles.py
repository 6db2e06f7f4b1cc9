"""What the steps pass on besides the counts: small per-cell files, and reading a MuData's parts.

The counts are written once, by QC (``P.qc.h5mu``). Every later step reads what it needs and
writes only what it adds (docs/output.md, "Data flow"):

- the embedding step: ``P.embedding.h5ad`` -- no matrix (``X`` is empty), ``obs`` = the cells with
  their QC metrics and labels, ``obsm['X_embedding']`` (and ``X_pca``/``X_lsi`` for pca_lsi),
  ``uns['coem']`` = the step records so far;
- the metacell step: ``P.metacells.h5ad`` -- the same with ``obs['metacell']`` added and the
  embedding dropped (it is in the embedding file);
- the export step assembles the published cell-level ``P.metacells.h5mu`` once, at the end.

Small AnnData files (not .npz or .tsv) so that a user opens any of them with
``anndata.read_h5ad`` and finds the cells under the same names as in the MuData.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from coem.errors import CoemInputError


def cells_file(obs: pd.DataFrame, obsm: dict | None = None, records: dict | None = None):
    """A matrix-free AnnData: ``obs`` rows are the cells; ``obsm`` per-cell arrays; step records."""
    import anndata as ad

    obs = obs.copy()
    obs.index = pd.Index(obs.index.astype(str), dtype=object)
    adata = ad.AnnData(obs=obs, obsm={k: np.asarray(v) for k, v in (obsm or {}).items()})
    adata.uns["coem"] = dict(records or {})
    return adata


@contextmanager
def atomic_output(final: str | Path):
    """Yield ``<final>.partial`` to write to; it becomes ``final`` only when the block succeeds and
    is deleted otherwise, so a crash never leaves a file that looks like a good output."""
    final = Path(final)
    partial = Path(f"{final}.partial")
    try:
        yield partial
        os.replace(partial, final)
    finally:
        if partial.exists():
            partial.unlink()


def write_cells(adata, final: str | Path) -> Path:
    """Write a per-cell file atomically (``atomic_output``)."""
    with atomic_output(final) as partial:
        adata.write_h5ad(partial)
    return Path(final)


def read_cells(path: str | Path, sample: str, hint: str, needs: tuple[str, ...] = ()):
    """Read a per-cell file; ``needs`` names obsm/obs keys it must hold (else a clear error)."""
    import anndata as ad

    if not Path(path).is_file():
        raise CoemInputError(f"input file not found; {hint}", sample=sample, file=str(path))
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise CoemInputError(f"cannot read as AnnData ({type(err).__name__}: {err}); {hint}",
                             sample=sample, file=str(path)) from err
    missing = [k for k in needs if k not in adata.obsm and k not in adata.obs.columns]
    if missing:
        raise CoemInputError(f"has no {', '.join(map(repr, missing))} (obsm: {', '.join(adata.obsm) or 'none'}; "
                             f"obs: {', '.join(map(str, adata.obs.columns)) or 'none'}); {hint}",
                             sample=sample, file=str(path))
    return adata


def records_of(data) -> dict:
    """The step records (``uns['coem']``) of a MuData or AnnData, as a plain dict."""
    return dict(data.uns.get("coem", {}))


def check_same_cells(cells, counts_names: pd.Index, sample: str, files: str) -> None:
    """A per-cell file and the counts must name the same cells in the same order."""
    names = pd.Index(cells.obs_names)
    if names.equals(pd.Index(counts_names)):
        return
    missing = int((~names.isin(counts_names)).sum())
    raise CoemInputError(f"the per-cell file and the counts do not hold the same cells ({len(names):,} vs "
                         f"{len(counts_names):,}; {missing:,} not in the counts); pass files of the same run",
                         sample=sample, file=files)


def attach(mdata, cells, columns: tuple[str, ...] = (), obsm: tuple[str, ...] = ()) -> None:
    """Put ``obs`` columns and ``obsm`` arrays of a per-cell file into an in-memory MuData."""
    for column in columns:
        mdata.obs[column] = cells.obs[column].to_numpy()
    for key in obsm:
        mdata.obsm[key] = np.asarray(cells.obsm[key])
    coem = {**records_of(mdata), **records_of(cells)}
    mdata.uns["coem"] = coem


# The published MuData's large arrays (the counts) are gzip-compressed at this level with HDF5's
# byte shuffle: on simulated and 10x-like counts about 5x smaller at about 70 MB/s on one core,
# and readable by every HDF5 reader (h5py, anndata/mudata, R's rhdf5 / zellkonverter).
GZIP_LEVEL = 1
COMPRESS_MIN_BYTES = 1 << 20
_COPY_BLOCK = 1 << 24  # values per read/write when compressing a dataset


def compressed_copy(source: str | Path, target: str | Path, level: int = GZIP_LEVEL,
                    min_bytes: int = COMPRESS_MIN_BYTES) -> None:
    """Copy an HDF5 file (an .h5mu) with its 1-D numeric datasets of at least ``min_bytes`` (the
    count matrices' data/indices/indptr) gzip-compressed, ``_COPY_BLOCK`` values at a time; every
    other object, every attribute and the file's user block (MuData's format header) as they are.
    Memory is one block, whatever the file's size."""
    import h5py

    with h5py.File(source, "r") as src:
        userblock = src.userblock_size
        with h5py.File(target, "w", userblock_size=userblock) as dst:
            dst.attrs.update(src.attrs)
            _copy_group(src, dst, level, min_bytes)
    if userblock:
        with open(source, "rb") as src_file, open(target, "r+b") as dst_file:
            dst_file.write(src_file.read(userblock))


def _copy_group(src, dst, level: int, min_bytes: int) -> None:
    import h5py

    for name, node in src.items():
        if isinstance(node, h5py.Group):
            group = dst.create_group(name)
            group.attrs.update(node.attrs)
            _copy_group(node, group, level, min_bytes)
        elif node.ndim == 1 and node.dtype.kind in "fiu" and node.nbytes >= min_bytes:
            out = dst.create_dataset(name, shape=node.shape, dtype=node.dtype, chunks=(min(node.shape[0], 1 << 18),),
                                     compression="gzip", compression_opts=level, shuffle=True)
            out.attrs.update(node.attrs)
            for start in range(0, node.shape[0], _COPY_BLOCK):
                out[start : start + _COPY_BLOCK] = node[start : start + _COPY_BLOCK]
        else:
            src.copy(node, dst, name=name)


def add_to_h5mu(path: str | Path, obs: dict[str, np.ndarray], obsm: dict[str, np.ndarray],
                records: dict[str, str]) -> None:
    """Add global ``obs`` columns, ``obsm`` arrays and ``uns['coem']`` records to an .h5mu in place,
    without reading its matrices (the export step, on a copy of the QC output)."""
    import h5py
    from anndata.io import read_elem, write_elem

    with h5py.File(path, "r+") as f:
        frame = read_elem(f["obs"])
        for column, values in obs.items():
            frame[column] = values
        del f["obs"]
        write_elem(f, "obs", frame)
        for key, value in obsm.items():
            if key in f["obsm"]:
                del f["obsm"][key]
            write_elem(f["obsm"], key, np.asarray(value))
        if "coem" not in f["uns"]:
            write_elem(f["uns"], "coem", {})
        for step, record in records.items():
            if step in f["uns/coem"]:
                del f["uns/coem"][step]
            write_elem(f["uns/coem"], step, record if isinstance(record, str) else json.dumps(record))
