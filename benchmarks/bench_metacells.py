#!/usr/bin/env python3
"""Time and peak memory of the metacell step (kNN + kernel + spectral) on a simulated latent z.

Each size runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own;
tracemalloc's peak (numpy/scipy/sklearn allocations made through Python) is reported beside
it. z comes from ``coem.simulate.simulate_latent`` (Gaussian states, as a VAE latent), or
Gaussian blobs when the simulator is absent. The default ``--spread 2`` makes states overlap
so the kNN graph is connected and the spectral path does the work; at spread 4 the states
are separate graph components, each clustered on its own, which is much cheaper. Metacell purity against the simulated states is
printed as a sanity check. Results: a table on stdout and ``benchmarks/out/bench_metacells.json``.

    python benchmarks/bench_metacells.py                 # 10k and 100k cells
    python benchmarks/bench_metacells.py --cells 2000 20000 --dim 30

``--quality`` instead compares designs at 10,000 cells on six simulated latents (seeds 0-2,
dims 10 and 30): purity against the states, compactness and separation on diffusion
components of z (``coem.metrics``), CPU seconds. Variants: ``exact`` (this tree's default at
10k), ``partitioned`` (this tree's partitioned path forced at 10k, ``exact_max_cells=5000``),
``before`` (``coem/graph.py`` and ``coem/metacells.py`` of ``--before-commit``, read with
``git show``) and ``seacells`` (SEACells 0.3.3 on the latents of ``--seacells-dims``).
``--quality-cells``, ``--quality-seeds`` and ``--quality-dims`` change the latents (the
partitioned variant is then forced with ``exact_max_cells`` = half the cells). Writes
``bench_metacells_quality.json``.

    python benchmarks/bench_metacells.py --quality --before-commit f16979d --seacells-dims 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def latent(n_cells: int, dim: int, n_states: int, seed: int, spread: float):
    """Simulated z and state labels (simulate_latent when present, else Gaussian blobs)."""
    import numpy as np

    try:
        from coem.simulate import simulate_latent
    except ImportError:
        rng = np.random.default_rng(seed)
        centres = rng.normal(scale=spread, size=(n_states, dim))
        states = rng.integers(0, n_states, n_cells)
        return (centres[states] + rng.normal(size=(n_cells, dim))).astype(np.float32), states.astype(str), "blobs"
    z, states = simulate_latent(n_cells, dim=dim, n_states=n_states, seed=seed, spread=spread)
    return z, np.asarray(states).astype(str), "simulate_latent"


def run_one(n_cells: int, dim: int, n_states: int, spread: float, cells_per_metacell: float, k: int,
            seed: int) -> dict:
    """One measurement, in this process (called in a fresh child by ``main``)."""
    import tracemalloc

    import numpy as np
    import pandas as pd

    from coem.aggregate import metacell_table
    from coem.metacells import SpectralMetacells

    z, states, source = latent(n_cells, dim, n_states, seed, spread)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    model = SpectralMetacells(cells_per_metacell=cells_per_metacell, k=k, random_state=seed).fit(z)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    table = metacell_table(pd.Series(model.names_, name="metacell"), pd.Series(states))
    return {
        "n_cells": n_cells, "dim": dim, "spread": spread, "latent": source, "k": k, "seed": seed,
        "strategy": model.strategy_, "n_parts": getattr(model, "n_parts_", 1),
        "n_metacells": model.summary_["n_metacells"], "min_size": model.summary_["min_size"],
        "median_size": model.summary_["median_size"], "max_size": model.summary_["max_size"],
        "singletons": model.summary_["n_singletons"],
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 1),
        "maxrss_mb": round(rss_after / 1024, 1), "maxrss_before_fit_mb": round(rss_before / 1024, 1),
        "purity_mean": round(float(np.mean(table["label_fraction"])), 4),
    }


def _child(args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(args.n), "--dim", str(args.dim), "--states", str(args.states),
           "--spread", str(args.spread),
           "--cells-per-metacell", str(args.cells_per_metacell), "--k", str(args.k), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark at {args.n} cells failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


COLUMNS = ("n_cells", "spread", "strategy", "n_parts", "n_metacells", "min_size", "median_size", "max_size", "singletons",
           "wall_s", "cpu_s", "tracemalloc_peak_mb", "maxrss_mb", "purity_mean")


def print_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(columns, widths)))


def _module_at_commit(commit: str):
    """``coem.metacells`` as it was at ``commit`` (with that commit's ``coem.graph``), imported
    from a temporary package so that it does not replace this tree's modules."""
    import importlib
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="coem_before_"))
    pkg = root / "coem_before"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("graph", "metacells"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:coem/{name}.py"], capture_output=True,
                              text=True, check=True).stdout
        (pkg / f"{name}.py").write_text(text.replace("from coem.graph import", "from coem_before.graph import"))
    sys.path.insert(0, str(root))
    return importlib.import_module("coem_before.metacells")


def quality_compare(args) -> list[dict]:
    """Purity / compactness / separation / CPU of each variant on six simulated latents."""
    import numpy as np

    from coem import metacells, metrics
    from coem.simulate import simulate_latent

    before = _module_at_commit(args.before_commit) if args.before_commit else None
    n_cells = args.quality_cells
    n_mc = round(n_cells / 75)
    variants = {
        "exact": lambda z: metacells.SpectralMetacells(n_metacells=n_mc, random_state=0, exact_max_cells=n_cells)
        .fit(z).labels_,
        "partitioned": lambda z: metacells.SpectralMetacells(n_metacells=n_mc, random_state=0, exact_max_cells=n_cells // 2)
        .fit(z).labels_,
    }
    if before is not None:
        variants["before"] = lambda z: before.SpectralMetacells(n_metacells=n_mc, seed=0).fit(z).labels_
    if args.seacells_dims:
        from bench_scale import _scanpy_scipy_shim  # benchmarks/bench_scale.py, beside this script

        from coem.baselines import run_seacells, warm_up_seacells

        _scanpy_scipy_shim()
        warm_up_seacells(0)  # scanpy's numba compilation, not billed to the first run
    rows = []
    for seed in args.quality_seeds:
        for dim in args.quality_dims:
            z, states = simulate_latent(n_cells, dim=dim, n_states=10, seed=seed, spread=2.0)
            components = metrics.diffusion_components(z)
            runs = dict(variants)
            if dim in args.seacells_dims:
                runs["seacells"] = lambda z: run_seacells(z, n_metacells=n_mc, seed=0).labels
            for name, run in runs.items():
                cpu = time.process_time()
                labels = run(z)
                cpu = time.process_time() - cpu
                _, summary = metrics.evaluate_metacells(np.asarray(labels).astype(str), {"z": components}, states)
                rows.append({"seed": seed, "dim": dim, "variant": name, "cpu_s": round(cpu, 1),
                             "purity": round(summary["purity"]["mean"], 4),
                             "compactness": float(f"{summary['compactness_z']['mean']:.4g}"),
                             "separation": float(f"{summary['separation_z']['mean']:.4g}")})
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=10, help="latent dimension (scMVP default 10)")
    parser.add_argument("--states", type=int, default=10)
    parser.add_argument("--spread", type=float, default=2.0, help="distance between states in within-state sd")
    parser.add_argument("--cells-per-metacell", type=float, default=75)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", action="store_true", help="compare designs at 10k cells (see above)")
    parser.add_argument("--before-commit", default="", help="with --quality: also run this commit's metacells")
    parser.add_argument("--quality-cells", type=int, default=10_000, help="with --quality: cells per latent")
    parser.add_argument("--quality-seeds", type=int, nargs="+", default=[0, 1, 2], help="with --quality: latents")
    parser.add_argument("--quality-dims", type=int, nargs="+", default=[10, 30], help="with --quality: latent dims")
    parser.add_argument("--seacells-dims", type=int, nargs="*", default=[],
                        help="with --quality: also run SEACells on the latents of these dims (about 6 min each)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quality:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            rows = quality_compare(args)
        print_table(rows, ("seed", "dim", "variant", "cpu_s", "purity", "compactness", "separation"))
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "bench_metacells_quality.json").write_text(json.dumps(rows, indent=1))
        return 0
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.dim, args.states, args.spread, args.cells_per_metacell, args.k,
                                 args.seed)))
        return 0
    rows = []
    for n in args.cells:
        args.n = n
        rows.append(_child(args))
        print(f"done {n} cells: {rows[-1]['wall_s']} s", file=sys.stderr, flush=True)
    print_table(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0]}
    path = OUT / "bench_metacells.json"
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
