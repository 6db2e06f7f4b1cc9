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


class BackedModality:
    """One modality of an .h5mu with its counts left on disk: ``obs``, ``var`` and names in memory,
    ``X`` a row source (``coem.chunked.H5CSRSource``) read in chunks by the steps that sum or
    embed counts. A modality whose cells are not the MuData's in the same order, or whose counts
    are not stored as CSR, is read into memory and put in the MuData's cell order instead."""

    def __init__(self, path: str | Path, name: str, cells: pd.Index):
        import h5py
        from anndata.io import read_elem

        from coem.chunked import H5CSRSource

        self.name = name
        group = f"mod/{name}"
        with h5py.File(path, "r") as f:
            self.obs = read_elem(f[f"{group}/obs"])
            self.var = read_elem(f[f"{group}/var"])
            csr = _encoding(f[f"{group}/X"]) == "csr_matrix"
        for frame in (self.obs, self.var):
            frame.index = pd.Index(frame.index.astype(str), dtype=object)
        if csr and self.obs.index.equals(cells):
            self.X = H5CSRSource(path, f"{group}/X")
            return
        missing = int((~cells.isin(self.obs.index)).sum())
        if missing:
            raise CoemInputError(f"modality '{name}' lacks {missing:,} of the MuData's cells", file=str(path))
        with h5py.File(path, "r") as f:
            import scipy.sparse as sp

            matrix = sp.csr_matrix(read_elem(f[f"{group}/X"]))
        self.X = matrix[self.obs.index.get_indexer(cells)]
        self.obs = self.obs.loc[cells]

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars


class BackedMuData:
    """An .h5mu for the steps that read its counts in row chunks (aggregate, evaluate): the global
    ``obs``, ``uns`` and every modality as a :class:`BackedModality`. It has the attributes of a
    MuData those steps use (``obs``, ``obs_names``, ``n_obs``, ``mod``, ``uns``, ``obsm``), so
    the same functions take either; memory is the tables, not the counts."""

    def __init__(self, path: str | Path):
        import h5py
        from anndata.io import read_elem

        self.path = str(path)
        self.obs = read_obs(path)
        with h5py.File(path, "r") as f:
            if "mod" not in f:
                raise CoemInputError("no 'mod' group; not a MuData file", file=str(path))
            names = list(f["mod"].keys())
            self.uns = dict(read_elem(f["uns"])) if "uns" in f else {}
        self.obsm: dict = {}
        self.mod = {name: BackedModality(path, name, self.obs.index) for name in names}

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def n_obs(self) -> int:
        return len(self.obs)
