"""Disk-backed access to an ``.h5mu`` without loading its count matrices.

For inputs larger than memory (a million cells x 20,000 peaks is tens of GB as CSR), a step
that only needs rows in batches (the VAE) reads them from the file through
:class:`coem.model.data.H5CSRSource`, and the names, obs and step records from here. Adding
entries to an .h5mu in place (the export step) is ``coem.stepfiles.add_to_h5mu``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from coem.errors import CoemInputError


def _encoding(node) -> str:
    value = node.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def csr_nnz(path: str | Path, group: str) -> int | None:
    """Stored entries of the CSR matrix at ``group``; None when it is missing or not CSR."""
    import h5py

    with h5py.File(path, "r") as f:
        if group not in f or _encoding(f[group]) != "csr_matrix":
            return None
        return int(f[group]["data"].shape[0])


def _index(path: str | Path, frame: str) -> pd.Index:
    """The index of an anndata-encoded dataframe (``obs``, ``mod/rna/var`` ...)."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        if frame not in f:
            raise CoemInputError(f"'{frame}' is missing; not a MuData file", file=str(path))
        node = f[frame]
        name = node.attrs["_index"]
        return pd.Index(read_elem(node[name.decode() if isinstance(name, bytes) else name]).astype(str))


def obs_names(path: str | Path, mod: str | None = None) -> pd.Index:
    """Cell barcodes of the MuData (``mod`` None) or of one modality."""
    return _index(path, "obs" if mod is None else f"mod/{mod}/obs")


def var_names(path: str | Path, mod: str) -> pd.Index:
    """Feature names of one modality."""
    return _index(path, f"mod/{mod}/var")


def first_values(path: str | Path, group: str, n: int) -> np.ndarray:
    """The first ``n`` stored values of a CSR matrix (enough to tell counts from normalised data)."""
    import h5py

    with h5py.File(path, "r") as f:
        return f[group]["data"][:n]


def read_obs(path: str | Path) -> pd.DataFrame:
    """The MuData's global obs (QC metrics, labels), without reading any matrix."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        frame = read_elem(f["obs"])
    frame.index = pd.Index(frame.index.astype(str), dtype=object)
    return frame


def read_records(path: str | Path) -> dict:
    """The step records under ``uns['coem']`` (JSON strings), without reading any matrix."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        return dict(read_elem(f["uns/coem"])) if "uns/coem" in f else {}
