#!/usr/bin/env python3
"""The QC step (``coem_qc.py``) on each input kind: counts in memory vs read in row chunks.

Each run is the real step (``coem.cli.qc.main``) in a fresh child process on a simulated
sample (``coem_simulate.py``: 2,000 genes + 20,000 peaks per cell; made if missing) written as
a 10x ``filtered_feature_bc_matrix.h5``, an ``.h5mu`` or an ``.h5ad`` pair. Reported per run:
wall and CPU seconds, the child's peak resident memory (``VmHWM``), the input's size on
disk, the cells kept, and whether the written counts equal those of the in-memory run of the
same input (``same_counts_as_off``: a checksum of the filtered matrices).

    python benchmarks/bench_qc_backed.py --data-dir /big/disk \\
        --runs 100000:10x:off 100000:10x:on 100000:pair:off 100000:pair:on

Writes ``benchmarks/out/bench_qc_backed.json`` and prints a table. Put ``--data-dir`` on a disk
with room, outside the repo (about 1.5 GB per format at 10^5 cells).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _child import child_step, remove_dir, run_in_child, write_results  # beside this script
from _table import format_table

REPO = Path(__file__).resolve().parents[1]
FILES = {"10x": ("{p}_filtered_feature_bc_matrix.h5",), "h5mu": ("{p}.h5mu",), "pair": ("{p}_rna.h5ad", "{p}_atac.h5ad")}


def simulated(n_cells: int, fmt: str, data_dir: Path, seed: int) -> list[Path]:
    """The simulated input files of ``n_cells`` cells in format ``fmt``, made when missing."""
    prefix = f"qc{n_cells}"
    paths = [data_dir / name.format(p=prefix) for name in FILES[fmt]]
    if not all(p.exists() for p in paths):
        print(f"[bench_qc_backed] simulating {n_cells:,} cells as {fmt} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(REPO / "bin" / "coem_simulate.py"), "--n-cells", str(n_cells),
                        "--n-genes", "2000", "--n-peaks", "20000", "--seed", str(seed), "--format", fmt,
                        "--outdir", str(data_dir), "--prefix", prefix], check=True)
    return paths


def input_flags(fmt: str, paths: list[Path]) -> list[str]:
    """The step's input flags; the simulator gives the genes of .h5mu and pair files no positions,
    but a TSS table beside them (the 10x file has gene intervals)."""
    if fmt == "10x":
        return ["--h5", str(paths[0])]
    tss = ["--annotation", str(paths[0].parent / f"{paths[0].name.split('_')[0].removesuffix('.h5mu')}_tss.tsv")]
    if fmt == "h5mu":
        return ["--h5mu", str(paths[0]), *tss]
    return ["--rna", str(paths[0]), "--atac", str(paths[1]), *tss]


def counts_checksum(path: Path) -> str:
    """SHA-256 of the filtered counts' values (data as float32, indices and indptr as int64, whatever
    integer width the writer chose), both modalities."""
    import h5py

    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for mod in ("rna", "atac"):
            for name, dtype in (("data", "<f4"), ("indices", "<i8"), ("indptr", "<i8")):
                values = f[f"mod/{mod}/X/{name}"]
                for start in range(0, values.shape[0], 1 << 24):  # in blocks: this process stays small
                    digest.update(values[start:start + (1 << 24)].astype(dtype).tobytes())
    return digest.hexdigest()[:16]


def run(n_cells: int, fmt: str, backed: str, args) -> dict:
    """One QC run in a child process."""
    paths = simulated(n_cells, fmt, Path(args.data_dir), args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_qc_backed_", dir=args.data_dir))
    step_args = ["--sample", f"qc{n_cells}", "--prefix", str(work / "out"), "--backed", backed,
                 "--seed", str(args.seed), *input_flags(fmt, paths)]
    print(f"[bench_qc_backed] {n_cells:,} cells, {fmt}, backed={backed} ...", file=sys.stderr, flush=True)
    wall, usage = run_in_child(__file__, step_args, work)
    summary = json.loads((work / "out.qc_summary.json").read_text())
    row = {"n_cells": n_cells, "format": fmt, "backed": backed,
           "input_gib": round(sum(p.stat().st_size for p in paths) / 1024**3, 2),
           "cells_kept": summary["cells_after"], "wall_s": round(wall, 1), "cpu_s": usage["cpu_s"],
           "peak_rss_mb": usage["peak_rss_mb"], "counts_sha256": counts_checksum(work / "out.qc.h5mu")}
    print(f"[bench_qc_backed]   {row['wall_s']} s, peak RSS {row['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    remove_dir(work)
    return row


def child(step_args: list[str]) -> None:
    """Run the step in this process and print its CPU seconds and peak RSS (JSON, last line)."""
    sys.path.insert(0, str(REPO))
    from coem.cli.qc import main

    child_step(main, step_args)


def mark_same_counts(rows: list[dict]) -> None:
    """``same_counts_as_off``: whether a run wrote the counts of the in-memory run of its input."""
    reference = {(r["n_cells"], r["format"]): r["counts_sha256"] for r in rows if r["backed"] == "off"}
    for r in rows:
        ref = reference.get((r["n_cells"], r["format"]))
        r["same_counts_as_off"] = "" if ref is None or r["backed"] == "off" else ("yes" if ref == r["counts_sha256"] else "NO")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+",
                        default=[f"100000:{fmt}:{b}" for fmt in ("10x", "h5mu", "pair") for b in ("off", "on")],
                        help="CELLS:FORMAT:BACKED (FORMAT: 10x | h5mu | pair; BACKED: on | off | auto)")
    parser.add_argument("--data-dir", required=True, help="where the simulated inputs are (or are made)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_qc_backed.json", help="file name under benchmarks/out/")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.runs:
        cells, fmt, backed = spec.split(":")
        rows.append(run(int(cells), fmt, backed, args))
    mark_same_counts(rows)
    print(format_table(rows, ("n_cells", "format", "backed", "input_gib", "cells_kept", "wall_s", "cpu_s",
                              "peak_rss_mb", "same_counts_as_off")))
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
