"""QC of a sample larger than memory: ``coem.qc.apply_qc``'s filters with the counts left on disk.

An ``.h5mu`` whose ``rna`` and ``atac`` counts are CSR matrices in ``X`` (as atlases and our
simulator store them) with the same cells in the same order is read without its matrices: obs,
var, labels and annotation go through the same readers as always (``coem.readers``) into a
MuData whose ``X`` are empty, while :class:`StreamedCounts` reads the counts in row chunks for
the three things QC needs from them:

1. the per-cell metrics (``coem.qc.METRICS``) and the count checks of ``coem.readers.check_counts``
   (finite, non-negative, integer, not all zero), one pass;
2. in how many kept cells each gene and peak is detected (the feature filters), one pass;
3. the filtered counts, written chunk by chunk into the output's ``mod/<mod>/X`` (``write_counts``).

Memory is one chunk plus a few numbers per cell and feature, whatever the number of cells, and
the output equals the in-memory path's (``tests/unit/test_qc_backed.py``). Other inputs (10x
``.h5``, an ``.h5ad`` pair, counts in ``layers`` or ``.raw``, modalities whose barcodes differ)
are read into memory as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem.chunked import CHUNK_ROWS, H5CSRSource
from coem.errors import CoemInputError

# Stream when the two count matrices would take more than this as CSR in memory (``--backed auto``).
BACKED_AUTO_BYTES = 4 * 2**30
BYTES_PER_ENTRY = 12  # float64 value + int32 column index, what scipy holds per stored count


def _encoding(node) -> str:
    value = node.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def streamable(path: str | Path) -> tuple[str, str] | None:
    """(rna, atac) modality names when the .h5mu can be streamed (CSR counts in X, no counts layer
    or .raw, the same barcodes in the same order), else None."""
    import h5py

    from coem.h5mu_backed import obs_names
    from coem.readers import ATAC_ALIASES, RNA_ALIASES, find_modality

    try:
        with h5py.File(path, "r") as f:
            if "mod" not in f:
                return None
            names = list(f["mod"].keys())
            rna, atac = (find_modality(names, aliases, role) for aliases, role in
                         ((RNA_ALIASES, "rna"), (ATAC_ALIASES, "atac")))
            for mod in (rna, atac):
                group = f[f"mod/{mod}"]
                if _encoding(group["X"]) != "csr_matrix" or "raw" in group or "counts" in group.get("layers", {}):
                    return None
        if not obs_names(path, rna).equals(obs_names(path, atac)):
            return None
    except (OSError, KeyError, CoemInputError):
        return None  # the in-memory reader says what is wrong
    return rna, atac


def use_streaming(path: str | Path, mode: str) -> tuple[str, str] | None:
    """The modality names to stream, or None: never (``off``), whenever possible (``on``), or when
    the counts would take more than ``BACKED_AUTO_BYTES`` in memory (``auto``)."""
    if mode == "off" or not str(path):
        return None
    names = streamable(path)
    if names is None or mode == "on":
        return names
    from coem.h5mu_backed import csr_nnz

    nnz = sum(csr_nnz(path, f"mod/{mod}/X") or 0 for mod in names)
    return names if nnz * BYTES_PER_ENTRY > BACKED_AUTO_BYTES else None


class StreamedCounts:
    """The RNA and ATAC counts of an .h5mu, read ``chunk_rows`` cells at a time.

    ``peak_columns``: the peaks kept by the contig check (``coem.readers.check_peak_contigs``);
    ``mito``: the mitochondrial genes (``coem.qc.mito_mask``).
    """

    def __init__(self, path: str | Path, rna: str, atac: str, peak_columns: np.ndarray, mito: np.ndarray,
                 sample: str | None = None, chunk_rows: int | None = None):
        self.path, self.sample, self.chunk_rows = str(path), sample, int(chunk_rows or CHUNK_ROWS)
        self.sources = {"rna": H5CSRSource(path, f"mod/{rna}/X"), "atac": H5CSRSource(path, f"mod/{atac}/X")}
        self.columns = {"rna": None, "atac": np.asarray(peak_columns)}
        self.mito = np.flatnonzero(mito)

    @property
    def n_cells(self) -> int:
        return len(self.sources["rna"])

    def chunks(self, mod: str, cells: np.ndarray | None = None):
        """(first row, counts of the chunk's cells: all, or those in the boolean ``cells``) per chunk."""
        source, columns = self.sources[mod], self.columns[mod]
        for start in range(0, self.n_cells, self.chunk_rows):
            rows = np.arange(start, min(start + self.chunk_rows, self.n_cells))
            if cells is not None:
                rows = rows[cells[rows]]
            block = source.get_rows(rows)
            yield start, (block[:, columns] if columns is not None else block)

    def metrics(self, names: pd.Index) -> pd.DataFrame:
        """``coem.qc.compute_qc_metrics`` in one pass per modality, checking the counts on the way."""
        values = {}
        for mod in ("rna", "atac"):
            total, detected, mito = (np.zeros(self.n_cells) for _ in range(3))
            stored = 0
            for start, block in self.chunks(mod):
                _check_chunk(block.data, mod, self.sample, self.path)
                stop = start + block.shape[0]
                total[start:stop] = np.asarray(block.sum(axis=1)).ravel()
                detected[start:stop] = np.diff((block > 0).tocsr().indptr)
                stored += int((block.data != 0).sum())
                if mod == "rna":
                    mito[start:stop] = np.asarray(block[:, self.mito].sum(axis=1)).ravel()
            if stored == 0:
                raise CoemInputError(f"the {mod} matrix holds only zeros", self.sample, self.path)
            values[mod] = (total, detected.astype(np.int64), mito)
        rna_total, rna_genes, mito_total = values["rna"]
        with np.errstate(divide="ignore", invalid="ignore"):
            pct_mito = np.where(rna_total > 0, 100.0 * mito_total / rna_total, 0.0)
        return pd.DataFrame({"rna_total_counts": rna_total, "rna_n_genes": rna_genes, "rna_pct_mito": pct_mito,
                             "atac_total_counts": values["atac"][0], "atac_n_peaks": values["atac"][1]},
                            index=names.copy())

    def feature_cells(self, mod: str, keep: np.ndarray) -> np.ndarray:
        """In how many of the kept cells each feature has a positive count."""
        n_features = self.sources[mod].shape[1] if self.columns[mod] is None else self.columns[mod].size
        counts = np.zeros(n_features, dtype=np.int64)
        for _, block in self.chunks(mod, keep):
            counts += np.bincount(block.indices[block.data > 0], minlength=n_features)
        return counts

    def select(self, cells: np.ndarray, genes: np.ndarray, peaks: np.ndarray) -> None:
        """The cells, genes and peaks QC keeps (boolean masks; ``coem.qc.apply_qc`` calls this)."""
        self.selection = {"rna": (cells, np.flatnonzero(genes)), "atac": (cells, np.flatnonzero(peaks))}

    def write_filtered(self, path: str | Path) -> None:
        """Fill the ``mod/rna/X`` and ``mod/atac/X`` of the written QC output with the selected counts."""
        for mod in ("rna", "atac"):
            cells, features = self.selection[mod]
            self.write_counts(path, f"mod/{mod}/X", mod, cells, features)

    def write_counts(self, path: str | Path, group: str, mod: str, keep: np.ndarray, features: np.ndarray) -> None:
        """Fill ``group`` (an anndata CSR group written with an empty matrix of the final shape) with
        the kept cells x ``features`` counts as float32, chunk by chunk (zeros dropped, indices sorted)."""
        import h5py

        with h5py.File(path, "r+") as f:
            node = f[group]
            if tuple(int(v) for v in node.attrs["shape"]) != (int(keep.sum()), features.size):
                raise ValueError(f"{group} has shape {tuple(node.attrs['shape'])}, not the selection's")
            for name in ("data", "indices", "indptr"):
                del node[name]
            data = node.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
            indices = node.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
            indptr = [np.zeros(1, dtype=np.int64)]
            for _, block in self.chunks(mod, keep):
                block = sp.csr_matrix(block[:, features], dtype=np.float32)
                block.eliminate_zeros()
                block.sort_indices()
                size = data.shape[0]
                data.resize((size + block.nnz,))
                indices.resize((size + block.nnz,))
                data[size:] = block.data
                indices[size:] = block.indices
                indptr.append(size + block.indptr[1:].astype(np.int64))
            node.create_dataset("indptr", data=np.concatenate(indptr))


def _check_chunk(data: np.ndarray, mod: str, sample, path) -> None:
    """``coem.readers.check_counts`` on a chunk's stored values (same messages)."""
    where = f"the {mod} matrix"
    if np.isnan(data).any() or np.isinf(data).any():
        raise CoemInputError(f"{where} holds NaN or infinite values; raw counts are needed", sample, path)
    if (data < 0).any():
        raise CoemInputError(f"{where} holds negative values (min {data.min():g}); raw counts are needed", sample, path)
    frac = data != np.round(data)
    if frac.any():
        raise CoemInputError(f"{where} holds non-integer values (e.g. {data[frac][0]:g}): it looks normalised; "
                             "give raw counts (for .h5ad, in X, layers['counts'] or .raw)", sample, path)


def read_h5mu_tables(path: str | Path, rna: str, atac: str, sample: str | None = None, extra_contigs=(),
                     scaffolds: str = "keep"):
    """``coem.readers.read_h5mu`` without the counts: (MuData with empty X of the right shapes,
    :class:`StreamedCounts`). Features go through the same tables and contig check."""
    import anndata as ad
    import h5py
    import mudata as md
    from anndata.io import read_elem

    from coem.h5mu_backed import read_obs
    from coem.qc import mito_mask
    from coem.readers import _quiet, _str_index, check_peak_contigs, gene_table, peak_table, shared_barcodes, update

    tables = {}
    with h5py.File(path, "r") as f:
        for mod in (rna, atac):
            node = f[f"mod/{mod}"]
            uns = dict(read_elem(node["uns"])) if "uns" in node else {}
            tables[mod] = (_str_index(read_elem(node["obs"])), read_elem(node["var"]), uns)
    genes = gene_table(tables[rna][1])
    peaks = peak_table(tables[atac][1], sample, path)
    keep = check_peak_contigs(peaks["chrom"], extra_contigs, scaffolds, sample, path)
    empty = lambda n, p: sp.csr_matrix((n, p), dtype=np.float32)  # noqa: E731
    rna_obs, atac_obs = tables[rna][0], tables[atac][0]
    mods = {"rna": ad.AnnData(X=empty(len(rna_obs), len(genes)), obs=rna_obs, var=genes, uns=tables[rna][2]),
            "atac": ad.AnnData(X=empty(len(atac_obs), int(keep.sum())), obs=atac_obs, var=peaks[keep],
                               uns=tables[atac][2])}
    shared = shared_barcodes(mods["rna"].obs_names, mods["atac"].obs_names, sample, path)
    mdata = _quiet(md.MuData, mods)
    mdata.uns["coem_input"] = {"rna_barcodes": len(rna_obs), "atac_barcodes": len(atac_obs),
                               "shared_barcodes": int(len(shared))}
    global_obs = read_obs(path)
    for col in (c for c in global_obs.columns if ":" not in str(c)):
        mdata.obs[col] = global_obs[col].reindex(mdata.obs_names).to_numpy()
    update(mdata)
    counts = StreamedCounts(path, rna, atac, np.flatnonzero(keep), mito_mask(genes.index), sample)
    return mdata, counts
