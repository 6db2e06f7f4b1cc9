#!/usr/bin/env python3
"""Peak-to-gene links against truth (issue 13): planted links in simulated data, and literature
glucocorticoid-induced genes in sci-CAR A549.

Simulated data (``coem.simulate``; ``--sims``, default two simulator seeds):

- ``sim_a``: seed 0, 3,000 cells x 1,000 genes x 10,000 peaks (the size compare_methods uses);
- ``sim_10x``: seed 1, a 10x-sized feature set (36,601 genes x 120,000 peaks), 3,000 cells.

Methods, all at round(cells after QC / 75) metacells:

- ``COEM``: what the pipeline runs by default: default QC -> joint VAE z (``compare_methods.vae_z``:
  default architecture and feature selection, 2,000 genes and the 10,000 most often open peaks among
  those open in <= 10% of cells; CPU, seed 0, ``--vae-epochs`` epochs, not the pipeline's 100) ->
  spectral metacells (``coem.metacells.SpectralMetacells``, defaults) -> summed counts ->
  ``coem.peak2gene.peak_to_gene`` (defaults: Pearson, TSS +-100 kb, matched background);
- ``SeaC-RNA`` / ``SeaC-ATAC``: SEACells 0.3.3 (``coem.baselines.run_seacells``) on the 50-PC RNA PCA /
  the 50-component ATAC LSI, then SEACells' own ``prepare_multiome_anndata`` +
  ``get_gene_peak_correlations`` (Spearman, background peaks in the same GC bin x accessibility bin,
  one-sided normal p). Simulated peaks have no sequence and sci-CAR's genome is not at hand, so every
  peak gets GC = 0.5: SEACells' background is then matched on accessibility (total counts) only;
- cross rows that separate metacells from statistics: ``COEM p2g on SeaC-RNA`` (COEM's statistics on
  SEACells' metacells) and ``SEACells p2g on COEM`` (SEACells' statistics on COEM's metacells);
- ``single cells``: ``peak_to_gene`` on the cells themselves (``--single-cell-max`` cells at most).

Every method is scored on the SAME gene-peak pairs: ``coem.peak2gene.candidate_pairs`` (peak centre
within TSS +-100 kb). SEACells is given each gene as the 1-bp range at its TSS with ``span`` 100 kb,
so its candidates (peaks overlapping TSS +-100 kb) contain every common pair; pairs it did not test
(a peak closed in every metacell, which its ``prepare_multiome_anndata`` drops) rank last and are
never called. Ranking: COEM by ``z``; SEACells by its p-value, ties (p = 0 beyond ~8 sd) broken by its
correlation. FDR: Benjamini-Hochberg over the scored pairs for every method (SEACells gives nominal
p only; for COEM on all genes this is exactly the pipeline's ``fdr``). Called at level q: fdr <= q and
r > 0. Scores: ``coem.link_truth`` (AUPRC on all planted links and on the recoverable ones only: links
of housekeeping genes, whose expression is constant, cannot be recovered by any correlation method).
When ``--max-genes`` is below the number of genes (``sim_10x``: SEACells' per-pair Python loop is
too slow for all 36,601 genes), all methods are scored on the pairs of one seeded uniform random gene
sample (COEM and single cells still run on all genes, as the pipeline does).

sci-CAR A549 (``scicar``): QC thresholds of docs/results.md, the same three metacell methods at 30
metacells, COEM's statistics on all three, SEACells' statistics on SEACells' metacells. Per method:
share of the literature's glucocorticoid-induced genes (``CONTROL_GENES``) with a significant positive
cis link at FDR 0.05 and 0.1, the rank of each gene's best link among all tested pairs, the median r of
cis pairs minus the median background mean r (``bg_mean``), FKBP5's best cis link.

    python benchmarks/validate_links.py [--datasets sim_a sim_10x scicar] [--vae-epochs 30]
        [--max-genes 2000] [--out benchmarks/out/validate_links.json]

Prints markdown tables; writes JSON (with precision-recall curve points) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_methods as cm  # noqa: E402

from coem import baselines, embed, link_truth, peak2gene  # noqa: E402
from coem.aggregate import aggregate_metacells  # noqa: E402
from coem.metacells import SpectralMetacells  # noqa: E402
from coem.provenance import software_versions  # noqa: E402

CELLS_PER_METACELL = 75
WINDOW = 100_000
QS = (0.01, 0.05, 0.1, 0.2)
SIMS = {  # name: (cells, genes, peaks, simulator seed)
    "sim_a": (3000, 1000, 10000, 0),
    "sim_10x": (3000, 36601, 120000, 1),
    "sim_tiny": (600, 300, 3000, 5),  # smoke test only (with --vae-epochs 2)
}
DEFAULT_DATASETS = ["sim_a", "sim_10x", "scicar"]

# Glucocorticoid (dexamethasone)-induced genes in A549 cells, as reported in the literature, restricted to
# genes in sci-CAR's 1,185 (others, e.g. ZBTB16 and KLF9, are not in the data). Sources (full citations in
# docs/results.md): R09 = Reddy et al. 2009 Genome Res 19:2163; M18 = McDowell et al. 2018 Genome Res
# 28:1272; C18 = Cao et al. 2018 Science 361:1380 (sci-CAR); S06 = Smoak & Cidlowski 2006 Mol Cell Biol
# 26:9126. Attributions were made from the papers as remembered, without access to their supplementary
# tables in this session; the script also reports each gene's measured induction in sci-CAR itself.
CONTROL_GENES: dict[str, str] = {
    "FKBP5": "R09, M18, C18",
    "PER1": "R09, M18",
    "TSC22D3": "R09, M18",
    "DUSP1": "R09",
    "ZFP36": "S06",
    "ERRFI1": "M18",
    "SGK1": "R09",
    "CEBPD": "R09",
    "NFKBIA": "R09",
    "ANGPTL4": "M18",
    "CIDEC": "M18",
    "BIRC3": "R09",
    "MT2A": "R09",
    "DDIT4": "M18",
    "IRS2": "M18",
    "PDK4": "M18",
    "TFCP2L1": "M18",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)


# --------------------------------------------------------------------------- peak-to-gene, both flavours


def aggregate(mdata, labels):
    key = "_validate_metacell"
    mdata.obs[key] = np.asarray(labels).astype(str)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return aggregate_metacells(mdata, key=key, label_key="__none__")
    finally:
        del mdata.obs[key]


def coem_links(mdata_obs, seed: int) -> tuple[pd.DataFrame, dict]:
    """``peak_to_gene`` with its defaults; with the pre-issue-13 API (no ``z``) z comes from its
    per-gene null (``(r - null_mean) / null_sd``)."""
    params = inspect.signature(peak2gene.peak_to_gene).parameters
    if "n_background" in params:
        links, summary = peak2gene.peak_to_gene(mdata_obs, window=WINDOW, method="pearson", anchor="tss", seed=seed)
        summary["api"] = "matched background (issue 13)"
    else:
        links, summary = peak2gene.peak_to_gene(mdata_obs, window=WINDOW, method="pearson", anchor="tss",
                                                n_null=200, seed=seed)
        links["z"] = (links["r"] - links["null_mean"]) / links["null_sd"]
        links["bg_mean"] = links["null_mean"]
        summary["api"] = "per-gene null from other chromosomes (pre issue 13)"
    return links, summary


def _seacells_inputs(mdata, labels, svd):
    """SEACells' own ``prepare_multiome_anndata`` on one hard assignment: normalised metacell
    AnnDatas, with GC_bin/counts_bin per peak (GC = 0.5 for every peak, see the module docstring)."""
    import anndata as ad
    import scipy.sparse as sp
    from SEACells import genescores

    rna, atac = mdata.mod["rna"][mdata.obs_names], mdata.mod["atac"][mdata.obs_names]
    obs = pd.DataFrame({"SEACell": np.asarray(labels).astype(str)}, index=mdata.obs_names.astype(str))
    atac_ad = ad.AnnData(X=sp.csr_matrix(atac.X, dtype=np.float32), obs=obs.copy(),
                         var=pd.DataFrame({"GC": 0.5}, index=atac.var_names.astype(str)))
    atac_ad.obsm["X_svd"] = np.asarray(svd, dtype=np.float32)
    rna_ad = ad.AnnData(X=sp.csr_matrix(rna.X, dtype=np.float32), obs=obs.copy(),
                        var=pd.DataFrame(index=rna.var_names.astype(str)))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return genescores.prepare_multiome_anndata(atac_ad, rna_ad, SEACells_label="SEACell")


def seacells_own_links(mdata, atac_meta, rna_meta, genes, seed: int) -> pd.DataFrame:
    """SEACells' own ``get_gene_peak_correlations`` (its per-pair Python loop: about 0.5-1 s per gene
    on this machine) for ``genes``; each gene is the 1-bp range at its TSS, span 100 kb. Returns gene,
    peak, r (its Spearman correlation), p (its one-sided background p)."""
    import pyranges as pr
    from SEACells import genescores

    var = mdata.mod["rna"].var.loc[list(genes)]
    tss = pd.to_numeric(var["tss"], errors="coerce").to_numpy()
    ok = np.isfinite(tss) & var["chrom"].notna().to_numpy()
    ranges = pr.PyRanges(pd.DataFrame({"Chromosome": var["chrom"].astype(str).to_numpy()[ok],
                                       "Start": tss[ok].astype(np.int64) - 1, "End": tss[ok].astype(np.int64),
                                       "gene_name": np.asarray(var.index)[ok]}))
    with baselines._seeded_global_numpy(seed), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = genescores.get_gene_peak_correlations(atac_meta, rna_meta, path_to_gtf=None, gene_ranges=ranges,
                                                       span=WINDOW, n_jobs=1, gene_set=list(np.asarray(var.index)[ok]))
    frames = [df.assign(gene=gene).rename_axis("peak").reset_index()
              for gene, df in result.items() if isinstance(df, pd.DataFrame)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["peak", "cor", "pval", "gene"])
    return out.rename(columns={"cor": "r", "pval": "p"})[["gene", "peak", "r", "p"]]


def _dense(X) -> np.ndarray:
    import scipy.sparse as sp

    return np.asarray(X.todense() if sp.issparse(X) else X, dtype=np.float64)


def _unit_ranks(X: np.ndarray) -> np.ndarray:
    """Columns ranked (average ties, as scipy's rankdata), centred, scaled to unit norm."""
    from scipy.stats import rankdata

    R = rankdata(X, axis=0, method="average")
    R -= R.mean(axis=0, keepdims=True)
    norm = np.sqrt((R * R).sum(axis=0, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return R / np.where(norm > 0, norm, np.nan)


def seacells_statistics(atac_meta, rna_meta, pairs: pd.DataFrame, seed: int, n_rand: int = 100,
                        chunk: int = 2000) -> pd.DataFrame:
    """SEACells' gene-peak statistics, vectorised, on given pairs (same definitions as its
    ``_peaks_correlations_per_gene``): Spearman correlation of the normalised metacell values
    (``1 - correlation distance`` of ranks); per tested peak ``n_rand`` random peaks of the same
    GC bin and counts bin (without replacement, with replacement when the bin is smaller), their
    correlations' mean m and sd v (ddof 0); p = 1 - Phi((r - m) / v). Only the random draws differ
    (a seeded ``numpy.random.Generator`` instead of numpy's global state); ``validate`` in the JSON
    compares this with SEACells' own loop on a sample of genes."""
    from scipy.stats import norm

    peaks = pd.Index(atac_meta.var_names.astype(str))
    genes = pd.Index(rna_meta.var_names.astype(str))
    p_idx = peaks.get_indexer(pairs["peak"].astype(str))
    g_idx = genes.get_indexer(pairs["gene"].astype(str))
    ok = np.flatnonzero((p_idx >= 0) & (g_idx >= 0))
    A = _unit_ranks(_dense(atac_meta.X))
    used_genes = np.unique(g_idx[ok])
    G = np.full((A.shape[0], len(genes)), np.nan)
    G[:, used_genes] = _unit_ranks(_dense(rna_meta.X[:, used_genes]))
    r = np.full(len(pairs), np.nan)
    p = np.full(len(pairs), np.nan)
    r[ok] = np.einsum("ij,ij->j", A[:, p_idx[ok]], G[:, g_idx[ok]])
    strata = pd.Series(np.arange(len(peaks))).groupby(
        [atac_meta.var["GC_bin"].to_numpy(), atac_meta.var["counts_bin"].to_numpy()]).apply(np.asarray)
    stratum_of = {}
    for key, members in strata.items():
        for i in members:
            stratum_of[i] = members
    rng = np.random.default_rng(seed)
    draws = np.empty((len(ok), n_rand), dtype=np.int64)
    for row, i in enumerate(p_idx[ok]):
        members = stratum_of[i]
        draws[row] = rng.choice(members, n_rand, replace=members.size < n_rand)
    for start in range(0, len(ok), chunk):
        rows = ok[start:start + chunk]
        rand = np.einsum("ipk,ik->ip", A[:, draws[start:start + chunk]].transpose(1, 2, 0),
                         G[:, g_idx[rows]].T)
        m, v = rand.mean(axis=1), rand.std(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            p[rows] = norm.sf(r[rows], m, v)
    return pd.DataFrame({"gene": pairs["gene"].to_numpy(), "peak": pairs["peak"].to_numpy(), "r": r, "p": p})


def seacells_links(mdata, labels, svd, pairs, seed: int, validate_genes=()) -> tuple[pd.DataFrame, dict]:
    """SEACells' p2g on the common pairs (vectorised, see ``seacells_statistics``), and the agreement
    with SEACells' own loop on ``validate_genes``."""
    atac_meta, rna_meta = _seacells_inputs(mdata, labels, svd)
    links = seacells_statistics(atac_meta, rna_meta, pairs, seed)
    check = {}
    if len(validate_genes):
        start = time.perf_counter()
        own = seacells_own_links(mdata, atac_meta, rna_meta, validate_genes, seed)
        both = own.merge(links, on=["gene", "peak"], suffixes=("_own", "_ours"))
        both = both[np.isfinite(both["r_ours"]) & np.isfinite(both["p_own"])]
        check = {"n_genes": int(len(validate_genes)), "n_pairs": int(len(both)),
                 "seconds_own": round(time.perf_counter() - start, 1),
                 "max_abs_diff_r": float((both["r_own"] - both["r_ours"]).abs().max()) if len(both) else None,
                 "pearson_p": float(np.corrcoef(both["p_own"], both["p_ours"])[0, 1]) if len(both) > 2 else None,
                 "median_abs_diff_p": float((both["p_own"] - both["p_ours"]).abs().median()) if len(both) else None,
                 "agree_p_below_0.1": float(((both["p_own"] < 0.1) == (both["p_ours"] < 0.1)).mean())
                 if len(both) else None}
    return links, check


def _order_score(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A score that orders pairs by p ascending, ties broken by r descending (NaN where either is NaN)."""
    score = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p) & np.isfinite(r))
    order = ok[np.lexsort((-r[ok], p[ok]))]
    ps, rs = p[order], r[order]
    new = np.r_[True, (ps[1:] != ps[:-1]) | (rs[1:] != rs[:-1])]
    score[order] = -np.cumsum(new).astype(float)
    return score


def on_pairs(pairs: pd.DataFrame, links: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One method's links on the common pairs: r, z (the ranking score), p, fdr, bg_mean, and
    ``p_over_w``: the order of p / weight with COEM's distance prior (``peak2gene.distance_weights``,
    10 kb), the order COEM's weighted FDR uses; computed for SEACells too, to separate the prior.

    COEM keeps the pipeline's ``fdr`` (weighted BH over every pair it tested; pairs it skipped as
    constant are NaN here). SEACells gives nominal p only: its ``fdr`` is BH over the common pairs
    it tested, and its score orders by p, ties (p = 0 beyond ~8 sd) broken by r."""
    cols = ["r", "p"] + (["z", "fdr", "bg_mean", "weight"] if kind == "coem" else [])
    cols = [c for c in cols if c in links.columns]
    out = pairs[["gene", "peak", "distance"]].merge(links[["gene", "peak"] + cols], on=["gene", "peak"], how="left")
    r, p = out["r"].to_numpy(float), out["p"].to_numpy(float)
    if "weight" in out.columns:
        weight = out["weight"].to_numpy(float)
    else:
        weight = peak2gene.distance_weights(out["distance"].to_numpy(float), peak2gene.DISTANCE_SCALE)
    out["p_over_w"] = _order_score(p / weight, r)
    if kind == "seacells":
        out["z"] = _order_score(p, r)
        out["bg_mean"] = np.nan
        out["fdr"] = peak2gene.bh_fdr(p)
    return out


# --------------------------------------------------------------------------- one dataset


def embeddings(name, mdata, args, timer):
    with timer("rna_pca_atac_lsi"):
        pcs, _ = embed.rna_pca(mdata.mod["rna"][mdata.obs_names].X, n_pcs=50)
        lsi, _ = embed.atac_lsi(mdata.mod["atac"][mdata.obs_names].X, n_lsi=50, seed=args.seed)
    epochs = dict(item.split("=") for item in args.vae_epochs_for).get(name, args.vae_epochs)
    cache = Path(args.out).parent / f"validate_links_vae_{name}_seed{args.seed}_e{int(epochs)}.npz"
    with timer("vae"):
        z, zinfo = cm.vae_z(mdata, args.seed, int(epochs), 10000, args.threads, cache)
    return pcs, lsi, z, zinfo


def metacells(mdata, pcs, lsi, z, n_mc, args, timer):
    out = {}
    with timer("coem_metacells"):
        out["COEM"] = SpectralMetacells(n_metacells=n_mc, random_state=args.seed).fit(z).labels_
    for key, emb in (("SeaC-RNA", pcs), ("SeaC-ATAC", lsi)):
        with timer(f"{key}_metacells"):
            res = baselines.run_seacells(emb, n_mc, seed=args.seed, method=key)
        out[key] = res.labels
        log(f"{key}: {res.n_returned}/{n_mc} metacells, {res.n_iter} iterations, converged={res.converged}")
    return out


def run_sim(name: str, args) -> dict:
    n_cells, n_genes, n_peaks, sim_seed = SIMS[name]
    timer = Timer()
    with timer("simulate_qc"):
        mdata, info, known = cm.load_sim(n_cells, n_genes, n_peaks, sim_seed)
    n_mc = int(round(mdata.n_obs / CELLS_PER_METACELL))
    pcs, lsi, z, zinfo = embeddings(name, mdata, args, timer)
    labels = metacells(mdata, pcs, lsi, z, n_mc, args, timer)

    pairs_all = peak2gene.candidate_pairs(mdata.mod["rna"].var, mdata.mod["atac"].var, window=WINDOW, anchor="tss")
    genes_all = pairs_all["gene"].unique()
    rng = np.random.default_rng(args.seed)
    if args.max_genes and len(genes_all) > args.max_genes:
        genes = np.sort(rng.choice(genes_all, size=args.max_genes, replace=False))
        subset = f"{args.max_genes} of {len(genes_all)} genes with candidate pairs (uniform, seed {args.seed})"
    else:
        genes, subset = genes_all, f"all {len(genes_all)} genes with candidate pairs"
    pairs = pairs_all[pairs_all["gene"].isin(set(genes))].reset_index(drop=True)
    known_scored = known[known["gene"].isin(set(genes))].reset_index(drop=True)
    recov = link_truth.recoverable(known_scored)
    log(f"{name}: {mdata.n_obs} cells, {n_mc} metacells; scoring {len(pairs)} pairs ({subset}); "
        f"{len(known_scored)} planted links on those genes ({int(recov.sum())} recoverable)")

    aggs = {key: aggregate(mdata, lab) for key, lab in labels.items()}
    scored, summaries = {}, {}
    for key in ("COEM", "SeaC-RNA"):
        with timer(f"coem_p2g_on_{key}"):
            links, summaries[f"coem_p2g_{key}"] = coem_links(aggs[key], args.seed)
        scored["COEM" if key == "COEM" else "SeaC-RNA + COEM p2g"] = on_pairs(pairs, links, "coem")
    checks = {}
    vgenes = np.sort(rng.choice(genes, size=min(args.validate_genes, len(genes)), replace=False))
    for key in ("SeaC-RNA", "SeaC-ATAC", "COEM"):
        with timer(f"seacells_p2g_on_{key}"):
            links, checks[key] = seacells_links(mdata, labels[key], lsi, pairs, args.seed,
                                                validate_genes=vgenes if key == "SeaC-RNA" else ())
        log(f"{name}: SEACells p2g on {key} in {timer.seconds[f'seacells_p2g_on_{key}']:.0f} s {checks[key]}")
        scored[f"{key} + SEACells p2g" if key != "COEM" else "COEM metacells + SEACells p2g"] = on_pairs(
            pairs, links, "seacells")
    cells = mdata
    if mdata.n_obs > args.single_cell_max:
        keep = np.sort(rng.choice(mdata.n_obs, size=args.single_cell_max, replace=False))
        cells = mdata[keep].copy()
    with timer("coem_p2g_single_cells"):
        links, summaries["coem_p2g_cells"] = coem_links(cells, args.seed)
    scored[f"single cells ({cells.n_obs}) + COEM p2g"] = on_pairs(pairs, links, "coem")

    results = {}
    for method, frame in scored.items():
        results[method] = link_truth.summarise_against_truth(frame, known_scored, recoverable=recov, score="z",
                                                             qs=QS, curve_points=200)
        if "p_over_w" in frame.columns:
            labels_ = link_truth.label_known(frame, known_scored)
            results[method]["auprc_by_p_over_w"] = link_truth.auprc(frame["p_over_w"], labels_)
            keep = ~link_truth.label_known(frame, known_scored[~recov])
            results[method]["auprc_recoverable_by_p_over_w"] = link_truth.auprc(frame["p_over_w"][keep],
                                                                                labels_[keep])
        seac = frame["p"].to_numpy(float) < 0.1
        results[method]["seacells_rule_p0.1_r0.1"] = _rule(frame, known_scored, seac & (frame["r"].to_numpy(float) > 0.1))
    return {"data": info, "n_cells": int(mdata.n_obs), "n_metacells": n_mc, "scored": subset,
            "n_pairs": int(len(pairs)), "n_planted_scored": int(len(known_scored)),
            "n_planted_recoverable": int(recov.sum()),
            "planted_by_programme": known_scored["programme"].value_counts().to_dict(),
            "vae": zinfo, "results": results, "p2g_summaries": summaries, "seacells_vs_own_loop": checks,
            "seconds": timer.seconds}


def _rule(frame, known, call) -> dict:
    labels = link_truth.label_known(frame, known)
    n = int(call.sum())
    return {"n_called": n, "false_share": float((call & ~labels).sum() / n) if n else float("nan"),
            "recall": float((call & labels).sum() / max(1, labels.sum()))}


# --------------------------------------------------------------------------- sci-CAR


def induction(mdata, genes) -> pd.DataFrame:
    """log2 fold change of pseudobulk CPM, 3 h vs 0 h dexamethasone, per gene (sci-CAR itself)."""
    rna = mdata.mod["rna"][mdata.obs_names]
    time_h = mdata.obs["label"].astype(str).to_numpy()
    X = rna.X
    out = {}
    for t in ("0", "3"):
        sub = X[time_h == t]
        out[t] = np.asarray(sub.sum(axis=0)).ravel() / sub.sum() * 1e6
    cpm = pd.DataFrame(out, index=rna.var_names)
    genes = [g for g in genes if g in cpm.index]
    frame = cpm.loc[genes]
    return pd.DataFrame({"cpm_0h": frame["0"], "cpm_3h": frame["3"],
                         "log2fc_3h_vs_0h": np.log2((frame["3"] + 1) / (frame["0"] + 1))})


def control_stats(frame: pd.DataFrame, controls: list[str]) -> dict:
    """Per control gene: best link (highest score), its fdr/r, its rank among all scored pairs."""
    rank = frame["z"].rank(ascending=False, method="min", na_option="bottom")
    frame = frame.assign(rank=rank)
    per_gene = {}
    for gene in controls:
        sub = frame[frame["gene"] == gene]
        if sub.empty:
            per_gene[gene] = {"n_pairs": 0}
            continue
        pos = sub[sub["r"] > 0]
        sig05 = bool(((pos["fdr"] <= 0.05)).any())
        sig10 = bool(((pos["fdr"] <= 0.1)).any())
        best = sub.sort_values("z", ascending=False, na_position="last").iloc[0]
        per_gene[gene] = {"n_pairs": int(len(sub)), "best_peak": best["peak"], "best_r": float(best["r"]),
                          "best_fdr": float(best["fdr"]), "best_rank": int(best["rank"]),
                          "sig_pos_fdr_0.05": sig05, "sig_pos_fdr_0.1": sig10,
                          "min_fdr_pos": float(pos["fdr"].min()) if len(pos) else float("nan")}
    tested = [g for g in controls if per_gene[g]["n_pairs"]]
    r = frame["r"].to_numpy(float)
    return {
        "n_controls_tested": len(tested),
        "share_sig_fdr_0.05": float(np.mean([per_gene[g]["sig_pos_fdr_0.05"] for g in tested])) if tested else np.nan,
        "share_sig_fdr_0.1": float(np.mean([per_gene[g]["sig_pos_fdr_0.1"] for g in tested])) if tested else np.nan,
        "n_sig_fdr_0.05": int(sum(per_gene[g]["sig_pos_fdr_0.05"] for g in tested)),
        "n_sig_fdr_0.1": int(sum(per_gene[g]["sig_pos_fdr_0.1"] for g in tested)),
        "median_best_rank": float(np.median([per_gene[g]["best_rank"] for g in tested])) if tested else np.nan,
        "n_pairs_scored": int(np.isfinite(frame["z"].to_numpy(float)).sum()),
        "n_called_fdr_0.05": int(((frame["fdr"] <= 0.05) & (frame["r"] > 0)).sum()),
        "n_called_fdr_0.1": int(((frame["fdr"] <= 0.1) & (frame["r"] > 0)).sum()),
        "median_r_cis": float(np.nanmedian(r)),
        "median_bg_mean": float(np.nanmedian(frame["bg_mean"].to_numpy(float))) if frame["bg_mean"].notna().any()
        else float("nan"),
        "per_gene": per_gene,
    }


def run_scicar(args) -> dict:
    timer = Timer()
    with timer("load_qc"):
        mdata, info, _ = cm.load_scicar()
    n_mc = int(round(mdata.n_obs / CELLS_PER_METACELL))
    pcs, lsi, z, zinfo = embeddings("scicar", mdata, args, timer)
    labels = metacells(mdata, pcs, lsi, z, n_mc, args, timer)
    pairs = peak2gene.candidate_pairs(mdata.mod["rna"].var, mdata.mod["atac"].var, window=WINDOW, anchor="tss")
    genes = pairs["gene"].unique()
    controls = [g for g in CONTROL_GENES if g in set(mdata.mod["rna"].var_names)]
    scored = {}
    for key, lab in labels.items():
        agg = aggregate(mdata, lab)
        with timer(f"coem_p2g_on_{key}"):
            links, _ = coem_links(agg, args.seed)
        scored[f"{key} metacells + COEM p2g"] = on_pairs(pairs, links, "coem")
    checks = {}
    vgenes = sorted(set(controls) & set(genes))
    for key in ("SeaC-RNA", "SeaC-ATAC"):
        with timer(f"seacells_p2g_on_{key}"):
            links, checks[key] = seacells_links(mdata, labels[key], lsi, pairs, args.seed,
                                                validate_genes=vgenes if key == "SeaC-RNA" else ())
        log(f"scicar: SEACells p2g on {key}: {checks[key]}")
        scored[f"{key} metacells + SEACells p2g"] = on_pairs(pairs, links, "seacells")
    results = {m: control_stats(f, controls) for m, f in scored.items()}
    return {"data": info, "n_cells": int(mdata.n_obs), "n_metacells": n_mc, "n_pairs": int(len(pairs)),
            "controls_listed": len(CONTROL_GENES), "controls_in_data": controls,
            "controls_with_pairs": [g for g in controls if g in set(genes)],
            "induction": induction(mdata, controls).round(3).to_dict(orient="index"),
            "vae": zinfo, "results": results, "seacells_vs_own_loop": checks, "seconds": timer.seconds}


# --------------------------------------------------------------------------- output


def md(frame: pd.DataFrame, floatfmt=".3g") -> str:
    try:
        return frame.to_markdown(floatfmt=floatfmt)
    except ImportError:
        return frame.to_string()


def print_sim(name: str, res: dict) -> None:
    print(f"\n## {name}: {res['n_cells']} cells, {res['n_metacells']} metacells; {res['n_pairs']} pairs "
          f"({res['scored']}); {res['n_planted_scored']} planted links on them, {res['n_planted_recoverable']} "
          f"recoverable\n")
    cols = {"auprc": "AUPRC", "auprc_recoverable": "AUPRC recov.", "auprc_by_p_over_w": "AUPRC p/w",
            "auprc_recoverable_by_p_over_w": "AUPRC recov. p/w", "prevalence": "prevalence",
            "recall_at_fdr_0.1": "recall@0.1", "recall_recoverable_at_fdr_0.1": "recall recov.@0.1"}
    for q in QS:
        cols[f"false_share_at_fdr_{q:g}"] = f"false@{q:g}"
        cols[f"n_called_at_fdr_{q:g}"] = f"n@{q:g}"
    table = pd.DataFrame({m: {v: r.get(k) for k, v in cols.items()} for m, r in res["results"].items()}).T
    print(md(table))
    rule = pd.DataFrame({m: r["seacells_rule_p0.1_r0.1"] for m, r in res["results"].items()}).T
    print("\nSEACells' own call rule (nominal p < 0.1 and r > 0.1):\n")
    print(md(rule))
    print(f"\nseconds: {res['seconds']}")


def print_scicar(res: dict) -> None:
    print(f"\n## sci-CAR A549: {res['n_cells']} cells, {res['n_metacells']} metacells, {res['n_pairs']} pairs; "
          f"{len(res['controls_in_data'])} of {res['controls_listed']} control genes in the data, "
          f"{len(res['controls_with_pairs'])} with candidate pairs\n")
    cols = ["n_controls_tested", "n_sig_fdr_0.05", "share_sig_fdr_0.05", "n_sig_fdr_0.1", "share_sig_fdr_0.1",
            "median_best_rank", "n_pairs_scored", "n_called_fdr_0.05", "n_called_fdr_0.1", "median_r_cis",
            "median_bg_mean"]
    table = pd.DataFrame({m: {c: r[c] for c in cols} for m, r in res["results"].items()}).T
    table["r_gap_cis_minus_bg"] = table["median_r_cis"] - table["median_bg_mean"]
    print(md(table))
    rows = {}
    for gene in res["controls_with_pairs"]:
        row = dict(res["induction"].get(gene, {}))
        for m, r in res["results"].items():
            g = r["per_gene"][gene]
            short = m.replace(" metacells + ", "/").replace(" p2g", "")
            row[f"{short} fdr"] = g.get("min_fdr_pos")
            row[f"{short} rank"] = g.get("best_rank")
        rows[gene] = row
    print("\nPer control gene: sci-CAR induction, best positive link's FDR and best link's rank per method:\n")
    print(md(pd.DataFrame(rows).T))
    fk = res["results"]["COEM metacells + COEM p2g"]["per_gene"].get("FKBP5", {})
    print(f"\nFKBP5 (COEM): best link {fk.get('best_peak')} r={fk.get('best_r')} fdr={fk.get('best_fdr')} "
          f"rank={fk.get('best_rank')}; lowest FDR among positive links {fk.get('min_fdr_pos')}")
    print(f"\nseconds: {res['seconds']}")


def code_state() -> dict:
    """Commit and a hash of coem/peak2gene.py as run (it may be ahead of the commit)."""
    import hashlib
    import subprocess

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    source = (ROOT / "coem" / "peak2gene.py").read_bytes()
    return {"commit": git("rev-parse", "HEAD"), "peak2gene_modified": bool(git("status", "--porcelain", "coem/peak2gene.py")),
            "peak2gene_sha256": hashlib.sha256(source).hexdigest()[:16]}


def machine() -> dict:
    import torch

    return {**cm.machine(), "gpu": bool(torch.cuda.is_available())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=(*SIMS, "scicar"), default=DEFAULT_DATASETS)
    parser.add_argument("--vae-epochs", type=int, default=30)
    parser.add_argument("--vae-epochs-for", nargs="*", default=[], metavar="DATASET=EPOCHS",
                        help="per-dataset VAE epochs, e.g. scicar=15")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the VAE")
    parser.add_argument("--seed", type=int, default=0, help="seed of every method (and the VAE)")
    parser.add_argument("--max-genes", type=int, default=0,
                        help="score all methods on the pairs of at most this many genes (0 = all)")
    parser.add_argument("--single-cell-max", type=int, default=5000)
    parser.add_argument("--validate-genes", type=int, default=20,
                        help="genes on which SEACells' own loop is run to check the vectorised statistics")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "validate_links.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    log(f"SEACells warm-up: {baselines.warm_up_seacells():.1f} s")
    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out.update({"benchmark": "validate_links", "params": vars(args),
                "versions": software_versions(baselines.seacells_versions()), "code": code_state()})
    out.setdefault("datasets", {})
    for name in args.datasets:
        t0 = time.perf_counter()
        res = run_scicar(args) if name == "scicar" else run_sim(name, args)
        res["total_seconds"] = round(time.perf_counter() - t0, 1)
        print_scicar(res) if name == "scicar" else print_sim(name, res)
        sys.stdout.flush()
        out["datasets"][name] = res
        out["machine"] = machine()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1, default=cm._frame))
        log(f"{name} done in {res['total_seconds']:.0f} s; wrote {out_path}")
    m = out["machine"]
    log(f"machine: {m['cpus']} CPUs, {m['memory_gb']} GB, GPU: {m['gpu']}; all done in "
        f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
