"""SEACells baselines and the paper-style comparison of metacell methods (DESIGN.md sections 1, 6).

The COEM paper compares its metacells with SEACells run on one modality (SeaC-RNA on the RNA
PCA, SeaC-ATAC on the ATAC LSI) and times spectral clustering against SEACells' archetypal
analysis on the same joint embedding z. This module runs those baselines and scores every
method the same way:

- ``run_seacells``: SEACells 0.3.3 (``SEACells.core.SEACells``: adaptive RBF kernel on an
  embedding, then kernel archetypal analysis) with a fixed seed, returning hard assignments,
  the number of metacells actually returned (SEACells can return fewer than asked: an
  archetype that wins no cell's argmax is empty) and the seconds of the kernel and of the fit
  separately;
- ``time_spectral``: COEM's spectral step (``coem.metacells``) on the same z, timed the same way;
- ``compare``: metrics (``coem.metrics``, on diffusion components computed once per modality
  by the caller) and the fraction of negative peak-to-gene correlations under COEM's and
  SEACells' definitions, one row per method.

SEACells quirks handled here (and why):

- it draws from numpy's *global* RNG (archetype order, the random start of the assignment
  matrix); we seed it for the run and restore the caller's global state afterwards, so
  results are reproducible and nothing else is disturbed;
- its kernel loops use ``tqdm.notebook`` (fails outside Jupyter without ipywidgets, and floods
  logs either way) and it prints to stdout; both are silenced for the run only;
- ``fit`` raises ``RuntimeWarning`` *after* assigning cells when it did not converge within
  ``max_iter``; we record ``converged=False`` and keep the assignment;
- its kernel builds scanpy's kNN graph, whose first call in a process compiles numba code
  (10-15 s); ``warm_up_seacells`` pays that once so it is not billed to a method.

``kernel='coem'`` builds the same kernel with ``coem.graph`` (exact kNN, k//2-th neighbour
bandwidth, union graph; equal to SEACells' to float32 rounding) and hands it to SEACells with
``add_precomputed_kernel_matrix``: the archetypal analysis is SEACells' own either way, but
without scanpy's compilation and SEACells' per-row Python loop. This module knows nothing
about files.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from coem import metrics
from coem._logging import get_logger
from coem.errors import CoemInputError
from coem.graph import knn, rbf_kernel
from coem.metacells import SpectralMetacells, metacell_names, relabel_by_first_occurrence, spectral_from_kernel

_log = get_logger("coem.baselines")

# method -> (display name as in the paper, which embedding SEACells runs on)
METHODS: dict[str, tuple[str, str]] = {
    "seacells_rna": ("SeaC-RNA", "rna_pca"),
    "seacells_atac": ("SeaC-ATAC", "atac_lsi"),
    "archetypal_z": ("Archetypal-z", "z"),
}
COEM_METHOD = "coem"
KERNELS = ("seacells", "coem")
# Peak-to-gene definitions compared (DESIGN.md section 6): COEM's and SEACells'.
# The COEM paper's and SEACells' definitions of the negative-correlation fraction: r on CPM
# (as the paper normalises), no background test (only the sign of r is used).
P2G_DEFINITIONS: dict[str, dict[str, str]] = {
    "pearson_tss": {"method": "pearson", "anchor": "tss", "normalisation": "cpm"},
    "spearman_body": {"method": "spearman", "anchor": "gene_body", "normalisation": "cpm"},
}
# Palantir's diffusion maps (SEACells' waypoint initialisation) use 30 neighbours.
_MIN_CELLS = 32


# --------------------------------------------------------------------------- results


@dataclass
class BaselineResult:
    """One metacell run: hard assignment per cell and what it cost.

    ``labels``: 0..m-1 per cell (numbered by first cell); ``names``: ``MC00001`` ...;
    ``n_requested`` / ``n_returned``: metacells asked for / non-empty ones obtained;
    ``kernel_seconds`` / ``fit_seconds``: kernel construction and clustering (archetypal
    analysis or spectral clustering).
    """

    method: str
    labels: np.ndarray
    n_requested: int
    kernel_seconds: float
    fit_seconds: float
    kernel: str = "seacells"
    n_iter: int | None = None
    converged: bool | None = None
    names: np.ndarray = field(init=False)

    def __post_init__(self):
        self.labels = relabel_by_first_occurrence(np.asarray(self.labels))
        self.names = metacell_names(self.labels)

    @property
    def n_returned(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def seconds(self) -> float:
        return self.kernel_seconds + self.fit_seconds

    def record(self) -> dict[str, Any]:
        """Everything but the per-cell labels, JSON-ready."""
        return {
            "method": self.method, "kernel": self.kernel, "n_requested": self.n_requested,
            "n_returned": self.n_returned, "kernel_seconds": round(self.kernel_seconds, 4),
            "fit_seconds": round(self.fit_seconds, 4), "seconds": round(self.seconds, 4),
            "n_iter": self.n_iter, "converged": self.converged,
        }


# --------------------------------------------------------------------------- SEACells plumbing


def seacells_versions() -> tuple[str, ...]:
    """Extra packages whose versions every baseline record lists."""
    return ("seacells", "palantir", "scanpy")


def _import_seacells():
    try:
        import SEACells  # noqa: N813 - the package's own name
    except ImportError as err:
        raise CoemInputError(
            "SEACells is not installed: --run_baselines needs the 'seacells' extra, which `make install` "
            "leaves out; install it with pip install '.[seacells]' in the repository (or make install-test)"
        ) from err
    return SEACells


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """SEACells draws from numpy's global RNG: seed it for the run, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _quiet_seacells(SEACells) -> Iterator[io.StringIO]:
    """Swap SEACells' (notebook) progress bars for disabled ones and capture its prints."""
    from functools import partial

    from tqdm import std

    silent = partial(std.tqdm, disable=True)
    modules = [SEACells.build_graph, SEACells.core]
    saved = [module.tqdm for module in modules]
    buffer = io.StringIO()
    try:
        for module in modules:
            module.tqdm = silent
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            # Palantir notes when it raises the waypoint count for small requests; not actionable here.
            warnings.filterwarnings("ignore", category=UserWarning, module="palantir")
            yield buffer
    finally:
        for module, bar in zip(modules, saved):
            module.tqdm = bar


def _check_embedding(X, n_metacells: int, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise CoemInputError(f"the {what} embedding must be a non-empty cells x dims matrix, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise CoemInputError(f"the {what} embedding contains NaN or infinite values; recompute it")
    n = X.shape[0]
    if n < _MIN_CELLS:
        raise CoemInputError(
            f"SEACells needs at least {_MIN_CELLS} cells (Palantir's 30-neighbour diffusion maps initialise it), "
            f"got {n}")
    if not 2 <= int(n_metacells) < n:
        raise CoemInputError(
            f"the number of metacells must be between 2 and the number of cells - 1 ({n - 1}), got {n_metacells}; "
            "change --n-metacells")
    return X


def _anndata(X: np.ndarray, key: str):
    """The minimal AnnData SEACells needs: cell names and the embedding in ``obsm[key]``."""
    import anndata as ad

    adata = ad.AnnData(obs=pd.DataFrame(index=[f"cell{i}" for i in range(X.shape[0])]))
    adata.obsm[key] = X.astype(np.float32)
    return adata


def coem_kernel(X: np.ndarray, k: int = 15):
    """SEACells' kernel built by ``coem.graph`` (same definition, exact kNN, vectorised)."""
    idx, dist = knn(np.asarray(X, dtype=np.float32), k=k, method="exact")
    return rbf_kernel(idx, dist)


def run_seacells(
    X,
    n_metacells: int,
    seed: int = 0,
    min_iter: int = 10,
    max_iter: int = 50,
    k: int = 15,
    n_waypoint_eigs: int = 10,
    convergence_epsilon: float = 1e-3,
    kernel: str = "seacells",
    method: str = "seacells",
) -> BaselineResult:
    """SEACells on an embedding ``X`` (cells x dims): kernel, then archetypal analysis.

    ``min_iter``/``max_iter`` bound the A/B update rounds (SEACells' tutorial: 10/50);
    convergence is |delta RSS| < ``convergence_epsilon`` x initial RSS. ``kernel``:
    ``'seacells'`` (SEACells' own construction, via scanpy) or ``'coem'`` (the same kernel
    from ``coem.graph``, see the module docstring). Hard assignment = argmax of each cell's
    archetype weights, as ``get_hard_assignments``.
    """
    if kernel not in KERNELS:
        raise CoemInputError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if not 1 <= min_iter <= max_iter:
        raise CoemInputError(f"need 1 <= min_iter <= max_iter, got min_iter={min_iter}, max_iter={max_iter}")
    X = _check_embedding(X, n_metacells, method)
    SEACells = _import_seacells()
    key = "X_embedding"
    adata = _anndata(X, key)
    with _seeded_global_numpy(seed), _quiet_seacells(SEACells):
        model = SEACells.core.SEACells(
            adata, build_kernel_on=key, n_SEACells=int(n_metacells), verbose=False, n_neighbors=k,
            n_waypoint_eigs=n_waypoint_eigs, convergence_epsilon=convergence_epsilon)
        start = time.perf_counter()
        if kernel == "seacells":
            model.construct_kernel_matrix(n_neighbors=k)
        else:
            model.add_precomputed_kernel_matrix(coem_kernel(X, k))
        kernel_seconds = time.perf_counter() - start
        start = time.perf_counter()
        converged = True
        try:
            model.fit(min_iter=min_iter, max_iter=max_iter)
        except RuntimeWarning:  # raised after the assignment when max_iter is hit
            converged = False
        fit_seconds = time.perf_counter() - start
    labels = np.asarray(model.A_).argmax(axis=0)
    result = BaselineResult(method, labels, int(n_metacells), kernel_seconds, fit_seconds, kernel=kernel,
                            n_iter=len(model.RSS_iters) - 1, converged=converged)
    _log.info("%s: %d of %d metacells returned from %d cells; kernel %.2f s, archetypal analysis %.2f s "
              "(%d iterations, %s)", method, result.n_returned, n_metacells, X.shape[0], kernel_seconds,
              fit_seconds, result.n_iter, "converged" if converged else "NOT converged")
    if result.n_returned < n_metacells:
        _log.warning("%s: SEACells returned %d metacells, fewer than the %d asked for (empty archetypes)",
                     method, result.n_returned, n_metacells)
    return result


def warm_up_seacells(seed: int = 0) -> float:
    """Run SEACells' kernel once on 64 random cells so scanpy's numba compilation (10-15 s,
    once per process) is not billed to the first method timed. Returns the seconds spent."""
    SEACells = _import_seacells()
    X = np.random.default_rng(seed).standard_normal((64, 5)).astype(np.float32)
    start = time.perf_counter()
    with _quiet_seacells(SEACells):
        SEACells.build_graph.SEACellGraph(_anndata(X, "X_embedding"), "X_embedding").rbf(15)
    return time.perf_counter() - start


def run_baselines(
    embeddings: Mapping[str, np.ndarray],
    methods,
    n_metacells: int,
    seed: int = 0,
    **options,
) -> dict[str, BaselineResult]:
    """Each method of ``METHODS`` on its embedding (``embeddings``: ``rna_pca``, ``atac_lsi``, ``z``).

    ``options`` go to :func:`run_seacells` (min_iter, max_iter, k, kernel ...).
    """
    results = {}
    for method in methods:
        if method not in METHODS:
            raise CoemInputError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")
        key = METHODS[method][1]
        if key not in embeddings:
            raise CoemInputError(f"method {method} needs the '{key}' embedding, which is missing")
        results[method] = run_seacells(embeddings[key], n_metacells, seed=seed, method=method, **options)
    return results


# --------------------------------------------------------------------------- COEM's spectral step


def time_spectral(z, n_metacells: int, seed: int = 0, k: int = 15) -> BaselineResult:
    """COEM's spectral metacells on z, timed like SEACells: kernel, then clustering.

    Up to ``SpectralMetacells``' exact-path size (10,000 cells) this is exactly what
    ``SpectralMetacells.fit`` runs (kNN + RBF kernel, then ``spectral_from_kernel``), with the
    two parts timed apart; above it ``fit`` (partitioned) is timed as a whole as clustering.
    """
    z = np.asarray(z, dtype=np.float64)
    model = SpectralMetacells(n_metacells=n_metacells, k=k, random_state=seed)
    if z.shape[0] > model.exact_max_cells:
        start = time.perf_counter()
        model.fit(z)
        return BaselineResult(COEM_METHOD, model.labels_, int(n_metacells), 0.0, time.perf_counter() - start,
                              kernel="coem")
    if not 1 <= int(n_metacells) < z.shape[0]:
        raise CoemInputError(f"the number of metacells must be between 1 and {z.shape[0] - 1}, got {n_metacells}")
    start = time.perf_counter()
    idx, dist = knn(z, k=k, method=model.knn_method, seed=seed)
    W = rbf_kernel(idx, dist)
    kernel_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = spectral_from_kernel(W, z, int(n_metacells), seed)
    result = BaselineResult(COEM_METHOD, labels, int(n_metacells), kernel_seconds, time.perf_counter() - start,
                            kernel="coem")
    _log.info("spectral: %d metacells on z; kernel %.2f s, clustering %.2f s", result.n_returned,
              kernel_seconds, result.fit_seconds)
    return result


def runtime_table(spectral: BaselineResult, archetypal: BaselineResult | None, n_cells: int) -> pd.DataFrame:
    """Spectral vs archetypal on the same z: seconds per part and archetypal/spectral ratios."""
    rows = []
    for name, res in (("spectral", spectral), ("archetypal", archetypal)):
        if res is None:
            continue
        rows.append({"algorithm": name, "method": res.method, "kernel": res.kernel, "n_cells": int(n_cells),
                     "n_metacells_requested": res.n_requested, "n_metacells_returned": res.n_returned,
                     "kernel_seconds": res.kernel_seconds, "cluster_seconds": res.fit_seconds,
                     "total_seconds": res.seconds})
    table = pd.DataFrame(rows).set_index("algorithm")
    for part in ("cluster", "total"):
        base = spectral.fit_seconds if part == "cluster" else spectral.seconds
        table[f"{part}_ratio_to_spectral"] = table[f"{part}_seconds"] / base if base > 0 else np.nan
    return table


# --------------------------------------------------------------------------- evaluation


def has_gene_bodies(rna_var: pd.DataFrame) -> bool:
    """True when genes carry start/end (else SEACells' gene-body window falls back to TSS)."""
    if not {"start", "end"} <= set(rna_var.columns):
        return False
    start = pd.to_numeric(rna_var["start"], errors="coerce")
    end = pd.to_numeric(rna_var["end"], errors="coerce")
    return bool((start.notna() & end.notna()).any())


def p2g_negative_fractions(mdata, metacells, window: int = 100_000, n_background: int = 0, seed: int = 0,
                           known_links: pd.DataFrame | None = None) -> dict:
    """Fraction of negative peak-to-gene correlations on one assignment's aggregated metacells,
    under each of ``P2G_DEFINITIONS``. Returns {definition: summary (``fraction_negative``,
    ``n_pairs`` ..., ``anchor_used``)}; a definition that cannot run (fewer than 3 metacells, no
    TSS) gets ``fraction_negative`` NaN and the reason. ``mdata.obs`` gets a temporary column
    (removed again). With ``known_links`` (columns ``gene``, ``peak``; e.g. the simulator's
    planted links) the summary also holds ``known_fraction_negative``, ``known_median_r`` and
    ``known_n_pairs`` over the tested pairs that are known links."""
    from coem.aggregate import aggregate_metacells
    from coem.peak2gene import peak_to_gene

    key = "_coem_baseline_metacell"
    mdata.obs[key] = np.asarray(metacells, dtype=object)
    try:
        with warnings.catch_warnings():  # mudata 0.3's notice about its future pull_on_update default
            warnings.simplefilter("ignore", FutureWarning)
            aggregated = aggregate_metacells(mdata, key=key, label_key="__none__")
    finally:
        del mdata.obs[key]
    bodies = has_gene_bodies(mdata.mod["rna"].var)
    out = {}
    for name, definition in P2G_DEFINITIONS.items():
        anchor_used = definition["anchor"] if definition["anchor"] == "tss" or bodies else "tss (no gene bodies)"
        try:
            links, summary = peak_to_gene(aggregated, window=window, n_background=n_background, seed=seed,
                                          **definition)
            if known_links is not None:
                summary.update(known_link_stats(links, known_links))
        except CoemInputError as err:
            _log.warning("peak-to-gene %s skipped: %s", name, err)
            summary = {"fraction_negative": float("nan"), "n_pairs": 0, "skipped": str(err)}
        summary["anchor_used"] = anchor_used
        out[name] = summary
    return out


def known_link_stats(links: pd.DataFrame, known_links: pd.DataFrame) -> dict:
    """Sign and size of the correlations of tested pairs that are known (e.g. planted) links."""
    known = links.merge(known_links[["gene", "peak"]].drop_duplicates(), on=["gene", "peak"])
    r = known["r"].to_numpy(dtype=float)
    r = r[np.isfinite(r)]
    return {"known_n_pairs": int(r.size),
            "known_fraction_negative": float((r < 0).mean()) if r.size else float("nan"),
            "known_median_r": float(np.median(r)) if r.size else float("nan")}


def _finite_or_nan(value) -> float:
    value = float(value)
    return value if np.isfinite(value) else float("nan")


def _mean(summary: dict, key: str) -> float:
    value = summary.get(key, {}).get("mean")
    return float("nan") if value is None else float(value)


def comparison_row(result: BaselineResult, ids, components, cell_labels, mdata=None, **p2g) -> tuple[dict, dict]:
    """One method's row (metrics means, p2g negative fractions, seconds) and its full details."""
    per_metacell, summary = metrics.evaluate_metacells(ids, components, cell_labels)
    # Medians resist the few metacells that straddle disconnected parts of a diffusion graph,
    # whose lambda / (1 - lambda) scaling makes means explode (see coem.metrics).
    medians = {col: _finite_or_nan(per_metacell[col].median()) for col in per_metacell.columns
               if col.startswith(("compactness_", "separation_", "purity"))}
    row = {
        "display_name": METHODS.get(result.method, ("COEM", ""))[0],
        "n_metacells_requested": result.n_requested,
        "n_metacells": summary["sizes"]["n_metacells"],
        "purity": _mean(summary, "purity") if cell_labels is not None else float("nan"),
    }
    for metric in ("compactness", "separation"):
        for mod in ("rna", "atac"):
            row[f"{metric}_{mod}"] = _mean(summary, f"{metric}_{mod}")
            row[f"{metric}_{mod}_median"] = medians.get(f"{metric}_{mod}", float("nan"))
    flagged = [mod for mod, flag in summary.get("diffusion", {}).items() if flag.get("nearly_disconnected")]
    row["nearly_disconnected"] = ",".join(flagged)
    p2g_summary = p2g_negative_fractions(mdata, ids, **p2g) if mdata is not None else {}
    for name in P2G_DEFINITIONS:
        row[f"p2g_negative_{name}"] = p2g_summary.get(name, {}).get("fraction_negative", float("nan"))
    if p2g.get("known_links") is not None:
        for name in P2G_DEFINITIONS:
            row[f"p2g_known_negative_{name}"] = p2g_summary.get(name, {}).get("known_fraction_negative", float("nan"))
    row["seconds"] = result.seconds
    return row, {"metrics": summary, "medians": medians, "peak_to_gene": p2g_summary, "run": result.record()}


def compare(
    results: Mapping[str, BaselineResult],
    components: Mapping[str, np.ndarray],
    cell_labels=None,
    mdata=None,
    assignments: Mapping[str, Any] | None = None,
    progress: Callable[[str, float], None] | None = None,
    **p2g,
) -> tuple[pd.DataFrame, dict]:
    """Score every method identically: one row per method (index ``method``).

    ``components``: {modality: diffusion components} computed once for all methods;
    ``assignments``: per-method metacell ids overriding ``results[m].names`` (e.g. COEM's own
    ``obs['metacell']``); ``mdata``: the per-cell MuData for peak-to-gene (skipped when None);
    ``p2g``: ``window``, ``n_background``, ``seed``, ``known_links`` for :func:`p2g_negative_fractions`.
    """
    rows, details = {}, {}
    for method, result in results.items():
        start = time.perf_counter()
        ids = (assignments or {}).get(method, result.names)
        rows[method], details[method] = comparison_row(result, ids, components, cell_labels, mdata, **p2g)
        if progress is not None:
            progress(method, time.perf_counter() - start)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table, details
