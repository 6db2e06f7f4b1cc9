"""Simulated paired multiome counts (RNA + ATAC from the same cells) with KNOWN cell states.

Why: the pipeline's test data, the demo, most unit tests and the benchmarks need data whose
truth is known -- which cells belong together, which peaks regulate which genes, and that
chromatin opens before transcription along a trajectory -- at any size up to 10^6 cells.

The generative model (all randomness from ``numpy.random.default_rng`` seeded by ``seed``):

* Genome: chromosomes ``chr1..chrN`` built around the genes (TSSs >= 10 kb apart, about one
  gene per 150 kb), plus ``chrM`` with up to 13 real mitochondrial gene names (``MT-ND1`` ...).
* Cell states: ``n_types`` discrete types (``type_0`` ...) and, for ``trajectory_fraction``
  of the cells, one continuous trajectory with pseudotime t ~ U(0, 1), labelled
  ``traj_early`` / ``traj_mid`` / ``traj_late`` by thirds of t.
* Gene programmes: housekeeping (constant), joint markers (gene + linked peaks active in the
  types using the programme), RNA-only markers (no linked peaks), trajectory genes rising or
  falling along t. Peaks: one promoter peak at the TSS and 0-2 distal peaks within +-100 kb
  per linked gene (0-3 planted links per gene), type-specific ATAC-only peaks with no gene,
  and background peaks anywhere with a constant openness.
* Along the trajectory a gene's linked peaks open as sigmoid((t - tau_g) / width) and the
  gene is transcribed as sigmoid((t - tau_g - lag) / width): chromatin leads by ``lag``.
* With ``n_types >= 4`` (and ``twin_types``) type_0/type_1 share their chromatin and differ
  only in RNA-only markers, type_2/type_3 share their transcription and differ only in
  ATAC-only peaks: neither modality alone separates every state.
* RNA: gamma-Poisson (negative binomial) around library size x programme-scaled lognormal
  gene baselines; lognormal library sizes (median ``rna_median_counts``); a per-cell
  mitochondrial share (median ~4%). ATAC: Poisson on peak openness x lognormal peak
  strength, lognormal library sizes (median ``atac_median_counts``), drawn as a multinomial
  over peaks (the same law as independent Poissons, but cost O(counts) not O(peaks));
  trajectory cells' rates are interpolated linearly on a 65-point pseudotime grid.
  The ATAC non-zero fraction is ~7% at 20,000 peaks (lower with more peaks); on a few
  thousand peaks the same 3,000 counts per cell necessarily fill more (~20-25% at 2-3k).

Cells are generated in chunks of ``chunk_size`` (the counts' draws depend on it, the genome and
cell states do not) so memory is O(nnz) in memory and O(chunk) when streamed
(``MultiomeSimulator.iter_chunks``; the file writers live in ``coem.cli.simulate``).
This module knows nothing about files.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem._logging import get_logger
from coem.errors import CoemInputError

PEAK_WIDTH = 500
LINK_WINDOW = 100_000
TRAJ_LABELS = ("traj_early", "traj_mid", "traj_late")
TSS_TABLE_COLUMNS = ["symbol", "gene_id", "chrom", "start", "end", "strand", "tss"]
# Real mitochondrial genes (rCRS coordinates, 1-based inclusive) so QC's MT- fraction means something.
MITO_GENES = (
    ("MT-ND1", 3307, 4262, "+"), ("MT-ND2", 4470, 5511, "+"), ("MT-CO1", 5904, 7445, "+"),
    ("MT-CO2", 7586, 8269, "+"), ("MT-ATP8", 8366, 8572, "+"), ("MT-ATP6", 8527, 9207, "+"),
    ("MT-CO3", 9207, 9990, "+"), ("MT-ND3", 10059, 10404, "+"), ("MT-ND4L", 10470, 10766, "+"),
    ("MT-ND4", 10760, 12137, "+"), ("MT-ND5", 12337, 14148, "+"), ("MT-ND6", 14149, 14673, "-"),
    ("MT-CYB", 14747, 15887, "+"),
)
CHRM_LENGTH = 16569
_TRAJ_GRID = 65  # pseudotime grid for ATAC profiles; rates are interpolated linearly between points
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)

# Stream ids: each random part of the model draws from its own generator, so changing one
# part (e.g. the number of cells) leaves the others (the genome) unchanged.
_GENOME, _OBS, _BARCODES, _CHUNK_RNA, _CHUNK_ATAC, _QUALITY = range(6)
# Planted low-quality cells (opt-in, SimParams.*_fraction): their kind is obs['quality'].
QUALITY_KINDS = ("empty", "low_count", "damaged", "doublet")


@dataclass(frozen=True)
class SimParams:
    """All knobs of the simulator; validated on construction (bad values -> CoemInputError)."""

    n_cells: int = 1000
    n_genes: int = 500
    n_peaks: int = 3000
    n_types: int = 4
    trajectory_fraction: float = 0.3
    lag: float = 0.15
    seed: int = 0
    width: float = 0.05
    rna_median_counts: float = 1500.0
    atac_median_counts: float = 3000.0
    library_sigma: float = 0.45
    n_chroms: int | None = None
    n_mito: int | None = None
    twin_types: bool = True
    chunk_size: int = 2000
    # Planted low-quality cells, as fractions of n_cells (0 = none; outputs then stay as before):
    empty_fraction: float = 0.0  # empty-droplet-like: ambient-level counts (~2% of a cell's) in both modalities
    low_count_fraction: float = 0.0  # poorly captured cells: both libraries at 3-12% of the cell's own
    damaged_fraction: float = 0.0  # broken cells: RNA at 10-30%, 25-60% of it mitochondrial; ATAC at 30-100%
    doublet_fraction: float = 0.0  # two cells in one droplet: a cell's counts plus another cell's

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_cells", "n_genes", "n_peaks", "chunk_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_types < 0:
            problems.append(f"n_types must be >= 0 (got {self.n_types})")
        if not 0.0 <= self.trajectory_fraction <= 1.0:
            problems.append(f"trajectory_fraction must lie in [0, 1] (got {self.trajectory_fraction})")
        if self.n_types == 0 and self.trajectory_fraction < 1.0:
            problems.append("n_types=0 leaves no discrete types: set trajectory_fraction=1 or n_types >= 1")
        if self.n_types > 0 and self.trajectory_fraction == 1.0:
            problems.append(f"trajectory_fraction=1 leaves no cells for the {self.n_types} types: "
                            "lower it or set n_types=0")
        if not 0.0 <= self.lag <= 0.5:
            problems.append(f"lag must lie in [0, 0.5] pseudotime units (got {self.lag})")
        if not 0.0 < self.width <= 0.5:
            problems.append(f"width must lie in (0, 0.5] (got {self.width})")
        for name in ("rna_median_counts", "atac_median_counts"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0.0 <= self.library_sigma <= 2.0:
            problems.append(f"library_sigma must lie in [0, 2] (got {self.library_sigma})")
        if self.n_chroms is not None and not 1 <= self.n_chroms <= 22:
            problems.append(f"n_chroms must lie in 1..22 (got {self.n_chroms})")
        if self.n_mito is not None and not 0 <= self.n_mito <= len(MITO_GENES):
            problems.append(f"n_mito must lie in 0..{len(MITO_GENES)} (got {self.n_mito})")
        min_genes = self.mito_genes + max(20, 5 * self.n_types)
        if self.n_genes >= 1 and self.n_genes < min_genes:
            problems.append(
                f"n_genes={self.n_genes} is too few for {self.n_types} types and {self.mito_genes} "
                f"mitochondrial genes: use n_genes >= {min_genes}"
            )
        fractions = self.quality_fractions
        for kind, value in fractions.items():
            if not 0.0 <= value <= 0.5:
                problems.append(f"{kind}_fraction must lie in [0, 0.5] (got {value})")
        if sum(fractions.values()) > 0.8:
            problems.append(f"the low-quality fractions add up to {sum(fractions.values()):g}; keep them <= 0.8")
        if problems:
            raise CoemInputError("invalid simulation parameters: " + "; ".join(problems))

    @property
    def mito_genes(self) -> int:
        """Mitochondrial genes: as given, else ~1 per 40 genes (2..13)."""
        if self.n_mito is not None:
            return int(self.n_mito)
        return int(min(len(MITO_GENES), max(2, self.n_genes // 40)))

    @property
    def chroms(self) -> int:
        """Autosomes: as given, else ~1 per 80 nuclear genes (3..22) so nulls on other chromosomes exist."""
        if self.n_chroms is not None:
            return int(self.n_chroms)
        return int(min(22, max(3, (self.n_genes - self.mito_genes) // 80)))

    @property
    def quality_fractions(self) -> dict:
        return {kind: float(getattr(self, f"{kind}_fraction")) for kind in QUALITY_KINDS}

    @property
    def has_low_quality(self) -> bool:
        return any(v > 0 for v in self.quality_fractions.values())

    def record(self) -> dict:
        """The parameters as recorded in the output (without the low-quality knobs when unused)."""
        out = asdict(self)
        if not self.has_low_quality:
            for kind in QUALITY_KINDS:
                out.pop(f"{kind}_fraction")
        return out

    @property
    def has_trajectory(self) -> bool:
        return self.trajectory_fraction > 0 and round(self.n_cells * self.trajectory_fraction) > 0


# ----------------------------------------------------------------------------------------
# Type design: which programmes each discrete type uses
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeDesign:
    """Per type: its joint (gene + peak) programme and whether it has RNA-only / ATAC-only markers."""

    joint: np.ndarray  # int, joint programme index per type
    rna_only: np.ndarray  # bool per type
    atac_only: np.ndarray  # bool per type

    @property
    def n_joint(self) -> int:
        return int(self.joint.max()) + 1 if self.joint.size else 0


def type_design(n_types: int, twin_types: bool = True) -> TypeDesign:
    """Twins (when n_types >= 4): types 0/1 differ only in RNA, types 2/3 only in ATAC."""
    joint = np.arange(n_types)
    rna_only = np.ones(n_types, bool)
    atac_only = np.ones(n_types, bool)
    if twin_types and n_types >= 4:
        joint = np.concatenate([[0, 0, 1, 1], np.arange(2, n_types - 2)])
        rna_only[2:4] = False
        atac_only[0:2] = False
    return TypeDesign(joint=joint.astype(int), rna_only=rna_only, atac_only=atac_only)


# ----------------------------------------------------------------------------------------
# Genome: genes, programmes, peaks, planted links
# ----------------------------------------------------------------------------------------


def _gene_symbols(n: int) -> list[str]:
    width = max(5, len(str(n)))
    return [f"GENE{i + 1:0{width}d}" for i in range(n)]


def _nuclear_genes(rng: np.random.Generator, n_genes: int, n_chroms: int) -> tuple[pd.DataFrame, dict]:
    """Genes spread over chr1..chrN, TSSs >= 10 kb apart; chromosome sizes follow from them."""
    per_chrom = np.bincount(np.arange(n_genes) % n_chroms, minlength=n_chroms)
    chrom, tss, sizes = [], [], {}
    for c, n in enumerate(per_chrom):
        gaps = 10_000 + rng.exponential(140_000, size=n).astype(np.int64)
        positions = 150_000 + np.cumsum(gaps)
        name = f"chr{c + 1}"
        chrom += [name] * n
        tss.append(positions)
        sizes[name] = int(positions[-1] + 150_000) if n else 300_000
    tss = np.concatenate(tss)
    strand = np.where(rng.random(n_genes) < 0.5, "+", "-")
    length = np.clip(rng.lognormal(math.log(20_000), 1.0, n_genes), 1_000, 300_000).astype(np.int64)
    plus = strand == "+"
    start = np.where(plus, tss, np.maximum(1, tss - length + 1))
    end = np.where(plus, tss + length - 1, tss)
    symbols = _gene_symbols(n_genes)
    genes = pd.DataFrame(
        {"gene_id": [f"SIMG{i + 1:08d}" for i in range(n_genes)], "chrom": chrom, "start": start,
         "end": end, "strand": strand, "tss": tss},
        index=pd.Index(symbols, name="symbol"),
    )
    return genes, sizes


def _mito_genes(n_mito: int) -> pd.DataFrame:
    rows = MITO_GENES[:n_mito]
    return pd.DataFrame(
        {"gene_id": [f"SIMMT{i + 1:06d}" for i in range(n_mito)], "chrom": "chrM",
         "start": [r[1] for r in rows], "end": [r[2] for r in rows], "strand": [r[3] for r in rows],
         "tss": [r[1] if r[3] == "+" else r[2] for r in rows]},
        index=pd.Index([r[0] for r in rows], name="symbol"),
    )


def _split(total: int, parts: int) -> np.ndarray:
    """``total`` items over ``parts`` groups as evenly as possible."""
    return np.bincount(np.arange(total) % parts, minlength=parts) if parts else np.zeros(0, int)


def _assign_programmes(rng: np.random.Generator, n: int, design: TypeDesign, has_traj: bool) -> pd.DataFrame:
    """Programme per nuclear gene: housekeeping, joint, rna_only, traj_up, traj_down."""
    n_traj = int(round(0.16 * n)) if has_traj else 0
    n_joint = max(design.n_joint, int(round(0.20 * n))) if design.n_joint else 0
    rna_types = np.flatnonzero(design.rna_only)
    n_rna = max(len(rna_types), int(round(0.08 * n))) if len(rna_types) else 0
    kinds, groups = [], []
    for count, kind in ((n_traj - n_traj // 2, "traj_up"), (n_traj // 2, "traj_down")):
        kinds += [kind] * count
        groups += [-1] * count
    for j, count in enumerate(_split(n_joint, design.n_joint)):
        kinds += ["joint"] * count
        groups += [j] * count
    for k, count in zip(rna_types, _split(n_rna, len(rna_types))):
        kinds += ["rna_only"] * count
        groups += [int(k)] * count
    n_house = n - len(kinds)
    if n_house < 0:
        raise CoemInputError(f"n_genes is too small for the requested programmes (short by {-n_house})")
    kinds += ["housekeeping"] * n_house
    groups += [-1] * n_house
    order = rng.permutation(n)
    return pd.DataFrame({"programme": np.asarray(kinds)[order], "group": np.asarray(groups)[order]})


def _gene_parameters(rng: np.random.Generator, prog: pd.DataFrame, lag: float) -> pd.DataFrame:
    """Baseline, fold change when active, NB dispersion and trajectory switch time per gene."""
    n = len(prog)
    kind = prog["programme"].to_numpy()
    baseline = rng.lognormal(0.0, 0.8, n)
    fold = np.where(kind == "housekeeping", 1.0, rng.lognormal(math.log(8.0), 0.4, n))
    theta = rng.lognormal(math.log(4.0), 0.5, n)
    tau = np.where(np.char.startswith(kind.astype(str), "traj"), rng.uniform(0.1, 0.9 - lag, n), np.nan)
    return prog.assign(baseline=baseline, fold_change=fold, dispersion=theta, tau=tau)


def _plan_links(rng: np.random.Generator, kind: np.ndarray, budget: int) -> np.ndarray:
    """0-3 planted links per gene; cut housekeeping links, then extra distal ones, to fit ``budget``."""
    n = len(kind)
    regulated = np.isin(kind, ["joint", "traj_up", "traj_down"])
    n_links = np.where(regulated, rng.choice([1, 2, 3], n, p=[0.3, 0.4, 0.3]),
                       rng.choice([0, 1, 2, 3], n, p=[0.4, 0.3, 0.2, 0.1]))
    n_links[kind == "rna_only"] = 0
    minimum = regulated.astype(int)
    if minimum.sum() > budget:
        raise CoemInputError(
            f"n_peaks is too small: {int(minimum.sum())} regulated genes need a promoter peak each, "
            f"but only {budget} peaks are left for links; raise n_peaks or lower n_genes"
        )
    excess = int(n_links.sum() - budget)
    if excess > 0:
        for mask in (~regulated, regulated):  # housekeeping first, then distal links of regulated genes
            slots = np.repeat(np.flatnonzero(mask), (n_links - minimum)[mask])
            drop = rng.choice(slots, size=min(excess, slots.size), replace=False)
            np.subtract.at(n_links, drop, 1)
            excess -= drop.size
            if excess <= 0:
                break
    return n_links


class _PeakLayout:
    """Places 500-bp peaks without overlaps (bins of 1 kb index the centres already used)."""

    def __init__(self, rng: np.random.Generator, chrom_sizes: dict):
        self.rng = rng
        self.sizes = chrom_sizes
        self.names = list(chrom_sizes)
        self.weights = np.array([chrom_sizes[c] for c in self.names], float)
        self.weights /= self.weights.sum()
        self.used: dict[tuple[str, int], list[int]] = {}
        self.rows: list[tuple[str, int, str, int, int]] = []  # chrom, centre, kind, gene idx, group

    def _free(self, chrom: str, centre: int) -> bool:
        half = PEAK_WIDTH // 2
        if centre - half < 0 or centre + half > self.sizes[chrom]:
            return False
        b = centre // 1000
        return all(abs(centre - c) >= PEAK_WIDTH for k in (b - 1, b, b + 1) for c in self.used.get((chrom, k), ()))

    def add(self, chrom: str, centre: int, kind: str, gene: int = -1, group: int = -1) -> bool:
        if not self._free(chrom, centre):
            return False
        self.used.setdefault((chrom, centre // 1000), []).append(centre)
        self.rows.append((chrom, int(centre), kind, gene, group))
        return True

    def add_near(self, chrom: str, tss: int, gene: int) -> None:
        """A distal peak 3-95 kb from the TSS (retries until a free spot is found)."""
        for _ in range(200):
            offset = int(self.rng.uniform(3_000, 95_000)) * (1 if self.rng.random() < 0.5 else -1)
            if self.add(chrom, tss + offset, "distal", gene):
                return
        raise RuntimeError("could not place a distal peak; the genome is too crowded")

    def add_anywhere(self, kind: str, groups: np.ndarray) -> None:
        """One peak per entry of ``groups`` at uniform random free spots (drawn in bulk, retried)."""
        pending = np.asarray(groups)
        for _ in range(50):
            if not pending.size:
                return
            chroms = self.rng.choice(len(self.names), size=pending.size, p=self.weights)
            sizes = np.array([self.sizes[self.names[c]] for c in chroms])
            centres = (PEAK_WIDTH + self.rng.random(pending.size) * (sizes - 2 * PEAK_WIDTH)).astype(np.int64)
            placed = np.array([self.add(self.names[c], int(x), kind, -1, int(g))
                               for c, x, g in zip(chroms, centres, pending)], dtype=bool)
            pending = pending[~placed]
        if pending.size:
            raise RuntimeError("could not place all peaks; the genome is too crowded")


def _place_peaks(rng, genes: pd.DataFrame, n_links: np.ndarray, n_atac_only: np.ndarray, n_background: int,
                 chrom_sizes: dict) -> pd.DataFrame:
    """Promoter peaks at TSSs, distal peaks near their genes, ATAC-only and background peaks anywhere."""
    layout = _PeakLayout(rng, chrom_sizes)
    chrom, tss = genes["chrom"].to_numpy(), genes["tss"].to_numpy()
    for g in np.flatnonzero(n_links > 0):
        if not layout.add(chrom[g], int(tss[g]) + int(rng.integers(-150, 151)), "promoter", int(g)):
            raise RuntimeError("promoter peaks collide; TSSs should be >= 10 kb apart")
    for g in np.flatnonzero(n_links > 1):
        for _ in range(n_links[g] - 1):
            layout.add_near(chrom[g], int(tss[g]), int(g))
    layout.add_anywhere("atac_only", np.repeat(np.arange(len(n_atac_only)), n_atac_only))
    layout.add_anywhere("background", np.full(n_background, -1))
    peaks = pd.DataFrame(layout.rows, columns=["chrom", "centre", "kind", "gene_index", "group"])
    order = {c: i for i, c in enumerate(chrom_sizes)}
    peaks = peaks.assign(chrom_order=peaks["chrom"].map(order)).sort_values(["chrom_order", "centre"])
    peaks = peaks.drop(columns="chrom_order").reset_index(drop=True)
    peaks["start"] = peaks["centre"] - PEAK_WIDTH // 2
    peaks["end"] = peaks["centre"] + PEAK_WIDTH // 2
    peaks.index = pd.Index(peaks["chrom"] + ":" + peaks["start"].astype(str) + "-" + peaks["end"].astype(str),
                           name="peak")
    return peaks


def _peak_parameters(rng: np.random.Generator, peaks: pd.DataFrame, gene_kind: np.ndarray) -> pd.DataFrame:
    """Strength (lognormal, capped), openness when closed / when open, background openness.

    Enhancers of housekeeping genes open only partly (0.3): in single cells most distal
    elements are closed most of the time, which keeps ATAC at a realistic few % non-zero.
    """
    n = len(peaks)
    kind = peaks["kind"].to_numpy()
    gi = peaks["gene_index"].to_numpy()
    housekeeping = (gi >= 0) & (gene_kind[np.maximum(gi, 0)] == "housekeeping")
    closed = np.select([kind == "promoter", kind == "background"], [0.05, 0.0], default=0.005)
    opened = np.where(housekeeping & (kind == "distal"), 0.3, 1.0)
    level = np.where(kind == "background", rng.beta(0.3, 10.0, n), np.nan)
    strength = np.minimum(rng.lognormal(0.0, 1.5, n), 20.0)
    return peaks.assign(strength=strength, closed=closed, opened=opened, level=level)


# ----------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------


def make_barcodes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique 10x-like barcodes (16 random bases + '-1'), sorted as in cellranger output."""
    if n > 4**16 // 4:
        raise CoemInputError(f"cannot make {n} unique 16-mer barcodes")
    codes = np.unique(rng.integers(0, 4**16, size=int(n * 1.05) + 16, dtype=np.int64))
    while codes.size < n:
        codes = np.unique(np.concatenate([codes, rng.integers(0, 4**16, size=n, dtype=np.int64)]))
    codes = np.sort(rng.choice(codes, size=n, replace=False))
    digits = (codes[:, None] >> (2 * np.arange(15, -1, -1))) & 3
    letters = _BASES[digits].view("S16").ravel()
    return np.char.add(letters.astype(str), "-1")


def _make_obs(p: SimParams) -> tuple[pd.DataFrame, dict]:
    """States, pseudotime and per-cell library sizes for every cell (O(n_cells), never O(features))."""
    rng = np.random.default_rng([p.seed, _OBS])
    n_traj = int(round(p.n_cells * p.trajectory_fraction)) if p.trajectory_fraction > 0 else 0
    n_typed = p.n_cells - n_traj
    sizes = rng.multinomial(n_typed, rng.dirichlet(np.full(p.n_types, 8.0))) if p.n_types else np.zeros(0, int)
    type_index = rng.permutation(np.concatenate([np.repeat(np.arange(p.n_types), sizes), np.full(n_traj, p.n_types)]))
    on_traj = type_index == p.n_types
    t = np.full(p.n_cells, np.nan)
    t[on_traj] = rng.random(int(on_traj.sum()))
    third = np.minimum((np.nan_to_num(t) * 3).astype(int), 2)
    type_names = np.array([f"type_{k}" for k in range(p.n_types)] + ["trajectory"])
    state = np.where(on_traj, np.asarray(TRAJ_LABELS)[third], type_names[type_index])
    depth = rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], size=p.n_cells) * p.library_sigma
    hidden = {
        "type_index": type_index,
        "pseudotime": t,
        "rna_library": p.rna_median_counts * np.exp(depth[:, 0]),
        "atac_library": p.atac_median_counts * np.exp(depth[:, 1]),
        "mito_share": np.clip(0.04 * np.exp(0.5 * rng.standard_normal(p.n_cells)), 0.0, 0.6),
    }
    barcodes = make_barcodes(p.n_cells, np.random.default_rng([p.seed, _BARCODES]))
    state_order = [f"type_{k}" for k in range(p.n_types)] + (list(TRAJ_LABELS) if n_traj else [])
    cell_type = type_names[type_index]
    type_order = [c for c in type_names if c in set(cell_type)]
    obs = pd.DataFrame(
        {"state": pd.Categorical(state, categories=state_order),
         "cell_type": pd.Categorical(cell_type, categories=type_order),
         "pseudotime": t},
        index=pd.Index(barcodes, name="barcode"),
    )
    return obs, hidden


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ----------------------------------------------------------------------------------------
# The simulator
# ----------------------------------------------------------------------------------------


class MultiomeSimulator:
    """The drawn model (genome, programmes, cells); counts are drawn chunk by chunk on demand.

    ``genes`` / ``peaks`` hold the truth (programme, fold change, tau, peak kind ...), ``links``
    the planted gene-peak links, ``obs`` the cell states. ``iter_chunks()`` yields the counts.
    """

    def __init__(self, params: SimParams):
        self.params = p = params
        rng = np.random.default_rng([p.seed, _GENOME])
        self.design = type_design(p.n_types, p.twin_types)
        n_nuclear = p.n_genes - p.mito_genes
        nuclear, self.chrom_sizes = _nuclear_genes(rng, n_nuclear, p.chroms)
        prog = _gene_parameters(rng, _assign_programmes(rng, n_nuclear, self.design, p.has_trajectory), p.lag)
        ao_types = np.flatnonzero(self.design.atac_only)
        n_ao_total = int(round(0.10 * p.n_peaks)) if len(ao_types) else 0
        n_ao = np.zeros(p.n_types, int)
        n_ao[ao_types] = _split(n_ao_total, len(ao_types))
        budget = p.n_peaks - n_ao_total - int(math.ceil(0.10 * p.n_peaks))
        n_links = _plan_links(rng, prog["programme"].to_numpy(), budget)
        peaks = _place_peaks(rng, nuclear, n_links, n_ao, p.n_peaks - n_ao_total - int(n_links.sum()), self.chrom_sizes)
        self.peaks = _peak_parameters(rng, peaks, prog["programme"].to_numpy())
        self.chrom_sizes["chrM"] = CHRM_LENGTH
        self.nuclear = pd.concat([nuclear, prog.set_index(nuclear.index)], axis=1).assign(n_links=n_links)
        self.mito = _mito_genes(p.mito_genes)
        self.links = self._links()
        self.obs, self._cells = _make_obs(p)
        self._partner = None
        if p.has_low_quality:
            self._plant_low_quality()
        self._atac_profiles = None

    # --- truth tables -------------------------------------------------------------------
    @property
    def genes(self) -> pd.DataFrame:
        """Every gene (nuclear then chrM) with its truth: programme, group, baseline, fold change, tau, n_links."""
        mito = self.mito.assign(programme="mitochondrial", group=-1, n_links=0)
        return pd.concat([self.nuclear, mito])

    def _links(self) -> pd.DataFrame:
        linked = self.peaks[self.peaks["gene_index"] >= 0]
        genes = self.nuclear.iloc[linked["gene_index"].to_numpy()]
        links = pd.DataFrame({
            "gene": genes.index.to_numpy(),
            "peak": linked.index.to_numpy(),
            "distance": (linked["centre"].to_numpy() - genes["tss"].to_numpy()).astype(np.int64),
            "kind": linked["kind"].to_numpy(),
            "programme": genes["programme"].to_numpy(),
        })
        return links.sort_values(["gene", "distance"]).reset_index(drop=True)

    def rna_var(self, with_annotation: bool = True) -> pd.DataFrame:
        """RNA var per docs/developer.md: symbol index; gene_id, chrom, tss (float), strand, start, end."""
        genes = self.genes
        var = pd.DataFrame(index=pd.Index(genes.index.astype(str), name=None))
        var["gene_id"] = genes["gene_id"].to_numpy()
        if with_annotation:
            var["chrom"] = genes["chrom"].to_numpy()
            var["tss"] = genes["tss"].to_numpy().astype(float)
            var["strand"] = genes["strand"].to_numpy()
            var["start"] = genes["start"].to_numpy().astype(np.int64)
            var["end"] = genes["end"].to_numpy().astype(np.int64)
        return var

    def atac_var(self) -> pd.DataFrame:
        """ATAC var: index chrom:start-end; chrom, start, end (BED-like, 0-based start)."""
        var = self.peaks[["chrom", "start", "end"]].copy()
        var.index = pd.Index(var.index.astype(str), name=None)
        return var.astype({"start": np.int64, "end": np.int64})

    def tss_table(self) -> pd.DataFrame:
        """Annotation in the columns of shared/data/annotation/hg38_gene_tss.tsv."""
        return self.genes.reset_index()[TSS_TABLE_COLUMNS]

    # --- activities ---------------------------------------------------------------------
    def _gene_activity(self, type_index: np.ndarray, t: np.ndarray, lead: float) -> np.ndarray:
        """Programme activity in [0, 1] per cell x nuclear gene; trajectory genes switch at tau + lead."""
        kind = self.nuclear["programme"].to_numpy()
        group = self.nuclear["group"].to_numpy()
        d = self.design
        n_types = self.params.n_types
        table = np.zeros((n_types + 1, len(kind)))
        table[:, kind == "housekeeping"] = 1.0
        for k in range(n_types):
            table[k] = np.where((kind == "joint") & (group == d.joint[k]), 1.0, table[k])
            table[k] = np.where((kind == "rna_only") & (group == k), 1.0, table[k])
        act = table[type_index]
        rows = np.flatnonzero(type_index == n_types)
        if rows.size:
            up, down = np.flatnonzero(kind == "traj_up"), np.flatnonzero(kind == "traj_down")
            tau = self.nuclear["tau"].to_numpy()
            w = self.params.width
            act[np.ix_(rows, up)] = _sigmoid((t[rows, None] - tau[up] - lead) / w)
            act[np.ix_(rows, down)] = 1.0 - _sigmoid((t[rows, None] - tau[down] - lead) / w)
        return act

    def _peak_rates(self, type_index: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Unnormalised ATAC rate per profile x peak: strength x (closed + (opened - closed) x openness)."""
        pk = self.peaks
        chromatin = self._gene_activity(type_index, t, lead=0.0)
        chromatin[:, (self.nuclear["programme"] == "rna_only").to_numpy()] = 0.0
        gi = pk["gene_index"].to_numpy()
        open_ = np.zeros((len(type_index), len(pk)))
        linked = gi >= 0
        open_[:, linked] = chromatin[:, gi[linked]]
        ao = np.flatnonzero(pk["kind"].to_numpy() == "atac_only")
        open_[:, ao] = (type_index[:, None] == pk["group"].to_numpy()[ao][None, :]).astype(float)
        bg = np.flatnonzero(pk["kind"].to_numpy() == "background")
        open_[:, bg] = pk["level"].to_numpy()[bg]
        closed = pk["closed"].to_numpy()
        return pk["strength"].to_numpy() * (closed + (pk["opened"].to_numpy() - closed) * open_)

    def _profiles(self) -> "_GuideTables":
        """ATAC sampling tables: one per type, then a pseudotime grid for the trajectory."""
        if self._atac_profiles is None:
            k = self.params.n_types
            grid = np.linspace(0.0, 1.0, _TRAJ_GRID) if self.params.has_trajectory else np.zeros(0)
            type_index = np.concatenate([np.arange(k), np.full(grid.size, k)])
            t = np.concatenate([np.full(k, np.nan), grid])
            self._atac_profiles = _GuideTables(self._peak_rates(type_index, t))
        return self._atac_profiles

    # --- counts -------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return -(-self.params.n_cells // self.params.chunk_size)

    def chunk_slice(self, i: int) -> slice:
        cs = self.params.chunk_size
        return slice(i * cs, min((i + 1) * cs, self.params.n_cells))

    def rna_chunk(self, i: int) -> sp.csr_matrix:
        """Gamma-Poisson RNA counts for chunk ``i`` (dense only over the chunk's cells)."""
        rng = np.random.default_rng([self.params.seed, _CHUNK_RNA, i])
        s = self.chunk_slice(i)
        c = {k: v[s] for k, v in self._cells.items()}
        g = self.nuclear
        act = self._gene_activity(c["type_index"], c["pseudotime"], lead=self.params.lag)
        rate = g["baseline"].to_numpy() * (1.0 + (g["fold_change"].to_numpy() - 1.0) * act)
        rate *= ((1.0 - c["mito_share"]) / rate.sum(axis=1))[:, None]
        mito_w = np.linspace(2.0, 1.0, self.params.mito_genes)
        mito = c["mito_share"][:, None] * (mito_w / mito_w.sum())[None, :]
        mean = np.hstack([rate, mito]) * c["rna_library"][:, None]
        theta = np.concatenate([g["dispersion"].to_numpy(), np.full(self.params.mito_genes, 20.0)])
        noise = rng.standard_gamma(theta, size=mean.shape, dtype=np.float32) / theta.astype(np.float32)
        if self._partner is not None:
            empty = self._quality[s] == "empty"
            if empty.any() and (~empty).any():  # ambient RNA: the average profile of the chunk's cells
                ambient = mean[~empty] / mean[~empty].sum(axis=1, keepdims=True)
                mean[empty] = ambient.mean(axis=0) * c["rna_library"][empty, None]
        counts = sp.csr_matrix(rng.poisson(mean * noise).astype(np.float32))
        return self._add_doublet_partners(i, counts)

    def atac_chunk(self, i: int) -> sp.csr_matrix:
        """Poisson ATAC counts for chunk ``i``: N ~ Poisson(library), spread over peaks by openness."""
        rng = np.random.default_rng([self.params.seed, _CHUNK_ATAC, i])
        s = self.chunk_slice(i)
        type_index, t = self._cells["type_index"][s], self._cells["pseudotime"][s]
        total = rng.poisson(self._cells["atac_library"][s])
        k = self.params.n_types
        profile = type_index.copy()
        on_traj = np.flatnonzero(type_index == k)
        x = np.nan_to_num(t[on_traj]) * (_TRAJ_GRID - 1)
        lo = np.minimum(x.astype(int), _TRAJ_GRID - 2)
        upper = rng.binomial(total[on_traj], x - lo)
        profile[on_traj] = k + lo
        cells = np.concatenate([np.arange(len(total)), on_traj])
        prof = np.concatenate([profile, k + lo + 1])
        n = np.concatenate([total, upper])
        n[on_traj] -= upper
        if self._partner is not None:
            cells, prof, n = self._ambient_atac(rng, s, cells, prof, n, len(total))
        counts = self._profiles().sample(rng, cells, prof, n, len(total))
        return self._add_doublet_partners(i, counts)

    # --- planted low-quality cells (opt-in) ----------------------------------------------
    def _plant_low_quality(self) -> None:
        """Pick the low-quality cells (exact counts, own random stream) and change their libraries."""
        p = self.params
        rng = np.random.default_rng([p.seed, _QUALITY])
        n = p.n_cells
        order = rng.permutation(n)
        quality = np.full(n, "good", dtype=object)
        start = 0
        for kind, fraction in p.quality_fractions.items():
            k = int(round(fraction * n))
            quality[order[start:start + k]] = kind
            start += k
        c = {key: value.copy() for key, value in self._cells.items()}
        pick = {kind: np.flatnonzero(quality == kind) for kind in QUALITY_KINDS}
        e, low, dmg = pick["empty"], pick["low_count"], pick["damaged"]
        c["rna_library"][e] = 0.02 * p.rna_median_counts * np.exp(0.5 * rng.standard_normal(e.size))
        c["atac_library"][e] = 0.02 * p.atac_median_counts * np.exp(0.5 * rng.standard_normal(e.size))
        c["rna_library"][low] *= rng.uniform(0.03, 0.12, low.size)
        c["atac_library"][low] *= rng.uniform(0.03, 0.12, low.size)
        c["rna_library"][dmg] *= rng.uniform(0.1, 0.3, dmg.size)
        c["mito_share"][dmg] = rng.uniform(0.25, 0.6, dmg.size)
        c["atac_library"][dmg] *= rng.uniform(0.3, 1.0, dmg.size)
        # Doublets: each gets the counts of a good cell of the same chunk on top of its own.
        partner = np.full(n, -1, dtype=np.int64)
        for i in range(self.n_chunks):
            s = self.chunk_slice(i)
            idx = np.arange(s.start, s.stop)
            good = idx[quality[s] == "good"]
            doublets = idx[quality[s] == "doublet"]
            if doublets.size and good.size:
                partner[doublets] = rng.choice(good, size=doublets.size)
        self._cells, self._quality, self._partner = c, quality.astype(str), partner
        self.obs["quality"] = pd.Categorical(quality.astype(str), categories=("good",) + QUALITY_KINDS)

    def _ambient_atac(self, rng, s: slice, cells, prof, n, n_cells):
        """Empty droplets' ATAC counts spread evenly over the discrete types' profiles (ambient DNA)."""
        k = self.params.n_types
        empty = np.flatnonzero(self._quality[s] == "empty")
        if not empty.size or k == 0:
            return cells, prof, n
        drop = np.isin(cells, empty)
        totals = np.bincount(cells[drop], weights=n[drop], minlength=n_cells)[empty].astype(np.int64)
        split = np.stack([rng.multinomial(t, np.full(k, 1.0 / k)) for t in totals])  # empties x types
        keep = ~drop
        cells = np.concatenate([cells[keep], np.repeat(empty, k)])
        prof = np.concatenate([prof[keep], np.tile(np.arange(k), empty.size)])
        n = np.concatenate([n[keep], split.ravel()])
        return cells, prof, n

    def _add_doublet_partners(self, i: int, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Rows of doublets plus their partner's row (same chunk): a sum of two cells' counts."""
        if self._partner is None:
            return counts
        s = self.chunk_slice(i)
        rows = np.flatnonzero(self._partner[s] >= 0)
        if not rows.size:
            return counts
        m = counts.shape[0]
        extra = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, self._partner[s][rows] - s.start)), shape=(m, m))
        out = (sp.identity(m, dtype=np.float32, format="csr") + extra) @ counts
        out = sp.csr_matrix(out, dtype=np.float32)
        out.sort_indices()
        return out

    def iter_chunks(self) -> Iterator[tuple[slice, sp.csr_matrix, sp.csr_matrix]]:
        """Yield ``(cell slice, rna CSR, atac CSR)`` per chunk; memory stays O(chunk)."""
        for i in range(self.n_chunks):
            yield self.chunk_slice(i), self.rna_chunk(i), self.atac_chunk(i)

    def skeleton(self):
        """MuData with obs/var/uns but no X (filled by ``simulate_multiome`` or a streaming writer)."""
        import anndata as ad
        import mudata as md

        from coem.provenance import record_step

        rna = ad.AnnData(obs=pd.DataFrame(index=self.obs.index.copy()), var=self.rna_var())
        atac = ad.AnnData(obs=pd.DataFrame(index=self.obs.index.copy()), var=self.atac_var())
        with md.set_options(pull_on_update=False):  # mudata 0.4 behaviour: no copies of var columns
            mdata = md.MuData({"rna": rna, "atac": atac})
        for col in self.obs.columns:
            mdata.obs[col] = self.obs[col].to_numpy() if col == "pseudotime" else self.obs[col].values
        record_step(mdata, "simulate", self.params.record(), seed=self.params.seed,
                    n_links=int(len(self.links)), chrom_sizes=self.chrom_sizes)
        return mdata

    def simulate(self) -> "SimulatedMultiome":
        """All chunks stacked into one in-memory MuData (O(nnz) memory)."""
        log = get_logger("coem.simulate")
        start = time.perf_counter()
        rna, atac = [], []
        for _, r, a in self.iter_chunks():
            rna.append(r)
            atac.append(a)
        mdata = self.skeleton()
        mdata.mod["rna"].X = _stack_csr(rna, len(self.genes))
        mdata.mod["atac"].X = _stack_csr(atac, len(self.peaks))
        log.info("simulated %d cells x (%d genes + %d peaks), %d planted links, in %d chunks (%.1f s)",
                 self.params.n_cells, len(self.genes), len(self.peaks), len(self.links), self.n_chunks,
                 time.perf_counter() - start)
        return SimulatedMultiome(mdata=mdata, links=self.links, genes=self.genes, peaks=self.peaks,
                                 params=self.params, chrom_sizes=dict(self.chrom_sizes))


class _GuideTables:
    """Inverse-CDF sampling over peaks with a guide table: O(1) expected per draw, exact.

    ``searchsorted`` on 20,000 peaks costs ~log2(P) cache misses per count; the guide table
    jumps straight to the right neighbourhood, ~5x faster with identical results.
    """

    def __init__(self, rates: np.ndarray):
        cdf = np.cumsum(rates, axis=1)
        self.cdf = cdf / cdf[:, -1:]
        self.cdf[:, -1] = 1.0
        self.m = 2 * rates.shape[1]
        grid = np.arange(self.m) / self.m
        self.guide = np.stack([np.searchsorted(row, grid, side="right") for row in self.cdf]).astype(np.int32)

    def draw(self, profile: int, u: np.ndarray) -> np.ndarray:
        cdf = self.cdf[profile]
        c = self.guide[profile][(u * self.m).astype(np.int64)].astype(np.int64)
        active = np.flatnonzero(cdf[c] <= u)
        while active.size:
            c[active] += 1
            active = active[cdf[c[active]] <= u[active]]
        return c

    def sample(self, rng, cells: np.ndarray, prof: np.ndarray, n: np.ndarray, n_cells: int) -> sp.csr_matrix:
        """Counts matrix (n_cells x peaks): ``n[j]`` draws from profile ``prof[j]`` for cell ``cells[j]``."""
        rows, cols = [], []
        for p in np.unique(prof):
            pick = prof == p
            total = int(n[pick].sum())
            rows.append(np.repeat(cells[pick], n[pick]))
            cols.append(self.draw(int(p), rng.random(total)))
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_cells, self.cdf.shape[1]))
        m.sum_duplicates()  # sorts each row's peaks and adds up repeated draws
        return m


# ----------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------


@dataclass
class SimulatedMultiome:
    """A simulated dataset: the MuData plus the truth behind it.

    ``mdata``: rna/atac counts (CSR float32), obs ``state``/``cell_type``/``pseudotime``.
    ``links``: planted gene-peak links (gene, peak, distance = peak centre - TSS in bp, kind).
    ``genes`` / ``peaks``: per-feature truth (programme, fold change, tau, peak kind ...).
    """

    mdata: object
    links: pd.DataFrame
    genes: pd.DataFrame
    peaks: pd.DataFrame
    params: SimParams
    chrom_sizes: dict = field(default_factory=dict)

    def labels_frame(self) -> pd.DataFrame:
        """``barcode,label`` rows for a samplesheet labels CSV (label = the cell's state)."""
        obs = self.mdata.obs
        return pd.DataFrame({"barcode": obs.index.to_numpy(), "label": obs["state"].astype(str).to_numpy()})

    def tss_table(self) -> pd.DataFrame:
        """Gene annotation in the columns of shared/data/annotation/hg38_gene_tss.tsv."""
        return self.genes.reset_index()[TSS_TABLE_COLUMNS]


def _stack_csr(blocks: list[sp.csr_matrix], n_cols: int) -> sp.csr_matrix:
    """Row-stack CSR blocks with one copy of the data (int32 indices while they fit)."""
    nnz = sum(b.nnz for b in blocks)
    index_dtype = np.int32 if nnz < 2**31 else np.int64  # indices and indptr share one type
    indptr = [np.zeros(1, np.int64)]
    offset = 0
    for b in blocks:
        indptr.append(b.indptr[1:].astype(np.int64) + offset)
        offset += b.nnz
    data = np.concatenate([b.data for b in blocks] or [np.zeros(0, np.float32)])
    indices = np.concatenate([b.indices.astype(index_dtype, copy=False) for b in blocks] or [np.zeros(0, index_dtype)])
    indptr = np.concatenate(indptr).astype(index_dtype)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))


def simulate_multiome(n_cells: int = 1000, n_genes: int = 500, n_peaks: int = 3000, n_types: int = 4,
                      trajectory_fraction: float = 0.3, lag: float = 0.15, seed: int = 0,
                      **kwargs) -> SimulatedMultiome:
    """Simulate paired RNA + ATAC counts in memory (O(nnz)); extra ``kwargs`` go to ``SimParams``.

    For files larger than memory use ``coem.cli.simulate.write_h5mu_streaming`` instead.
    """
    params = SimParams(n_cells=n_cells, n_genes=n_genes, n_peaks=n_peaks, n_types=n_types,
                       trajectory_fraction=trajectory_fraction, lag=lag, seed=seed, **kwargs)
    return MultiomeSimulator(params).simulate()


def simulate_latent(n_cells: int, dim: int = 30, n_states: int = 10, seed: int = 0,
                    spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A latent space z (cells x dim, float32) of Gaussian states with known labels ``state_k``.

    For benchmarking the metacell step on a given z (skipping the VAE). States have unequal
    sizes; centres are ``spread`` within-state standard deviations apart on average.
    """
    if n_cells < 1 or dim < 1 or n_states < 1:
        raise CoemInputError(f"simulate_latent needs n_cells, dim, n_states >= 1 (got {n_cells}, {dim}, {n_states})")
    rng = np.random.default_rng([seed, 11])
    centres = rng.standard_normal((n_states, dim)) * (spread / math.sqrt(2.0))
    state = rng.choice(n_states, size=n_cells, p=rng.dirichlet(np.full(n_states, 5.0)))
    scale = rng.uniform(0.7, 1.3, n_states).astype(np.float32)
    z = np.empty((n_cells, dim), np.float32)
    for s in range(0, n_cells, 100_000):  # float32 all the way: 10^6 x 30 stays at 120 MB
        e = min(s + 100_000, n_cells)
        z[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32) * scale[state[s:e], None]
        z[s:e] += centres[state[s:e]].astype(np.float32)
    labels = np.array([f"state_{k}" for k in range(n_states)])[state]
    return z, labels
