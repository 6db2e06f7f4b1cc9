#!/usr/bin/env python3
"""Scale of the metacell step on a given latent z: time, peak memory, quality, SEACells ratios.

Every measurement runs in a fresh child process, so its peak resident memory (``ru_maxrss``
of that process, i.e. VmHWM) is its own and no import or JIT cache is shared. z comes from
``coem.simulate.simulate_latent`` (Gaussian states with unequal sizes; ``--spread 2``). One
run prints and writes (``benchmarks/out/bench_scale.json``):

- COEM's ``SpectralMetacells`` at each ``--cells`` size: wall and CPU seconds, peak RSS, its
  strategy and stage timings, purity against the simulated states;
- the partitioned path's two neighbour designs at ``--design-cells`` (``neighbours='parts'``,
  the default, and ``'global'``: pynndescent over all cells);
- SEACells (``coem.baselines.run_seacells``) on the same z at each ``--seacells-cells`` size,
  killed after ``--seacells-cap`` seconds ("did not finish in X s");
- at the smallest size, purity, compactness and separation of both methods; compactness and
  separation are measured on diffusion components computed from z itself
  (``coem.metrics.diffusion_components(z)``), since a latent benchmark has no RNA/ATAC;
- pynndescent's recall of the exact 15 nearest neighbours on ``--recall-cells`` cells;
- the ratios SEACells / COEM for time and memory.

    python benchmarks/bench_scale.py                     # 10k, 100k, 1M; SEACells at 10k
    python benchmarks/bench_scale.py --seacells-cells 10000 100000 --seacells-big-cap 300

SEACells 0.3.3 with scanpy 1.11.5 and scipy 1.17 fails above 8,192 cells (scanpy calls
``csr_array.getnnz``, which scipy 1.17 removed); the SEACells child adds that method back
before running (``_scanpy_scipy_shim``), which changes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _table import format_table  # benchmarks/_table.py, beside this script

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def _latent(n: int, dim: int, seed: int, spread: float):
    from coem.simulate import simulate_latent

    return simulate_latent(n, dim=dim, n_states=10, seed=seed, spread=spread)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _scanpy_scipy_shim() -> None:
    """scanpy 1.11.5 calls ``getnnz`` on the csr_array pynndescent's path builds; scipy 1.17
    dropped that method from sparse arrays. Add it back (same result as ``_getnnz``)."""
    import scipy.sparse as sp

    if not hasattr(sp.csr_array, "getnnz"):
        sp.csr_array.getnnz = lambda self, axis=None: self._getnnz(axis=axis)


def child_metacells(args) -> dict:
    """COEM's metacell step on z (cells per metacell 75, k 15, one thread)."""
    import numpy as np
    import pandas as pd

    from coem.metacells import SpectralMetacells

    z, states = _latent(args.n, args.dim, args.seed, args.spread)
    rss_z = _peak_rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    model = SpectralMetacells(cells_per_metacell=75, k=15, random_state=args.seed, neighbours=args.neighbours).fit(z)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if args.labels:
        np.save(args.labels, model.labels_)
    fractions = pd.crosstab(model.labels_, states).max(axis=1) / np.bincount(model.labels_)
    return {"method": "coem", "n_cells": args.n, "strategy": model.strategy_, "neighbours": args.neighbours,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": _peak_rss_mb(), "rss_with_z_mb": rss_z,
            "n_metacells": model.summary_["n_metacells"], "min_size": model.summary_["min_size"],
            "max_size": model.summary_["max_size"], "n_parts": getattr(model, "n_parts_", 1),
            "n_moved": getattr(model, "n_moved_", 0), "stages_s": model.timings_,
            "purity_states": round(float(fractions.mean()), 4)}


def child_seacells(args) -> dict:
    """SEACells (its own kernel, archetypal analysis 10-50 iterations) on the same z."""
    import numpy as np

    _scanpy_scipy_shim()
    from coem.baselines import run_seacells, warm_up_seacells

    z, _ = _latent(args.n, args.dim, args.seed, args.spread)
    warm = warm_up_seacells(args.seed)  # scanpy's numba compilation, once per process, not billed
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_seacells(z, n_metacells=max(2, round(args.n / 75)), seed=args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if args.labels:
        np.save(args.labels, result.labels)
    return {"method": "seacells", "n_cells": args.n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mb": _peak_rss_mb(), "warm_up_s": round(warm, 1), "kernel_s": round(result.kernel_seconds, 1),
            "fit_s": round(result.fit_seconds, 1), "n_iter": result.n_iter, "converged": result.converged,
            "n_metacells_returned": result.n_returned}


def child_recall(args) -> dict:
    """pynndescent (as registered in coem.graph) against exact kNN, k = 15."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from coem.graph import pynndescent_knn

    z, _ = _latent(args.n, args.dim, args.seed, args.spread)
    start = time.perf_counter()
    pynndescent_knn(z[:2000], 15, args.seed)  # numba compilation
    compile_s = time.perf_counter() - start
    wall, cpu = time.perf_counter(), time.process_time()
    approx, _ = pynndescent_knn(z, 15, args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    again, _ = pynndescent_knn(z, 15, args.seed)
    start = time.perf_counter()
    exact = NearestNeighbors(n_neighbors=15, algorithm="brute").fit(z).kneighbors(z, return_distance=False)
    exact_s = time.perf_counter() - start
    hits = [np.intersect1d(a, e).size for a, e in zip(approx, exact)]
    return {"n_cells": args.n, "k": 15, "recall": round(float(np.sum(hits)) / exact.size, 4),
            "deterministic": bool(np.array_equal(approx, again)), "ann_wall_s": round(wall, 1),
            "ann_cpu_s": round(cpu, 1), "compile_s": round(compile_s, 1), "exact_brute_wall_s": round(exact_s, 1)}


CHILDREN = {"metacells": child_metacells, "seacells": child_seacells, "recall": child_recall}


def run_child(kind: str, n: int, args, cap: float | None = None, **extra) -> dict:
    """One measurement in a fresh interpreter; {'did_not_finish_s': cap} when it runs past cap."""
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--dim", str(args.dim), "--seed", str(args.seed),
           "--spread", str(args.spread)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"[bench_scale] {kind} at {n:,} cells ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=cap, check=False)
    except subprocess.TimeoutExpired:
        return {"method": kind, "n_cells": n, "did_not_finish_s": cap}
    if done.returncode != 0:
        raise RuntimeError(f"{kind} at {n} cells failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench_scale]   {row.get('wall_s', row.get('ann_wall_s'))} s", file=sys.stderr, flush=True)
    return row


def quality(labels: dict, n: int, args) -> dict:
    """Purity (simulated states), compactness and separation (diffusion components of z)."""
    import numpy as np

    from coem import metrics

    z, states = _latent(n, args.dim, args.seed, args.spread)
    components = metrics.diffusion_components(z, seed=args.seed)
    out = {}
    for method, path in labels.items():
        ids = np.load(path).astype(str)
        _, summary = metrics.evaluate_metacells(ids, {"z": components}, states)
        out[method] = {"purity": round(summary["purity"]["mean"], 4),
                       "compactness": float(f"{summary['compactness_z']['mean']:.4g}"),
                       "separation": float(f"{summary['separation_z']['mean']:.4g}"),
                       "n_metacells": summary["sizes"]["n_metacells"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--design-cells", type=int, nargs="*", default=[100_000],
                        help="sizes at which neighbours='global' (pynndescent) is run beside the default")
    parser.add_argument("--seacells-cells", type=int, nargs="*", default=[10_000])
    parser.add_argument("--seacells-cap", type=float, default=3600.0,
                        help="seconds before SEACells is stopped at the first --seacells-cells size")
    parser.add_argument("--seacells-big-cap", type=float, default=600.0,
                        help="seconds before SEACells is stopped at the other --seacells-cells sizes")
    parser.add_argument("--recall-cells", type=int, default=100_000, help="0 skips the recall measurement")
    parser.add_argument("--dim", type=int, default=30)
    parser.add_argument("--out", default="bench_scale.json", help="file name under benchmarks/out/")
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--labels", default="", help=argparse.SUPPRESS)
    parser.add_argument("--neighbours", default="parts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    smallest = min(args.cells)
    coem_rows, design_rows, seacells_rows = [], [], []
    for n in args.cells:
        extra = {"labels": tmp / f"coem_{n}.npy"} if n == smallest else {}
        coem_rows.append(run_child("metacells", n, args, **extra))
    for n in args.seacells_cells[:1]:
        extra = {"labels": tmp / f"seacells_{n}.npy"} if n == smallest else {}
        seacells_rows.append(run_child("seacells", n, args, cap=args.seacells_cap, **extra))
    for n in args.design_cells:
        design_rows.append(run_child("metacells", n, args, neighbours="global"))
    recall = run_child("recall", args.recall_cells, args) if args.recall_cells else None
    for n in args.seacells_cells[1:]:
        seacells_rows.append(run_child("seacells", n, args, cap=args.seacells_big_cap))

    labels = {m: tmp / f"{m}_{smallest}.npy" for m in ("coem", "seacells")}
    qual = quality({m: p for m, p in labels.items() if p.exists()}, smallest, args)
    ratios = []
    for sea in seacells_rows:
        ours = next((r for r in coem_rows if r["n_cells"] == sea["n_cells"]), None)
        if ours is None:
            continue
        if "did_not_finish_s" in sea:
            ratios.append({"n_cells": sea["n_cells"], "seacells": f"did not finish in {sea['did_not_finish_s']:.0f} s",
                           "wall_ratio": f">{sea['did_not_finish_s'] / ours['wall_s']:.0f}"})
        else:
            ratios.append({"n_cells": sea["n_cells"], "wall_ratio": round(sea["wall_s"] / ours["wall_s"], 1),
                           "cpu_ratio": round(sea["cpu_s"] / ours["cpu_s"], 1),
                           "rss_ratio": round(sea["peak_rss_mb"] / ours["peak_rss_mb"], 1)})

    print("\nCOEM metacell step (z given)")
    print(format_table(coem_rows + design_rows, ("n_cells", "strategy", "neighbours", "n_parts", "n_metacells", "wall_s",
                                           "cpu_s", "peak_rss_mb", "purity_states", "n_moved")))
    print("\nSEACells on the same z")
    print(format_table(seacells_rows, ("n_cells", "wall_s", "cpu_s", "peak_rss_mb", "kernel_s", "fit_s", "n_iter",
                                 "n_metacells_returned", "did_not_finish_s")))
    print(f"\nQuality at {smallest:,} cells (compactness/separation on diffusion components of z)")
    print(format_table([{"method": m, **v} for m, v in qual.items()],
                 ("method", "n_metacells", "purity", "compactness", "separation")))
    print("\nRatios SEACells / COEM")
    print(format_table(ratios, ("n_cells", "wall_ratio", "cpu_ratio", "rss_ratio", "seacells")))
    if recall:
        print("\npynndescent recall of the exact 15-NN")
        print(format_table([recall], tuple(recall)))

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_at_end": os.getloadavg()[0], "total_s": round(time.perf_counter() - started, 1),
            "dim": args.dim, "spread": args.spread, "seed": args.seed}
    path = OUT / args.out
    path.write_text(json.dumps({"meta": meta, "coem": coem_rows, "designs": design_rows, "seacells": seacells_rows,
                                "quality": qual, "ratios": ratios, "recall": recall}, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
