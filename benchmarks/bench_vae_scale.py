#!/usr/bin/env python3
"""The VAE step (``coem_train_vae.py``) at scale: in memory vs batches streamed from the file.

Each run is the real step (``coem.cli.train_vae.main``) in a fresh child process on a
simulated ``.h5mu`` (``coem_simulate.py``: 2,000 genes + 20,000 peaks per cell; made if
missing), with ``--cells-per-epoch`` so that an epoch is a fixed amount of work whatever the
number of cells. Reported per run: seconds reading + selecting features (two streamed passes
over every cell), training (per epoch, cells per second), embedding every cell, writing, the
child's peak resident memory (``ru_maxrss``), and the input's size in memory as CSR.

    python benchmarks/bench_vae_scale.py --data-dir /big/disk \\
        --runs 100000:off 100000:on 1000000:on --cells-per-epoch 20000 --epochs 2

Writes ``benchmarks/out/bench_vae_scale.json`` and prints a table. The simulated files are
large (about 17 GB at 10^6 cells): put ``--data-dir`` on a disk with room, outside the repo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _child import child_step, remove_dir, run_in_child, write_results  # beside this script
from _table import format_table

REPO = Path(__file__).resolve().parents[1]


def simulated(n_cells: int, data_dir: Path, seed: int) -> Path:
    """The simulated h5mu of ``n_cells`` cells, made (streamed, chunk by chunk) when missing."""
    path = data_dir / f"sim{n_cells}.h5mu"
    if not path.exists():
        print(f"[bench_vae_scale] simulating {n_cells:,} cells into {path} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(REPO / "bin" / "coem_simulate.py"), "--n-cells", str(n_cells),
                        "--n-genes", "2000", "--n-peaks", "20000", "--seed", str(seed), "--format", "h5mu",
                        "--outdir", str(data_dir), "--prefix", f"sim{n_cells}"], check=True)
    return path


def csr_gib(path: Path) -> float:
    """Both count matrices' size in memory as float32/int32 CSR (8 bytes per stored entry)."""
    from coem import h5mu_backed

    return round(sum(h5mu_backed.csr_nnz(path, f"mod/{m}/X") for m in ("rna", "atac")) * 8 / 1024**3, 2)


def run(n_cells: int, backed: str, args) -> dict:
    """One train_vae run in a child process; its timings come from the step's own record."""
    path = simulated(n_cells, Path(args.data_dir), args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_vae_scale_", dir=args.data_dir))
    step_args = ["--sample", f"sim{n_cells}", "--input", str(path), "--prefix", str(work / "out"), "--backed", backed, "--epochs", str(args.epochs),
           "--cells-per-epoch", str(args.cells_per_epoch), "--warmup-epochs", "1", "--patience", "0",
           "--threads", str(args.threads), "--seed", str(args.seed), "--device", "cpu", *args.step_args.split()]
    print(f"[bench_vae_scale] {n_cells:,} cells, backed={backed} ...", file=sys.stderr, flush=True)
    wall, usage = run_in_child(__file__, step_args, work)
    record = json.loads(_embed_record(work / "out.embedding.h5ad"))
    t = record["timings"]
    row = {"n_cells": n_cells, "backed": record["backed"], "csr_in_memory_gib": csr_gib(path),
           "read_and_features_s": round(t["read_s"] + t["features_s"], 1),
           "train_s": round(t["train_s"], 1), "epochs": record["epochs_run"],
           "s_per_epoch": round(record["seconds_per_epoch"], 1),
           "train_cells_per_s": round(args.cells_per_epoch / record["seconds_per_epoch"], 1),
           "embed_s": round(t["embed_s"], 1), "embed_cells_per_s": round(n_cells / max(t["embed_s"], 1e-9), 1),
           "wall_s": round(wall, 1), "cpu_s": usage["cpu_s"], "peak_rss_mb": usage["peak_rss_mb"], "threads": args.threads,
           "cells_per_epoch": args.cells_per_epoch}
    print(f"[bench_vae_scale]   {row['wall_s']} s, peak RSS {row['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    if not args.keep:
        remove_dir(work)
    return row


def child(step_args: list[str]) -> None:
    """Run the step in this process and print its CPU seconds and peak RSS (JSON, last line)."""
    sys.path.insert(0, str(REPO))
    from coem.cli.train_vae import main

    child_step(main, step_args)


def _embed_record(path: Path) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        value = f["uns/coem/embed"][()]
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["100000:off", "100000:on", "1000000:on"],
                        help="CELLS:BACKED pairs (BACKED: on | off | auto)")
    parser.add_argument("--data-dir", required=True, help="where the simulated h5mu files are (or are made)")
    parser.add_argument("--cells-per-epoch", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the outputs of each run")
    parser.add_argument("--step-args", default="--batch-size 256 --n-peaks 0 --input-transform log1p",
                        help="more coem_train_vae.py arguments (default: the settings docs/benchmarks.md reports, "
                             "the step's defaults before 64-cell batches and 10,000 peaks became the defaults)")
    parser.add_argument("--out", default="bench_vae_scale.json", help="file name under benchmarks/out/")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.runs:
        cells, backed = spec.split(":")
        rows.append(run(int(cells), backed, args))
    print(format_table(rows, ("n_cells", "backed", "csr_in_memory_gib", "read_and_features_s", "s_per_epoch",
                        "train_cells_per_s", "embed_s", "embed_cells_per_s", "wall_s", "cpu_s", "peak_rss_mb")))
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
