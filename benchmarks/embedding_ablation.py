#!/usr/bin/env python3
"""Which embedding gives the purest metacells? The COEM joint VAE vs single-modality embeddings.

Metacells are built the same way (SEACells kernel + spectral clustering, n = round(cells / 75))
on four embeddings of the same QC'd cells:

- ``vae``      : the COEM joint VAE's z (coem_train_vae.py, the pipeline's default);
- ``pca_lsi``  : RNA PCA and ATAC LSI concatenated (the fast joint option);
- ``rna_only`` : RNA PCA alone (what SeaC-RNA sees);
- ``atac_only``: ATAC LSI alone (what SeaC-ATAC sees).

Purity is measured against the labels (sci-CAR: dexamethasone time; simulated: the known
state). Prints a table and writes ``benchmarks/out/embedding_ablation_<dataset>.json``.

    python benchmarks/embedding_ablation.py --dataset scicar      # ../shared/data, real
    python benchmarks/embedding_ablation.py --dataset simulated   # coem.simulate, known states
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore", FutureWarning)

REPO = Path(__file__).resolve().parents[1]
SCICAR = REPO / ".." / "shared" / "data" / "scicar_a549" / "scicar_a549.h5mu"
# sci-CAR is far sparser than 10x Multiome: the thresholds of scripts/run_scicar.sh.
SCICAR_QC = dict(min_rna_counts=200, min_genes=100, min_atac_counts=100, min_peaks=100)


def load_scicar():
    from coem.readers import read_h5mu

    mdata = read_h5mu(SCICAR, sample="scicar_a549")
    mdata.obs["label"] = mdata.obs["dex_time_h"].astype(str)
    return mdata, SCICAR_QC


def load_simulated(n_cells: int, seed: int):
    from coem.simulate import simulate_multiome

    sim = simulate_multiome(n_cells=n_cells, n_genes=1000, n_peaks=10000, seed=seed)
    sim.mdata.obs["label"] = sim.mdata.obs["state"].astype(str)
    return sim.mdata, {}


def vae_embedding(qc_path: Path, workdir: Path, epochs: int, seed: int, threads: int,
                  extra: list[str] = ()) -> tuple[np.ndarray, dict]:
    """Train with the pipeline's own command, so this measures exactly what the pipeline runs."""
    import anndata

    from coem.cli.train_vae import main as train_main

    start = time.perf_counter()
    with contextlib.chdir(workdir):  # the step writes versions.yml into the working directory
        train_main(["--sample", "ablation", "--input", str(qc_path), "--prefix", str(workdir / "ablation"),
                    "--epochs", str(epochs), "--seed", str(seed), "--device", "cpu", "--threads", str(threads),
                    *extra])
    seconds = time.perf_counter() - start
    embedded = anndata.read_h5ad(workdir / "ablation.embedding.h5ad")  # the step writes z, not the counts
    record = json.loads(embedded.uns["coem"]["embed"])
    return np.asarray(embedded.obsm["X_embedding"]), {
        "seconds": round(seconds, 1), "epochs_max": epochs, "args": " ".join(extra),
        "epochs_run": record["epochs_run"], "best_epoch": record["best_epoch"],
        "n_peaks_used": record["n_peaks_used"], "seconds_per_epoch": record["seconds_per_epoch"]}


def metacell_purity(X: np.ndarray, labels: np.ndarray, n_metacells: int, seed: int, n_seeds: int = 1) -> dict:
    """Mean metacell purity; with ``n_seeds`` > 1 also its mean over that many seeds of the
    metacell step (k-means restarts and eigensolver start), the embedding held fixed."""
    from coem.metacells import SpectralMetacells
    from coem.metrics import purity

    means = []
    for s in range(seed, seed + n_seeds):
        start = time.perf_counter()
        model = SpectralMetacells(n_metacells=n_metacells, random_state=s).fit(X)
        seconds = time.perf_counter() - start
        table = purity(labels, np.asarray(model.labels_))
        means.append(float(table["purity"].mean()))
        if s == seed:
            row = {"purity_mean": means[0], "purity_sd": float(table["purity"].std(ddof=1)),
                   "n_metacells": int(model.n_metacells_), "metacell_seconds": round(seconds, 2)}
    row.update({"purity_over_seeds": float(np.mean(means)), "purity_seeds": means})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("scicar", "simulated"), default="scicar")
    parser.add_argument("--n-cells", type=int, default=3000, help="simulated cells")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--cells-per-metacell", type=int, default=75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae", action="append", metavar="NAME=ARGS", default=None,
                        help="a VAE variant: a name and extra coem_train_vae.py arguments, e.g. "
                             "'norm=--input-transform log1p_norm' (repeatable; default: one 'vae' with the defaults)")
    parser.add_argument("--skip-baselines", action="store_true", help="only the VAE variants")
    parser.add_argument("--metacell-seeds", type=int, default=1,
                        help="also average purity over this many seeds of the metacell step")
    parser.add_argument("--out", default=None, help="file name under benchmarks/out/")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coem.embed import pca_lsi_embedding
    from coem.qc import QCThresholds, apply_qc

    if args.dataset == "scicar":
        if not SCICAR.exists():
            raise SystemExit(f"sci-CAR data not found at {SCICAR.resolve()}")
        mdata, qc = load_scicar()
    else:
        mdata, qc = load_simulated(args.n_cells, args.seed)
    filtered, report = apply_qc(mdata, QCThresholds(**qc), sample=args.dataset)
    labels = filtered.obs["label"].astype(str).to_numpy()
    n_metacells = max(1, round(filtered.n_obs / args.cells_per_metacell))
    print(f"{args.dataset}: {report.cells_before} cells -> {filtered.n_obs} after QC; {n_metacells} metacells")

    embeddings, vae_infos = {}, {}
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in (args.vae or ["vae="])]
    with tempfile.TemporaryDirectory() as tmp:
        qc_path = Path(tmp) / "qc.h5mu"
        filtered.write(qc_path)
        for name, extra in variants:
            print(f"training VAE '{name}' ({extra or 'defaults'}) ...", flush=True)
            embeddings[name], vae_infos[name] = vae_embedding(qc_path, Path(tmp), args.epochs, args.seed,
                                                              args.threads, extra.split())
    if not args.skip_baselines:
        joint, info = pca_lsi_embedding(filtered, seed=args.seed)
        embeddings.update({"pca_lsi": joint, "rna_only": info["X_pca"], "atac_only": info["X_lsi"]})

    rows = {}
    for name, X in embeddings.items():
        rows[name] = metacell_purity(np.asarray(X, dtype=np.float32), labels, n_metacells, args.seed,
                                     args.metacell_seeds)
        rows[name]["dims"] = int(np.asarray(X).shape[1])
        if name in vae_infos:
            rows[name].update({"train_seconds": vae_infos[name]["seconds"], "vae": vae_infos[name]})

    print(f"\n{'embedding':<18} {'dims':>5} {'metacells':>9} {'purity':>14} {'over seeds':>10} {'spectral s':>10}")
    for name, row in rows.items():
        print(f"{name:<18} {row['dims']:>5} {row['n_metacells']:>9} {row['purity_mean']:>7.3f} ± {row['purity_sd']:.3f}"
              f" {row['purity_over_seeds']:>10.3f} {row['metacell_seconds']:>10}")
    for name, info in vae_infos.items():
        print(f"VAE '{name}' ({info['args'] or 'defaults'}): {info['epochs_run']} epochs (best {info['best_epoch']}), "
              f"{info['n_peaks_used']} peaks, {info['seconds']} s on CPU ({args.threads} threads)")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = {"dataset": args.dataset, "cells_after_qc": int(filtered.n_obs), "n_metacells": n_metacells,
              "seed": args.seed, "epochs_max": args.epochs, "metacell_seeds": args.metacell_seeds, "rows": rows}
    (out / (args.out or f"embedding_ablation_{args.dataset}.json")).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
