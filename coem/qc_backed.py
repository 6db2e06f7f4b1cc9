"""QC of a sample larger than memory: ``coem.qc.apply_qc``'s filters with the counts left on disk.

Every input kind can be read this way when its counts are stored as rows of cells: a 10x
``filtered_feature_bc_matrix.h5`` (features x cells CSC, which is cells x features CSR), an
``.h5mu`` or an ``.h5ad`` pair whose counts (``X``, ``layers['counts']`` or ``.raw``, picked as
``coem.readers`` picks them) are CSR matrices. Obs, var, labels and annotation go through the
same checks as always (``coem.readers``) into a MuData whose ``X`` are empty, while
:class:`StreamedCounts` reads the counts in row chunks for the three things QC needs from them:

1. the per-cell metrics (``coem.qc.METRICS``), the count checks of ``coem.readers.check_counts``
   (finite, non-negative, integer, not all zero) and in how many cells each feature is detected,
   one pass;
2. in how many kept cells each gene and peak is detected (the feature filters): the count over
   all cells minus a read of the removed cells only;
3. the filtered counts, written chunk by chunk into the output's ``mod/<mod>/X``
   (``write_filtered``), one pass.

Memory is one chunk plus a few numbers per cell and feature, whatever the number of cells, and
the output equals the in-memory path's (``tests/unit/test_qc_backed.py``). An input stays in
memory when its counts are dense, or when the cells the two modalities share are in a different
order in each (reading them would mean one disk read per cell).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem._logging import get_logger
from coem.chunked import CHUNK_ROWS, PROGRESS_MIN_ROWS, H5CSRSource
from coem.errors import CoemInputError
from coem.h5mu_backed import _encoding

log = get_logger("coem.qc_backed")

# Stream when reading the input into memory would peak above this (``--backed auto``); QC runs
# as process_low, 12 GB.
BACKED_AUTO_BYTES = 8 * 2**30
# Peak RSS of the in-memory QC per stored count, measured at 10^5 cells (docs/benchmarks.md,
# benchmarks/bench_qc_backed.py): a 10x file makes more copies (the whole matrix, then its gene
# and peak columns) than an .h5mu or a pair. 8 GiB is then about 4 GiB of counts as CSR for an
# .h5mu or pair, and 2.8 GiB for a 10x file (250 million counts: some 20,000 cells of a 10x run).
IN_MEMORY_BYTES_PER_ENTRY = {"h5": 34, "h5mu": 24, "pair": 24}


@dataclass
class ModalityOnDisk:
    """One modality as its file stores it: counts left on disk, tables in memory.

    ``columns``: the modality's columns of ``source`` when it shares a matrix with the other one
    (a 10x file holds genes and peaks side by side), else None (all of them).
    """

    source: H5CSRSource
    obs: pd.DataFrame
    var: pd.DataFrame
    uns: dict = field(default_factory=dict)
    columns: np.ndarray | None = None


def counts_group(f, prefix: str = "") -> tuple[str, str] | None:
    """(counts, var) paths of the AnnData at ``prefix`` in the open HDF5 file ``f``, chosen as
    ``coem.readers`` chooses (``layers['counts']``; else ``X``, unless X is normalised and ``.raw``
    holds integers), when that matrix is stored as CSR; else None."""
    layer = f"{prefix}layers/counts"
    if layer in f:
        picked = (layer, f"{prefix}var")
    elif f"{prefix}raw/X" in f and not _looks_integer(f[f"{prefix}X"]) and _looks_integer(f[f"{prefix}raw/X"]):
        picked = (f"{prefix}raw/X", f"{prefix}raw/var")
    else:
        picked = (f"{prefix}X", f"{prefix}var")
    return picked if _encoding(f[picked[0]]) == "csr_matrix" else None


def _looks_integer(node, n: int = 100_000) -> bool:
    """``coem.readers.looks_integer`` on a matrix stored in HDF5 (CSR group or dense dataset)."""
    import h5py

    from coem.readers import looks_integer

    if isinstance(node, h5py.Dataset):
        width = max(int(node.shape[1]) if node.ndim > 1 else 1, 1)
        return looks_integer(node[: n // width + 1])
    return looks_integer(node["data"][:n]) if "data" in node else False


def _anndata_on_disk(path: str | Path, prefix: str = "") -> ModalityOnDisk | None:
    """The AnnData at ``prefix`` of an .h5ad/.h5mu with its counts on disk, or None (not CSR)."""
    import h5py
    from anndata.io import read_elem

    from coem.readers import _str_index

    with h5py.File(path, "r") as f:
        picked = counts_group(f, prefix)
        if picked is None:
            return None
        counts, var = picked
        uns = dict(read_elem(f[f"{prefix}uns"])) if f"{prefix}uns" in f else {}
        obs, var = _str_index(read_elem(f[f"{prefix}obs"])), read_elem(f[var])
    return ModalityOnDisk(H5CSRSource(path, counts), obs, var, uns)


def _tenx_on_disk(path: str | Path, sample=None) -> tuple[ModalityOnDisk, ModalityOnDisk]:
    """The genes and peaks of a 10x ``.h5``: one matrix on disk, two column sets."""
    from coem.readers import _str_index, open_10x_matrix, read_10x_features, tenx_modalities

    with open_10x_matrix(path, sample) as group:
        barcodes, features = read_10x_features(group, sample, path)
    obs, (rna_var, genes), (atac_var, peaks) = tenx_modalities(barcodes, features, sample, path)
    source = H5CSRSource(path, "matrix", shape=(len(barcodes), len(features)))
    obs = _str_index(obs)
    return (ModalityOnDisk(source, obs, rna_var, columns=np.flatnonzero(genes)),
            ModalityOnDisk(source, obs.copy(), atac_var, columns=np.flatnonzero(peaks)))


@dataclass
class CountsOnDisk:
    """A sample's input with its counts on disk (``open_on_disk``); ``read`` gives QC its MuData."""

    kind: str
    file: str
    rna: ModalityOnDisk
    atac: ModalityOnDisk
    obs: pd.DataFrame | None = None  # an .h5mu's global obs columns (labels ...)

    @property
    def nnz(self) -> int:
        """Stored counts of the input (a 10x file's single matrix counted once)."""
        sources = {id(m.source): m.source for m in (self.rna, self.atac)}
        return sum(int(source.nnz) for source in sources.values())

    def read(self, sample: str | None = None, extra_contigs=(), scaffolds: str = "keep"):
        """``coem.readers``' reading without the counts: (MuData with empty X of the right shapes,
        :class:`StreamedCounts`). Features, contigs and barcodes go through the same checks."""
        import anndata as ad

        from coem.qc import mito_mask
        from coem.readers import check_peak_contigs, gene_table, multiome, peak_table, shared_barcodes

        genes = gene_table(self.rna.var)
        peaks = peak_table(self.atac.var, sample, self.file)
        keep = check_peak_contigs(peaks["chrom"], extra_contigs, scaffolds, sample, self.file)
        shared = shared_barcodes(self.rna.obs.index, self.atac.obs.index, sample, self.file)
        empty = lambda p: sp.csr_matrix((len(shared), p), dtype=np.float32)  # noqa: E731
        mods = {"rna": ad.AnnData(X=empty(len(genes)), obs=self.rna.obs.loc[shared], var=genes, uns=self.rna.uns),
                "atac": ad.AnnData(X=empty(int(keep.sum())), obs=self.atac.obs.loc[shared], var=peaks[keep],
                                   uns=self.atac.uns)}
        mdata = multiome(mods, len(self.rna.obs), len(self.atac.obs), self.obs)
        atac_columns = np.flatnonzero(keep) if self.atac.columns is None else self.atac.columns[keep]
        counts = StreamedCounts(
            {"rna": (self.rna.source, self.rna.obs.index.get_indexer(shared), self.rna.columns),
             "atac": (self.atac.source, self.atac.obs.index.get_indexer(shared), atac_columns)},
            mito_mask(genes.index), sample, self.file)
        return mdata, counts


def open_on_disk(row) -> CountsOnDisk | None:
    """The row's input (``coem.readers.input_of``) with its counts left on disk, or None when it
    cannot be streamed: counts stored dense, or shared cells in another order in each modality.
    A file that cannot be read at all gives None too: the in-memory reader then says what is
    wrong, with the same messages as always."""
    from coem.readers import ATAC_ALIASES, RNA_ALIASES, _quiet, find_modality, input_of

    kind, files, described = input_of(row)
    try:
        if kind == "h5":
            rna, atac = _tenx_on_disk(files[0])
            obs = None
        elif kind == "h5mu":
            import h5py

            from coem.h5mu_backed import read_obs

            with h5py.File(files[0], "r") as f:
                names = list(f["mod"].keys()) if "mod" in f else []
            rna_name, atac_name = (find_modality(names, aliases, role) for aliases, role in
                                   ((RNA_ALIASES, "rna"), (ATAC_ALIASES, "atac")))
            rna, atac = _anndata_on_disk(files[0], f"mod/{rna_name}/"), _anndata_on_disk(files[0], f"mod/{atac_name}/")
            obs = read_obs(files[0])
            obs = obs.loc[:, [c for c in obs.columns if ":" not in str(c)]]  # global columns, as read_h5mu keeps
        else:
            rna, atac = _anndata_on_disk(files[0]), _anndata_on_disk(files[1])
            obs = None
    except (OSError, KeyError, ValueError, TypeError, CoemInputError):
        return None
    if rna is None or atac is None or not _same_order(rna.obs.index, atac.obs.index):
        return None
    return CountsOnDisk(kind, described, rna, atac, obs)


def _same_order(rna: pd.Index, atac: pd.Index) -> bool:
    """Whether the cells of both modalities are unique and those they share come in the same order
    (so that a chunk of cells is one run of rows in each file)."""
    if not (rna.is_unique and atac.is_unique):
        return False
    positions = atac.get_indexer(rna[rna.isin(atac)])
    return bool(np.all(np.diff(positions) > 0))


def in_memory_bytes(disk: CountsOnDisk) -> int:
    """About the peak memory of reading ``disk``'s input into memory for QC."""
    return disk.nnz * IN_MEMORY_BYTES_PER_ENTRY[disk.kind]


def use_streaming(row, mode: str) -> CountsOnDisk | None:
    """The input with its counts on disk, or None to read it into memory: never (``off``), whenever
    possible (``on``), or when reading it into memory would take more than ``BACKED_AUTO_BYTES``
    (``auto``)."""
    if mode == "off":
        return None
    disk = open_on_disk(row)
    if disk is None or mode == "on":
        return disk
    return disk if in_memory_bytes(disk) > BACKED_AUTO_BYTES else None


class StreamedCounts:
    """A sample's RNA and ATAC counts, read ``chunk_rows`` cells at a time.

    ``modalities``: per modality (``rna``, ``atac``), its (source, the source's row of each of
    the sample's cells, in increasing order; the source's columns of its features, or None for
    all) - for the ATAC, the peaks kept by the contig check (``coem.readers.check_peak_contigs``).
    ``mito``: the mitochondrial genes (``coem.qc.mito_mask``).
    """

    def __init__(self, modalities: dict, mito: np.ndarray, sample: str | None = None, path=None,
                 chunk_rows: int | None = None):
        self.path, self.sample, self.chunk_rows = str(path), sample, int(chunk_rows or CHUNK_ROWS)
        self.sources = {mod: source for mod, (source, _, _) in modalities.items()}
        self.rows = {mod: np.asarray(rows, dtype=np.int64) for mod, (_, rows, _) in modalities.items()}
        self.columns = {mod: None if columns is None else np.asarray(columns)
                        for mod, (_, _, columns) in modalities.items()}
        self.mito = np.flatnonzero(mito)
        # A 10x file holds both modalities in one matrix: read each chunk once, split its columns.
        self.shared = self.sources["rna"] is self.sources["atac"] and np.array_equal(self.rows["rna"],
                                                                                     self.rows["atac"])
        self._feature_cells = None
        self._detected_in_all = {}  # per modality: in how many of all cells each feature is detected

    @property
    def n_cells(self) -> int:
        return len(self.rows["rna"])

    def n_features(self, mod: str) -> int:
        return self.sources[mod].shape[1] if self.columns[mod] is None else self.columns[mod].size

    def passes(self) -> list[tuple[str, ...]]:
        """The modalities read together: both when they share a matrix (one read per chunk), else one
        after the other (half the memory)."""
        return [("rna", "atac")] if self.shared else [("rna",), ("atac",)]

    def chunks(self, mods: tuple[str, ...], cells: np.ndarray | None = None, what: str = "pass"):
        """(first cell, {modality in ``mods``: counts of the chunk's cells}) per chunk: all cells, or
        those in the boolean ``cells``. From ``PROGRESS_MIN_ROWS`` cells, each pass logs its time."""
        started = time.perf_counter()
        yield from self._chunks(mods, cells)
        if self.n_cells >= PROGRESS_MIN_ROWS:  # a minute or more per pass at a million cells
            read = self.n_cells if cells is None else int(cells.sum())
            log.info("%s (%s): %d cells read in %.0f s", what, " + ".join(mods), read, time.perf_counter() - started)

    def _chunks(self, mods: tuple[str, ...], cells: np.ndarray | None):
        for start in range(0, self.n_cells, self.chunk_rows):
            rows = np.arange(start, min(start + self.chunk_rows, self.n_cells))
            if cells is not None:
                rows = rows[cells[rows]]
            whole = self.sources["rna"].get_rows(self.rows["rna"][rows]) if self.shared else None
            yield start, {mod: _columns(whole if self.shared else self.sources[mod].get_rows(self.rows[mod][rows]),
                                        self.columns[mod]) for mod in mods}

    def metrics(self, names: pd.Index) -> pd.DataFrame:
        """``coem.qc.compute_qc_metrics`` in one pass, checking the counts on the way."""
        total, detected = ({mod: np.zeros(self.n_cells) for mod in ("rna", "atac")} for _ in range(2))
        mito = np.zeros(self.n_cells)
        stored = dict.fromkeys(("rna", "atac"), 0)
        for start, blocks in (chunk for mods in self.passes() for chunk in self.chunks(mods, what="metrics and count checks")):
            for mod, block in blocks.items():
                stop = start + block.shape[0]
                _check_chunk(block.data, mod, self.sample, self.path)
                total[mod][start:stop] = np.asarray(block.sum(axis=1)).ravel()
                detected[mod][start:stop] = np.diff((block > 0).tocsr().indptr)
                stored[mod] += int((block.data != 0).sum())
                self._count_detected(mod, block, self._detected_in_all)
                if mod == "rna":
                    mito[start:stop] = np.asarray(block[:, self.mito].sum(axis=1)).ravel()
        for mod in ("rna", "atac"):
            if stored[mod] == 0:
                raise CoemInputError(f"the {mod} matrix holds only zeros", self.sample, self.path)
        with np.errstate(divide="ignore", invalid="ignore"):
            pct_mito = np.where(total["rna"] > 0, 100.0 * mito / total["rna"], 0.0)
        return pd.DataFrame({"rna_total_counts": total["rna"], "rna_n_genes": detected["rna"].astype(np.int64),
                             "rna_pct_mito": pct_mito, "atac_total_counts": total["atac"],
                             "atac_n_peaks": detected["atac"].astype(np.int64)}, index=names.copy())

    def feature_cells(self, mod: str, keep: np.ndarray) -> np.ndarray:
        """In how many of the kept cells each feature has a positive count (when both modalities are
        read in the same pass, the other one is kept for the next call)."""
        if mod in self._detected_in_all and (~keep).sum() <= keep.sum():
            # The metrics pass counted all cells: subtract the (few) removed ones instead of a new pass.
            removed = {}
            for _, blocks in self.chunks((mod,), ~keep, "feature counts, removed cells"):
                self._count_detected(mod, blocks[mod], removed)
            return self._detected_in_all[mod] - removed.get(mod, 0)
        cached = self._feature_cells
        if cached is None or mod not in cached[1] or not np.array_equal(cached[0], keep):
            counts = {}
            for _, blocks in self.chunks(next(group for group in self.passes() if mod in group), keep, "feature counts"):
                for m, block in blocks.items():
                    self._count_detected(m, block, counts)
            self._feature_cells = (keep.copy(), counts)
        return self._feature_cells[1][mod]

    def _count_detected(self, mod: str, block: sp.csr_matrix, counts: dict) -> None:
        """Add, per feature, the block's cells with a positive count to ``counts[mod]``."""
        detected = np.bincount(block.indices[block.data > 0], minlength=self.n_features(mod))
        counts[mod] = counts[mod] + detected if mod in counts else detected

    def select(self, cells: np.ndarray, genes: np.ndarray, peaks: np.ndarray) -> None:
        """The cells, genes and peaks QC keeps (boolean masks; ``coem.qc.apply_qc`` calls this)."""
        self.selection = (cells, {"rna": np.flatnonzero(genes), "atac": np.flatnonzero(peaks)})

    def write_filtered(self, path: str | Path) -> None:
        """Fill ``mod/rna/X`` and ``mod/atac/X`` of the written QC output (anndata CSR groups written
        with empty matrices of the final shapes) with the selected counts as float32, chunk by chunk
        (zeros dropped, indices sorted)."""
        import h5py

        cells, features = self.selection
        with h5py.File(path, "r+") as f:
            writers = {mod: _CSRWriter(f[f"mod/{mod}/X"], (int(cells.sum()), features[mod].size))
                       for mod in ("rna", "atac")}
            for _, blocks in (chunk for mods in self.passes() for chunk in self.chunks(mods, cells, "writing the filtered counts")):
                for mod, block in blocks.items():
                    writers[mod].append(block[:, features[mod]])
            for writer in writers.values():
                writer.close()


class _CSRWriter:
    """Appends CSR row blocks to an anndata CSR group, replacing its (empty) arrays."""

    def __init__(self, node, shape: tuple[int, int]):
        if tuple(int(v) for v in node.attrs["shape"]) != shape:
            raise ValueError(f"{node.name} has shape {tuple(node.attrs['shape'])}, not the selection's {shape}")
        for name in ("data", "indices", "indptr"):
            del node[name]
        self.node = node
        self.data = node.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        self.indices = node.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                           chunks=(1 << 18,))
        self.indptr = [np.zeros(1, dtype=np.int64)]

    def append(self, block) -> None:
        block = sp.csr_matrix(block, dtype=np.float32)
        block.eliminate_zeros()
        block.sort_indices()
        size = self.data.shape[0]
        self.data.resize((size + block.nnz,))
        self.indices.resize((size + block.nnz,))
        self.data[size:] = block.data
        self.indices[size:] = block.indices
        self.indptr.append(size + block.indptr[1:].astype(np.int64))

    def close(self) -> None:
        self.node.create_dataset("indptr", data=np.concatenate(self.indptr))


def _columns(block: sp.csr_matrix, columns: np.ndarray | None) -> sp.csr_matrix:
    """The block's ``columns`` (None: all); a contiguous run is sliced, which is much faster."""
    if columns is None:
        return block
    if columns.size and columns[-1] - columns[0] + 1 == columns.size and np.all(np.diff(columns) == 1):
        return block[:, int(columns[0]):int(columns[-1]) + 1]
    return block[:, columns]


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
