#!/usr/bin/env python3
"""Time peak-to-gene on simulated data: metacell level (200 / 1,000 / 5,000) and single cells.

The whole step as the pipeline runs it: candidate pairs, normalisation, r, the matched
background (strata, pools, genes x pool products), the pooled null and the weighted FDR.

One simulation of 10,000 cells (2,000 genes x 20,000 peaks, default depths) feeds every run:
the single-cell run uses it as is; each metacell is the sum of 75 cells drawn at random from
one simulated state (cells are reused across metacells, so 5,000 metacells need no 375,000-cell
simulation; depth and sparsity match real ~75-cell metacells). Prints a table and writes
benchmarks/out/bench_peak2gene.json (git-ignored).

    python benchmarks/bench_peak2gene.py [--sizes 200 1000 5000] [--sim-cells 10000] [--n-background 200]

The issue-13 target (1,323 metacells, the count at 10^5 cells, and ~1 M candidate pairs within
2 minutes on 2 cores) uses a 10x-sized feature set and an 800-kb window (Signac uses 500 kb), because the
simulator spaces genes ~150 kb apart (a 100-kb window gives ~4 peaks per gene there):

    python benchmarks/bench_peak2gene.py --sizes 1323 --sim-cells 2000 --genes 36601 --peaks 120000 \
        --window 800000 --no-cells --out benchmarks/out/bench_peak2gene_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coem.peak2gene import peak_to_gene  # noqa: E402
from coem.provenance import software_versions  # noqa: E402
from coem.simulate import simulate_multiome  # noqa: E402

CELLS_PER_METACELL = 75


def _rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _cpu_s() -> float:
    """CPU seconds of this process (all threads): what the step costs, whatever else runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def simulate(args):
    start = time.perf_counter()
    sim = simulate_multiome(n_cells=args.sim_cells, n_genes=args.genes, n_peaks=args.peaks, seed=args.seed)
    return sim, time.perf_counter() - start


def state_metacells(sim, n_metacells: int, seed: int):
    """Sum 75 random cells of one state per metacell (indicator matrix product, sparse)."""
    import anndata as ad
    import mudata
    from scipy import sparse

    rng = np.random.default_rng(seed)
    states = sim.mdata.obs["state"].astype(str).to_numpy()
    names, inverse = np.unique(states, return_inverse=True)
    which = rng.choice(len(names), size=n_metacells, p=np.bincount(inverse) / len(states))
    members = [rng.choice(np.flatnonzero(inverse == s), CELLS_PER_METACELL, replace=True) for s in which]
    rows = np.repeat(np.arange(n_metacells), CELLS_PER_METACELL)
    ind = sparse.csr_matrix((np.ones(rows.size), (rows, np.concatenate(members))),
                            shape=(n_metacells, len(states)))
    mods = {m: ad.AnnData(sparse.csr_matrix(ind @ sim.mdata.mod[m].X, dtype=np.float32),
                          var=sim.mdata.mod[m].var.copy()) for m in ("rna", "atac")}
    for mod in mods.values():
        mod.obs_names = [f"MC{i + 1:05d}" for i in range(n_metacells)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.MuData(mods)


def run_one(label: str, mdata, args) -> dict:
    atac = mdata.mod["atac"].X
    cpu = _cpu_s()
    start = time.perf_counter()
    links, summary = peak_to_gene(mdata, window=args.window, method=args.method, n_background=args.n_background,
                                  seed=args.seed)
    seconds = time.perf_counter() - start
    cpu = _cpu_s() - cpu
    return {
        "level": label, "n_obs": mdata.mod["rna"].n_obs, "genes": args.genes, "peaks": args.peaks,
        "atac_density": round(atac.nnz / (atac.shape[0] * atac.shape[1]), 4),
        "pairs": summary["n_pairs"], "candidate_pairs": summary["n_candidate_pairs"], "seconds": round(seconds, 2),
        "significant": summary["n_significant"], "strata": summary["n_strata"], "cpu_s": round(cpu, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "pairs_per_s": round(summary["n_pairs"] / seconds), "fraction_negative": round(summary["fraction_negative"], 4),
        "peak_rss_gb": round(_rss_gb(), 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000], help="metacell counts")
    parser.add_argument("--sim-cells", type=int, default=10_000, help="cells simulated (and the single-cell run)")
    parser.add_argument("--no-cells", action="store_true", help="skip the single-cell run")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--peaks", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--method", default="pearson")
    parser.add_argument("--n-background", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bench_peak2gene.json"))
    args = parser.parse_args(argv)

    sim, sim_s = simulate(args)
    print(f"simulated {args.sim_cells} cells x ({args.genes} genes + {args.peaks} peaks) in {sim_s:.1f} s, "
          f"peak RSS {_rss_gb():.2f} GB")
    header = (f"{'level':<13}{'obs':>7}{'pairs':>9}{'density':>9}{'strata':>7}{'signif.':>9}{'seconds':>9}{'CPU s':>8}"
              f"{'pairs/s':>10}{'neg':>7}{'RSS GB':>8}")
    print(header)
    rows = []
    runs = [("metacells", n) for n in args.sizes] + ([] if args.no_cells else [("single cells", None)])
    for label, n in runs:
        mdata = sim.mdata if n is None else state_metacells(sim, n, args.seed)
        row = run_one(label, mdata, args)
        del mdata
        rows.append(row)
        print(f"{row['level']:<13}{row['n_obs']:>7}{row['pairs']:>9}{row['atac_density']:>9.3f}"
              f"{row['strata']:>7}{row['significant']:>9}{row['seconds']:>9.2f}{row['cpu_s']:>8.1f}{row['pairs_per_s']:>10}{row['fraction_negative']:>7.3f}"
              f"{row['peak_rss_gb']:>8.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "peak2gene", "params": vars(args), "simulate_s": round(sim_s, 2),
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                               "rows": rows,
                               "versions": software_versions()}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
