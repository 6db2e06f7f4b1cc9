"""``coem_simulate.py``: write a simulated multiome dataset with known states to disk.

Formats: ``h5mu`` (one MuData), ``pair`` (rna/atac .h5ad; RNA var without TSS columns so the
annotation table has to be used) and ``10x`` (cellranger-arc filtered_feature_bc_matrix.h5).
Always also ``<prefix>_labels.csv`` (barcode,label), ``<prefix>_links.tsv`` (planted links),
``<prefix>_summary.json`` and ``versions.yml``; ``<prefix>_tss.tsv`` for h5mu and pair.

h5mu and pair are streamed chunk by chunk (memory O(chunk), so 10^6 cells fit); 10x is built
in memory (O(nnz)) because its writer takes a MuData.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import scipy.sparse as sp

from coem._logging import get_logger
from coem.provenance import write_versions_yml
from coem.simulate import QUALITY_KINDS, MultiomeSimulator, SimParams

log = get_logger("coem.simulate")
FORMATS = ("h5mu", "pair", "10x")


# ----------------------------------------------------------------------------------------
# Streaming writers
# ----------------------------------------------------------------------------------------


class CsrAppender:
    """An AnnData CSR matrix on disk that grows by row blocks (encoding csr_matrix 0.1.0).

    indices and indptr share one integer type (scipy refuses some operations on mixed ones):
    int32 while ``max_rows x n_cols`` cannot overflow it, else int64.
    """

    def __init__(self, parent: h5py.Group, name: str, n_cols: int, max_rows: int, compression: str | None = None):
        if name in parent:
            del parent[name]
        self.group = g = parent.create_group(name)
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([0, n_cols], dtype=np.int64)
        self.index_dtype = np.int32 if max_rows * n_cols < 2**31 else np.int64
        opts = {"maxshape": (None,), "chunks": (1 << 16,), "compression": compression}
        g.create_dataset("data", shape=(0,), dtype=np.float32, **opts)
        g.create_dataset("indices", shape=(0,), dtype=self.index_dtype, **opts)
        g.create_dataset("indptr", data=np.zeros(1, self.index_dtype), maxshape=(None,), chunks=(1 << 14,))
        self.n_rows, self.nnz, self.n_cols = 0, 0, n_cols

    def append(self, block: sp.csr_matrix) -> None:
        block = sp.csr_matrix(block)
        block.sort_indices()
        g = self.group
        parts = (("data", block.data.astype(np.float32)), ("indices", block.indices.astype(self.index_dtype)))
        for key, values in parts:
            g[key].resize((self.nnz + block.nnz,))
            g[key][self.nnz:] = values
        g["indptr"].resize((self.n_rows + block.shape[0] + 1,))
        g["indptr"][self.n_rows + 1:] = (block.indptr[1:].astype(np.int64) + self.nnz).astype(self.index_dtype)
        self.n_rows += block.shape[0]
        self.nnz += block.nnz
        g.attrs["shape"] = np.array([self.n_rows, self.n_cols], dtype=np.int64)


class _Totals:
    """Per-cell totals and non-zeros gathered while streaming (for the summary)."""

    def __init__(self):
        self.rna, self.atac, self.rna_nnz, self.atac_nnz = [], [], 0, 0

    def add(self, rna: sp.csr_matrix, atac: sp.csr_matrix) -> None:
        self.rna.append(np.asarray(rna.sum(axis=1)).ravel())
        self.atac.append(np.asarray(atac.sum(axis=1)).ravel())
        self.rna_nnz += rna.nnz
        self.atac_nnz += atac.nnz

    def summary(self, sim: MultiomeSimulator) -> dict:
        n = sim.params.n_cells
        rna, atac = np.concatenate(self.rna), np.concatenate(self.atac)
        return {
            "n_cells": n, "n_genes": len(sim.genes), "n_peaks": len(sim.peaks), "n_links": len(sim.links),
            "states": {str(k): int(v) for k, v in sim.obs["state"].value_counts(sort=False).items()},
            "rna_median_counts": float(np.median(rna)), "atac_median_counts": float(np.median(atac)),
            "rna_nonzero_fraction": self.rna_nnz / (n * len(sim.genes)),
            "atac_nonzero_fraction": self.atac_nnz / (n * len(sim.peaks)),
        } | ({"quality": {str(k): int(v) for k, v in sim.obs["quality"].value_counts(sort=False).items()}}
             if sim.params.has_low_quality else {})


def _stream_counts(sim: MultiomeSimulator, rna: CsrAppender, atac: CsrAppender, totals: _Totals) -> None:
    start = time.perf_counter()
    for i, (cells, r, a) in enumerate(sim.iter_chunks()):
        rna.append(r)
        atac.append(a)
        totals.add(r, a)
        if (i + 1) % 10 == 0 or i + 1 == sim.n_chunks:
            log.info("chunk %d/%d: %d cells written (%.1f s)", i + 1, sim.n_chunks, cells.stop,
                     time.perf_counter() - start)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_h5mu_streaming(sim: MultiomeSimulator, path: str | Path, compression: str | None = None) -> dict:
    """Write ``sim`` as one .h5mu, chunk by chunk: memory stays O(chunk) at any number of cells.

    Metadata are written by mudata itself (a MuData without X); the two X matrices are then
    filled in place. The file appears under its name only when complete. Returns the summary.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sim.skeleton().write(_tmp(path))
    totals = _Totals()
    with h5py.File(_tmp(path), "r+") as handle:
        rna = CsrAppender(handle["mod/rna"], "X", len(sim.genes), sim.params.n_cells, compression)
        atac = CsrAppender(handle["mod/atac"], "X", len(sim.peaks), sim.params.n_cells, compression)
        _stream_counts(sim, rna, atac, totals)
    os.replace(_tmp(path), path)
    return totals.summary(sim)


def write_pair_streaming(sim: MultiomeSimulator, rna_path: str | Path, atac_path: str | Path,
                         compression: str | None = None) -> dict:
    """Write ``sim`` as rna/atac .h5ad files; the RNA var has no chrom/tss/strand (annotation needed)."""
    import anndata as ad

    rna_path, atac_path = Path(rna_path), Path(atac_path)
    obs = sim.obs.copy()
    obs.index.name = None
    ad.AnnData(obs=obs, var=sim.rna_var(with_annotation=False)).write_h5ad(_tmp(rna_path))
    ad.AnnData(obs=obs[[]], var=sim.atac_var()).write_h5ad(_tmp(atac_path))
    totals = _Totals()
    with h5py.File(_tmp(rna_path), "r+") as r_handle, h5py.File(_tmp(atac_path), "r+") as a_handle:
        rna = CsrAppender(r_handle, "X", len(sim.genes), sim.params.n_cells, compression)
        atac = CsrAppender(a_handle, "X", len(sim.peaks), sim.params.n_cells, compression)
        _stream_counts(sim, rna, atac, totals)
    os.replace(_tmp(rna_path), rna_path)
    os.replace(_tmp(atac_path), atac_path)
    return totals.summary(sim)


def write_10x(sim: MultiomeSimulator, path: str | Path) -> dict:
    """Build the dataset in memory and write it with ``coem.readers.write_10x_h5``."""
    from coem.readers import write_10x_h5

    data = sim.simulate()
    totals = _Totals()
    totals.add(data.mdata.mod["rna"].X, data.mdata.mod["atac"].X)
    path = Path(path)
    write_10x_h5(data.mdata, _tmp(path))
    os.replace(_tmp(path), path)
    return totals.summary(sim)


# ----------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d = SimParams()
    p = argparse.ArgumentParser(description="Simulate paired multiome (RNA + ATAC) counts with known cell states.")
    p.add_argument("--n-cells", type=int, default=d.n_cells, help="number of cells")
    p.add_argument("--n-genes", type=int, default=d.n_genes, help="genes, mitochondrial ones included")
    p.add_argument("--n-peaks", type=int, default=d.n_peaks, help="ATAC peaks")
    p.add_argument("--n-types", type=int, default=d.n_types, help="discrete cell types")
    p.add_argument("--trajectory-fraction", type=float, default=d.trajectory_fraction,
                   help="fraction of cells on the continuous trajectory")
    p.add_argument("--lag", type=float, default=d.lag, help="pseudotime by which chromatin opens before transcription")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same files)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help="cells generated at once (part of the seed contract)")
    for kind, text in (("empty", "empty-droplet-like cells (ambient-level counts in both modalities)"),
                       ("low-count", "poorly captured cells (both libraries at 3-12%% of a cell's)"),
                       ("damaged", "broken cells (low RNA, 25-60%% mitochondrial; ATAC 30-100%%)"),
                       ("doublet", "doublets (a cell's counts plus another cell's)")):
        p.add_argument(f"--{kind}-fraction", type=float, default=0.0,
                       help=f"fraction of cells planted as {text}; their kind is in obs 'quality' (default 0)")
    p.add_argument("--outdir", default=".", help="output folder (created)")
    p.add_argument("--prefix", default="sim", help="output file prefix")
    p.add_argument("--format", choices=FORMATS, default="h5mu",
                   help="h5mu | pair (two .h5ad) | 10x (cellranger-arc .h5)")
    p.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                   help="HDF5 compression of X (h5mu/pair)")
    p.add_argument("--process-name", default="COEM_SIMULATE", help="process name for versions.yml")
    return p


def _params(args: argparse.Namespace) -> SimParams:
    return SimParams(n_cells=args.n_cells, n_genes=args.n_genes, n_peaks=args.n_peaks, n_types=args.n_types,
                     trajectory_fraction=args.trajectory_fraction, lag=args.lag, seed=args.seed,
                     chunk_size=args.chunk_size, empty_fraction=args.empty_fraction,
                     low_count_fraction=args.low_count_fraction, damaged_fraction=args.damaged_fraction,
                     doublet_fraction=args.doublet_fraction)


def write_outputs(sim: MultiomeSimulator, outdir: Path, prefix: str, fmt: str, compression: str | None) -> dict:
    """The data file(s) in ``fmt`` plus labels, links and (h5mu/pair) the TSS table."""
    stem = outdir / prefix
    if fmt == "h5mu":
        summary = write_h5mu_streaming(sim, f"{stem}.h5mu", compression)
    elif fmt == "pair":
        summary = write_pair_streaming(sim, f"{stem}_rna.h5ad", f"{stem}_atac.h5ad", compression)
    else:
        summary = write_10x(sim, f"{stem}_filtered_feature_bc_matrix.h5")
    labels = sim.obs["state"].astype(str).rename("label").rename_axis("barcode").reset_index()
    labels.to_csv(f"{stem}_labels.csv", index=False)
    sim.links.to_csv(f"{stem}_links.tsv", sep="\t", index=False)
    if fmt in ("h5mu", "pair"):
        sim.tss_table().to_csv(f"{stem}_tss.tsv", sep="\t", index=False)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = _params(args)  # CoemInputError on bad values -> exit code 2
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sim = MultiomeSimulator(params)
    log.info("model: %d genes, %d peaks, %d planted links, %d cells in %d states (%.1f s)", len(sim.genes),
             len(sim.peaks), len(sim.links), params.n_cells, sim.obs["state"].nunique(), time.perf_counter() - start)
    compression = None if args.compression == "none" else args.compression
    summary = write_outputs(sim, outdir, args.prefix, args.format, compression)
    summary.update(format=args.format, seconds=round(time.perf_counter() - start, 2))
    (outdir / f"{args.prefix}_summary.json").write_text(json.dumps(summary, indent=1))
    write_versions_yml(outdir / "versions.yml", args.process_name)
    log.info("wrote %s (%s) to %s (%.1f s)", args.prefix, args.format, outdir, time.perf_counter() - start)
    return 0
