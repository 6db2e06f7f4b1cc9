#!/usr/bin/env python3
"""Joint VAE training throughput (cells/second) and peak memory on CPU.

Default: 10,000 simulated cells x (2,000 genes + 20,000 peaks), 3 epochs, default model and
batch size. Prints a table and writes ``benchmarks/out/bench_vae.json``. Peak memory is the
process's maximum resident set size (``ru_maxrss``), so it includes Python, torch and the
simulated data; the table also shows the RSS before training to separate the two.

    python benchmarks/bench_vae.py [--cells 10000 --genes 2000 --peaks 20000 --epochs 3 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coem.model import JointVAE, embed, prepare_data, train_vae  # noqa: E402


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if platform.system() == "Linux" else peak / 1024**2


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def nb_counts(n_cells: int, n_genes: int, n_peaks: int, seed: int):
    """Fallback data when coem.simulate is missing: 5-state NB RNA and sparse 0/1 ATAC."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 5, n_cells)
    base = rng.lognormal(-1.0, 1.0, (5, n_genes))
    mean = base[state] * rng.lognormal(0, 0.4, (n_cells, 1))
    rna = sp.csr_matrix(rng.negative_binomial(2, 2 / (2 + mean)).astype(np.float32))
    openness = rng.uniform(0.0, 0.06, (5, n_peaks)).astype(np.float32)
    rows = [sp.csr_matrix((rng.random((1000, n_peaks), dtype=np.float32) < openness[state[s:s + 1000]])
                          .astype(np.float32)) for s in range(0, n_cells, 1000)]
    return rna, sp.vstack(rows).tocsr()


def make_data(n_cells: int, n_genes: int, n_peaks: int, seed: int):
    try:
        from coem.simulate import simulate_multiome
    except ImportError:
        return nb_counts(n_cells, n_genes, n_peaks, seed), "nb_fallback"
    sim = simulate_multiome(n_cells=n_cells, n_genes=n_genes, n_peaks=n_peaks, seed=seed)
    return (sim.mdata.mod["rna"].X.tocsr(), sim.mdata.mod["atac"].X.tocsr()), "coem.simulate"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--peaks", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-peak-fraction", type=float, default=1.0,
                        help="1.0 keeps every peak so the model really has --peaks inputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bench_vae.json"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    (rna, atac), source = make_data(args.cells, args.genes, args.peaks, args.seed)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = prepare_data(rna, atac, n_genes=args.genes, max_peak_fraction=args.max_peak_fraction, seed=args.seed)
    prep_s = time.perf_counter() - t0
    model = JointVAE(data.n_genes, data.n_peaks, seed=args.seed)
    rss_before = current_rss_mb()
    history = train_vae(model, data, epochs=args.epochs, batch_size=args.batch_size, patience=0,
                        device=args.device, seed=args.seed, threads=args.threads, log_every=1)
    t0 = time.perf_counter()
    z = embed(model, data, batch_size=1024)
    embed_s = time.perf_counter() - t0
    epoch_s = [e["seconds"] for e in history["epochs"]]
    # The first epoch includes the k-means prior initialisation; steady state is the rest.
    steady = epoch_s[1:] or epoch_s
    result = {
        "data": source,
        "cells": args.cells,
        "train_cells": int(data.train_idx.size),
        "genes": data.n_genes,
        "peaks": data.n_peaks,
        "nnz_rna": int(rna.nnz),
        "nnz_atac": int(atac.nnz),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": history["device"],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs": history["epochs_run"],
        "seconds_per_epoch": epoch_s,
        "train_cells_per_second": data.train_idx.size / float(np.mean(steady)),
        "embed_cells_per_second": args.cells / embed_s,
        "simulate_s": sim_s,
        "prepare_s": prep_s,
        "rss_before_training_mb": rss_before,
        "peak_rss_mb": rss_mb(),
        "final_train_loss": history["epochs"][-1]["train_loss"],
        "z_shape": list(z.shape),
    }
    print(f"\n{'metric':<28}{'value':>16}")
    for key in ("cells", "genes", "peaks", "parameters", "threads", "device", "batch_size",
                "train_cells_per_second", "embed_cells_per_second", "rss_before_training_mb", "peak_rss_mb"):
        value = result[key]
        print(f"{key:<28}{value:>16,.1f}" if isinstance(value, float) else f"{key:<28}{value!s:>16}")
    print(f"{'seconds per epoch':<28}{', '.join(f'{s:.2f}' for s in epoch_s):>16}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
