#!/usr/bin/env python3
"""The whole pipeline on one simulated sample: per step wall time, peak RSS, bytes read and
written, and the size of the work directory against the input file (issue 14).

Each size is simulated once (``coem_simulate.py``, cached under ``benchmarks/out/pipeline_data``),
then ``./nextflow run .`` runs it in a fresh launch folder with the local executor and no
container. Per step the numbers come from Nextflow's trace (``realtime``, ``peak_rss``, ``rchar``,
``wchar``: bytes the task's processes read and wrote through system calls, libraries and
caches included); the work directory and the input are measured with their file sizes.

    python benchmarks/bench_pipeline.py --cells 10000 --genes 36601 --peaks 120000 --embedding pca_lsi
    python benchmarks/bench_pipeline.py --cells 100000 --vae-epochs 15 --vae-cells-per-epoch 20000

Prints a table per run and writes ``benchmarks/out/bench_pipeline_<cells>_<embedding>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _table import format_table  # benchmarks/_table.py, beside this script

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
STEPS = ("SAMPLESHEET_CHECK", "QC", "EMBED", "TRAIN_VAE", "METACELLS", "AGGREGATE", "EVALUATE", "PEAK2GENE",
         "EXPORT", "MULTIQC", "RUN_STATUS")


def simulate(cells: int, genes: int, peaks: int, seed: int) -> Path:
    """The simulated sample (h5mu), made once per size and seed."""
    folder = OUT / "pipeline_data" / f"sim_{cells}_{genes}_{peaks}_{seed}"
    path = folder / "sample.h5mu"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(REPO / "bin" / "coem_simulate.py"), "--n-cells", str(cells),
                        "--n-genes", str(genes), "--n-peaks", str(peaks), "--seed", str(seed),
                        "--outdir", str(folder), "--prefix", "sample", "--format", "h5mu"], check=True)
    return path


def _bytes(text: str) -> int:
    """Nextflow's trace sizes: '1.2 GB', '300 MB', '12 KB', '5 B' or '-'."""
    text = text.strip()
    if text in ("", "-"):
        return 0
    if " " not in text:
        return int(float(text))
    value, unit = text.split()
    scale = {"B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}[unit]
    return int(float(value) * scale)


def _seconds(text: str) -> float:
    """Nextflow's durations: '1h 2m 3s', '4m 5s', '6.7s', '890ms'."""
    total = 0.0
    for part in text.split():
        for unit, scale in (("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)):
            if part.endswith(unit):
                total += float(part[: -len(unit)]) * scale
                break
    return total


def folder_bytes(folder: Path) -> int:
    """Sum of regular files (links not followed: staged inputs are links in the work directory)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def run_pipeline(data: Path, launch: Path, args) -> dict:
    launch.mkdir(parents=True, exist_ok=True)
    sheet = launch / "samplesheet.csv"
    sheet.write_text(f"sample,h5mu\nsim,{data}\n")
    command = [str(REPO / "nextflow"), "run", str(REPO), "--input", str(sheet), "--outdir", "results",
               "--embedding", args.embedding, "--max_cpus", str(args.max_cpus), "--max_memory", args.max_memory,
               "--skip_evaluation", str(args.skip_evaluation).lower()]
    if args.embedding == "vae":
        command += ["--vae_epochs", str(args.vae_epochs)]
        if args.vae_cells_per_epoch:
            command += ["--vae_cells_per_epoch", str(args.vae_cells_per_epoch)]
    env = {**os.environ, "NXF_ANSI_LOG": "false", "NXF_OFFLINE": os.environ.get("NXF_OFFLINE", "true"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.run(command, cwd=launch, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"pipeline failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    trace = sorted((launch / "results" / "pipeline_info").glob("execution_trace_*.txt"))[-1]
    lines = trace.read_text().splitlines()
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        step = row["process"].split(":")[-1]
        rows.append({"step": step, "wall_s": round(_seconds(row["realtime"]), 1),
                     "peak_rss_gb": round(_bytes(row["peak_rss"]) / 2 ** 30, 2),
                     "read_gb": round(_bytes(row.get("rchar", "-")) / 2 ** 30, 3),
                     "written_gb": round(_bytes(row.get("wchar", "-")) / 2 ** 30, 3)})
    rows.sort(key=lambda r: STEPS.index(r["step"]) if r["step"] in STEPS else len(STEPS))
    return {"wall_s": round(wall, 1), "steps": rows, "work_dir_bytes": folder_bytes(launch / "work"),
            "input_bytes": data.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--peaks", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding", choices=("vae", "pca_lsi"), default="vae")
    parser.add_argument("--vae-epochs", type=int, default=15)
    parser.add_argument("--vae-cells-per-epoch", type=int, default=None)
    parser.add_argument("--skip-evaluation", action="store_true")
    parser.add_argument("--max-cpus", type=int, default=2)
    parser.add_argument("--max-memory", default="20.GB")
    args = parser.parse_args()

    data = simulate(args.cells, args.genes, args.peaks, args.seed)
    tag = f"{args.cells}_{args.genes}x{args.peaks}_{args.embedding}"
    launch = OUT / "pipeline_runs" / tag
    result = run_pipeline(data, launch, args)
    result.update(cells=args.cells, genes=args.genes, peaks=args.peaks, embedding=args.embedding,
                  vae_epochs=args.vae_epochs, vae_cells_per_epoch=args.vae_cells_per_epoch,
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                  load_average=os.getloadavg())
    print(f"\n{args.cells:,} cells x ({args.genes:,} genes + {args.peaks:,} peaks), --embedding {args.embedding}: "
          f"{result['wall_s']:.0f} s wall; input {result['input_bytes'] / 2 ** 30:.2f} GiB, work directory "
          f"{result['work_dir_bytes'] / 2 ** 30:.2f} GiB ({result['work_dir_bytes'] / result['input_bytes']:.2f}x)")
    print(format_table(result["steps"], ("step", "wall_s", "peak_rss_gb", "read_gb", "written_gb")))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench_pipeline_{tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
