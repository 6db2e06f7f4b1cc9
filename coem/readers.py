"""Read every supported input into ONE MuData in the layout of docs/developer.md.

Input kinds: a 10x cellranger-arc ``filtered_feature_bc_matrix.h5``, a MuData ``.h5mu``, or an
AnnData ``.h5ad`` pair. Whatever the source, the result has

- ``mdata.mod["rna"]``: raw integer counts (CSR float32); var index = unique gene symbol;
  var ``chrom`` (str, '' when unknown), ``tss`` (1-based float, NaN when unknown), ``strand``
  ('+', '-' or '.'), ``gene_id`` (str, '' when unknown);
- ``mdata.mod["atac"]``: raw integer (or binary) counts (CSR float32); var index
  ``chrom:start-end`` with int ``start``/``end`` as in the source (BED-like);
- the same barcodes, in the same order, in both modalities (the intersection).

Gene TSS from 10x ``interval`` (``chr1:116754429-116754467``): 10x writes intervals BED-like
(0-based start, exclusive end), spanning the gene's annotated TSSs, and without a strand. We take
``tss = start + 1`` (the interval's first base, 1-based) and ``strand = '.'``. Where a var
``strand`` column comes with the interval, '-' strand genes get ``tss = end`` (the interval's
last base, 1-based) and '+' genes ``start + 1``. For a strandless '-' strand gene the true TSS is
the interval's last base, so the error is at most the interval width (tens to hundreds of bases
for most genes; more for genes with far-apart alternative TSSs). A samplesheet ``annotation``
(GTF or TSS table) overrides these with stranded TSSs: see :func:`attach_annotation`.
:func:`write_10x_h5` keeps a gene's ``interval`` when var has one, else writes
``chrom:(tss-1)-tss`` so that reading back gives the same TSS (strand is lost, as in 10x files).

Peak contigs (see :func:`check_peak_contigs`): chr1-22, X, Y, M/MT with or without the 'chr'
prefix are chromosomes; unplaced/alt scaffolds (``chrUn_*``, ``chrN_*_random``/``_alt``/``_fix``,
``GL*``/``KI*``/``JH*`` accessions, ``hs37d5``, EBV) are recognised and kept by default (10x
peak calls routinely include a few); anything else is an error, because it usually means peak
names were not parsed right or the genome is not what the pipeline expects.
"""

from __future__ import annotations

import codecs
import gzip
import io
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from coem import __version__
from coem._logging import get_logger
from coem.annotation import read_annotation, strip_version
from coem.errors import CoemInputError

log = get_logger("coem.readers")

RNA_ALIASES = ("rna", "gex", "gene expression", "expression", "rna-seq")
ATAC_ALIASES = ("atac", "peaks", "chromatin", "chromatin accessibility", "atac-seq")
GENE_FEATURE, PEAK_FEATURE = "Gene Expression", "Peaks"
MIN_SHARED_FRACTION, MIN_SHARED_CELLS = 0.5, 10

_NUMBERED = [str(i) for i in range(1, 23)] + ["X", "Y", "M", "MT"]
PRIMARY_CONTIGS = frozenset(_NUMBERED + [f"chr{c}" for c in _NUMBERED])
SCAFFOLD_CONTIG = re.compile(
    r"^(chr[0-9XYM]{1,2}_\w+|chrUn_\w+|chrEBV|EBV|(GL|KI|JH|KB|KN|KV|KZ|ML|MU)\d+(\.\d+)?"
    r"|hs37d5|NC_\d+(\.\d+)?)$"
)
_INTERVAL = re.compile(r"^(?P<chrom>.+?)[:-](?P<start>\d+)-(?P<end>\d+)$")
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "symbol", "name")
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d+(\.\d+)?$")
# Columns the normalised tables replace (10x ones only restate the feature's name or type).
_PEAK_REDUNDANT = ("chrom", "start", "end", "interval", "gene_ids", "gene_id", "feature_types", "feature_type")
_GENE_REDUNDANT = ("chrom", "tss", "strand", "gene_id", "gene_ids", "feature_types", "feature_type")
_LABEL_HEADERS = {"barcode", "barcodes", "cell", "cells", "cell_id", "cellid", "obs_names", "index"}


# ---------------------------------------------------------------------------------------------
# Checks shared by every reader
# ---------------------------------------------------------------------------------------------

def check_counts(matrix, modality: str, sample: str | None = None, file=None) -> sp.csr_matrix:
    """Raw counts as CSR float32; error unless non-empty, finite, non-negative and integer."""
    X = sp.csr_matrix(matrix) if not sp.issparse(matrix) else matrix.tocsr()
    where = f"the {modality} matrix"
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CoemInputError(f"{where} is empty ({X.shape[0]} cells x {X.shape[1]} features)", sample, file)
    data = np.asarray(X.data)
    if not np.issubdtype(data.dtype, np.number):
        raise CoemInputError(f"{where} is not numeric (dtype {data.dtype})", sample, file)
    if np.isnan(data).any() or np.isinf(data).any():
        raise CoemInputError(f"{where} holds NaN or infinite values; raw counts are needed", sample, file)
    if (data < 0).any():
        raise CoemInputError(f"{where} holds negative values (min {data.min():g}); raw counts are needed", sample, file)
    frac = data != np.round(data)
    if frac.any():
        raise CoemInputError(
            f"{where} holds non-integer values (e.g. {data[frac][0]:g}): it looks normalised; "
            "give raw counts (for .h5ad, in X, layers['counts'] or .raw)", sample, file,
        )
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    if X.nnz == 0:
        raise CoemInputError(f"{where} holds only zeros", sample, file)
    X.sort_indices()
    return X


def check_peak_contigs(
    chroms: Iterable[str],
    extra_allowed: Iterable[str] = (),
    scaffolds: str = "keep",
    sample: str | None = None,
    file=None,
) -> np.ndarray:
    """Boolean mask of the peaks to keep; error on contigs that are not chromosome names.

    ``extra_allowed`` adds names (other genomes); ``scaffolds`` says what to do with peaks on
    unplaced/alt scaffolds: 'keep' (default), 'drop' or 'error'.
    """
    if scaffolds not in ("keep", "drop", "error"):
        raise ValueError(f"scaffolds must be 'keep', 'drop' or 'error', not {scaffolds!r}")
    chroms = pd.Series(np.asarray(list(chroms), dtype=object)).astype(str)
    allowed = PRIMARY_CONTIGS | frozenset(extra_allowed)
    primary = chroms.isin(allowed).to_numpy()
    scaffold = ~primary & chroms.str.match(SCAFFOLD_CONTIG).to_numpy()
    unknown = ~primary & ~scaffold
    if unknown.any():
        raise CoemInputError(
            f"{int(unknown.sum())} peaks lie on contigs that are not chromosome names: "
            f"{_few_counts(chroms[unknown])}. Expected chr1-22, X, Y, M (with or without 'chr') or "
            "unplaced/alt scaffolds; check the peak names (chrN:start-end) or, for another genome, "
            "allow its names through check_peak_contigs(extra_allowed=...)", sample, file,
        )
    if scaffold.any() and scaffolds == "error":
        raise CoemInputError(
            f"{int(scaffold.sum())} peaks lie on unplaced/alt scaffolds: {_few_counts(chroms[scaffold])}",
            sample, file,
        )
    if scaffold.any():
        verb = "dropped" if scaffolds == "drop" else "kept"
        log.info("%d peaks on unplaced/alt scaffolds %s (%s)", scaffold.sum(), verb, _few_counts(chroms[scaffold]))
    return ~scaffold if scaffolds == "drop" else np.ones(len(chroms), dtype=bool)


def _few_counts(values: pd.Series, n: int = 5) -> str:
    counts = values.value_counts()
    shown = ", ".join(f"'{k}' ({v})" for k, v in counts.head(n).items())
    return shown + (f" and {len(counts) - n} more" if len(counts) > n else "")


def _few(values, n: int = 3) -> str:
    values = list(values)
    return ", ".join(map(repr, values[:n])) + (" ..." if len(values) > n else "")


def check_unique_barcodes(names: pd.Index, modality: str, sample=None, file=None) -> None:
    """Duplicated barcodes make the cell-to-cell match between modalities ambiguous."""
    dup = names[names.duplicated()]
    if len(dup):
        raise CoemInputError(
            f"{len(dup)} duplicated barcodes in the {modality} modality (e.g. {_few(dup.unique())}); "
            "each cell must appear once (merge or rename them)", sample, file,
        )


def shared_barcodes(
    rna_names: pd.Index, atac_names: pd.Index, sample=None, file=None,
    min_fraction: float = MIN_SHARED_FRACTION, min_cells: int = MIN_SHARED_CELLS,
) -> pd.Index:
    """Barcodes in both modalities (RNA order); error when the overlap is too small to be one sample."""
    check_unique_barcodes(rna_names, "rna", sample, file)
    check_unique_barcodes(atac_names, "atac", sample, file)
    shared = rna_names[rna_names.isin(atac_names)]
    log.info("barcodes: rna %d, atac %d, shared %d", len(rna_names), len(atac_names), len(shared))
    smaller = min(len(rna_names), len(atac_names))
    if len(shared) < min_cells or len(shared) < min_fraction * smaller:
        raise CoemInputError(
            f"only {len(shared)} barcodes are shared by rna ({len(rna_names)}) and atac ({len(atac_names)}); "
            f"need at least {min_cells} and {min_fraction:.0%} of the smaller modality. The two modalities "
            "probably come from different samples or name cells differently (prefixes, '-1' suffixes); "
            f"e.g. rna {_few(rna_names)} vs atac {_few(atac_names)}", sample, file,
        )
    return shared


# ---------------------------------------------------------------------------------------------
# Feature tables
# ---------------------------------------------------------------------------------------------

def parse_intervals(values: Iterable[str]) -> pd.DataFrame:
    """``chrN:start-end`` or ``chrN-start-end`` -> chrom/start/end; unparsable rows get NaN."""
    parts = pd.Series(np.asarray(list(values), dtype=object)).astype(str).str.extract(_INTERVAL)
    out = pd.DataFrame({"chrom": parts["chrom"]})
    out["start"] = pd.to_numeric(parts["start"])
    out["end"] = pd.to_numeric(parts["end"])
    return out


def peak_table(var: pd.DataFrame, sample=None, file=None) -> pd.DataFrame:
    """Peaks' chrom/start/end from var columns, from ``interval`` or from the names."""
    if {"chrom", "start", "end"} <= set(var.columns) and not var[["chrom", "start", "end"]].isna().any().any():
        coords = pd.DataFrame({"chrom": var["chrom"].astype(str).to_numpy(),
                               "start": pd.to_numeric(var["start"]).to_numpy(),
                               "end": pd.to_numeric(var["end"]).to_numpy()})
    else:
        source = var["interval"] if "interval" in var.columns else var.index
        coords = parse_intervals(source)
        bad = coords.isna().any(axis=1).to_numpy()
        if bad.any():
            raise CoemInputError(
                f"{int(bad.sum())} peak names cannot be read as chrN:start-end or chrN-start-end "
                f"(e.g. {_few(np.asarray(source)[bad])}); give var columns chrom/start/end instead", sample, file,
            )
    coords["start"] = coords["start"].astype(np.int64)
    coords["end"] = coords["end"].astype(np.int64)
    if (coords["end"] <= coords["start"]).any() or (coords["start"] < 0).any():
        raise CoemInputError("some peaks have end <= start or a negative start", sample, file)
    names = coords["chrom"] + ":" + coords["start"].astype(str) + "-" + coords["end"].astype(str)
    if names.duplicated().any():
        raise CoemInputError(f"duplicated peaks: {_few(names[names.duplicated()])}; each peak must appear once", sample, file)
    extra = var.drop(columns=[c for c in _PEAK_REDUNDANT if c in var.columns])
    table = pd.concat([coords.reset_index(drop=True), extra.reset_index(drop=True)], axis=1)
    table.index = pd.Index(names.to_numpy(), dtype=object)
    return table


def gene_table(var: pd.DataFrame) -> pd.DataFrame:
    """Genes: unique symbols as index; chrom/tss/strand/gene_id normalised (unknown = ''/NaN/'.')."""
    var = var.copy()
    symbols = pd.Index(var.index.astype(str))
    symbol_col = next((c for c in _SYMBOL_COLUMNS if c in var.columns), None)
    if symbol_col is not None and symbols.str.match(_ENSEMBL).mean() > 0.5:
        if "gene_id" not in var.columns and "gene_ids" not in var.columns:
            var["gene_id"] = symbols
        symbols = pd.Index(var[symbol_col].astype(str))
    id_col = "gene_id" if "gene_id" in var.columns else ("gene_ids" if "gene_ids" in var.columns else None)
    gene_id = var[id_col].astype(object).fillna("").astype(str).to_numpy() if id_col else np.full(len(var), "")
    chrom, tss, strand = _gene_positions(var)
    var = var.drop(columns=[c for c in _GENE_REDUNDANT if c in var.columns])
    if "interval" in var.columns:
        var["interval"] = var["interval"].astype(object).fillna("NA").astype(str)
    var.insert(0, "chrom", chrom)
    var.insert(1, "tss", tss)
    var.insert(2, "strand", strand)
    var.insert(3, "gene_id", gene_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        var.index = ad.utils.make_index_unique(symbols)
    return var


def _gene_positions(var: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """chrom, 1-based TSS, strand from var tss columns, else from a 10x-style BED interval.

    Interval -> TSS: ``end`` for '-' strand genes, ``start + 1`` otherwise ('+' or unknown; 10x
    intervals carry no strand, so 10x genes get ``start + 1`` and strand '.').
    """
    n = len(var)
    if "tss" in var.columns:
        tss = pd.to_numeric(var["tss"].astype(object), errors="coerce").astype(float).to_numpy()
        chrom = var["chrom"].astype(object).fillna("").astype(str).to_numpy() if "chrom" in var.columns else np.full(n, "")
        strand = var["strand"].astype(object).fillna(".").astype(str).to_numpy() if "strand" in var.columns else np.full(n, ".")
    elif "interval" in var.columns:
        parts = parse_intervals(var["interval"].astype(object).fillna("NA"))
        strand = var["strand"].astype(object).fillna(".").astype(str).to_numpy() if "strand" in var.columns else np.full(n, ".")
        # BED interval: first base is start + 1 (1-based), last base is end; '-' genes start at the end.
        tss = np.where(strand == "-", parts["end"], parts["start"] + 1).astype(float)
        chrom = parts["chrom"].fillna("").astype(str).to_numpy()
    else:
        return np.full(n, "", dtype=object), np.full(n, np.nan), np.full(n, ".", dtype=object)
    strand = np.where(np.isin(strand, ["+", "-"]), strand, ".")
    chrom = np.where(np.isnan(tss), "", chrom)
    return chrom.astype(object), tss, strand.astype(object)


# ---------------------------------------------------------------------------------------------
# Assembly: two AnnData -> one checked MuData
# ---------------------------------------------------------------------------------------------

def assemble(
    rna: ad.AnnData, atac: ad.AnnData, sample: str | None = None, file=None,
    obs: pd.DataFrame | None = None, extra_contigs: Iterable[str] = (), scaffolds: str = "keep",
) -> md.MuData:
    """Check counts, normalise features, intersect barcodes and build the MuData."""
    rna, atac = _with_counts(rna, "rna"), _with_counts(atac, "atac")
    rna = ad.AnnData(X=check_counts(rna.X, "rna", sample, file),
                     obs=_str_index(rna.obs), var=gene_table(rna.var), uns=dict(rna.uns))
    peaks = peak_table(atac.var, sample, file)
    keep = check_peak_contigs(peaks["chrom"], extra_contigs, scaffolds, sample, file)
    counts = atac.X
    atac = ad.AnnData(X=check_counts(counts[:, keep] if not keep.all() else counts, "atac", sample, file),
                      obs=_str_index(atac.obs), var=peaks[keep], uns=dict(atac.uns))
    shared = shared_barcodes(rna.obs_names, atac.obs_names, sample, file)
    return multiome({"rna": rna[shared].copy(), "atac": atac[shared].copy()}, rna.n_obs, atac.n_obs, obs)


def multiome(mods: Mapping[str, ad.AnnData], rna_barcodes: int, atac_barcodes: int,
             obs: pd.DataFrame | None = None) -> md.MuData:
    """The MuData of the two modalities (already on their shared cells), with what the barcode
    intersection cost and the input's global ``obs`` columns (labels ...) on those cells."""
    mdata = _quiet(md.MuData, dict(mods))
    # What the intersection cost, for the QC step's data-loss warnings (coem.qc.data_loss_warnings).
    mdata.uns["coem_input"] = {"rna_barcodes": int(rna_barcodes), "atac_barcodes": int(atac_barcodes),
                               "shared_barcodes": int(mdata.n_obs)}
    if obs is not None and len(obs.columns):
        for col in obs.columns:
            mdata.obs[col] = obs[col].reindex(mdata.obs_names).to_numpy()
    update(mdata)
    return mdata


def update(mdata: md.MuData) -> md.MuData:
    """``mdata.update()`` without mudata's FutureWarning about pulling columns."""
    _quiet(mdata.update)
    return mdata


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return func(*args, **kwargs)


def _with_counts(adata: ad.AnnData, modality: str) -> ad.AnnData:
    """The AnnData whose X holds the raw counts: ``layers['counts']`` when present; else X, unless
    X is normalised and ``.raw`` holds integers (scanpy's habit), then ``.raw`` with its var."""
    if "counts" in adata.layers:
        return ad.AnnData(X=adata.layers["counts"], obs=adata.obs, var=adata.var, uns=dict(adata.uns))
    if adata.raw is not None and not looks_integer(adata.X) and looks_integer(adata.raw.X):
        log.info("%s: X is normalised; the raw counts in .raw are used (%d features)", modality, adata.raw.n_vars)
        return ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var, uns=dict(adata.uns))
    return adata


def looks_integer(matrix, n: int = 100_000) -> bool:
    """Whether the first ``n`` stored values are whole numbers (a cheap test for raw counts)."""
    values = matrix.data[:n] if sp.issparse(matrix) else np.asarray(matrix).ravel()[:n]
    return bool(np.issubdtype(values.dtype, np.number) and np.all(np.mod(values, 1) == 0))


def _str_index(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.index = pd.Index(frame.index.astype(str), dtype=object)
    return frame


# ---------------------------------------------------------------------------------------------
# What a file is, from its internal layout (not its name)
# ---------------------------------------------------------------------------------------------

# kind -> (what it is, the samplesheet column(s) it belongs in)
FILE_KINDS = {
    "h5": ("a 10x cellranger-arc feature-barcode matrix (HDF5 with /matrix)", "'h5'"),
    "h5mu": ("a MuData file (HDF5 with /mod)", "'h5mu'"),
    "h5ad": ("an AnnData file (HDF5 with /X, /obs, /var)", "'rna' or 'atac' (one AnnData per modality)"),
    "loom": ("a loom file (HDF5 with /matrix and /row_attrs)", ""),
    "hdf5": ("an HDF5 file of another kind", ""),
}
_TEXT_KINDS = ((b"\x1f\x8b", "gzip-compressed data"), (b"PK\x03\x04", "a zip archive"),
               (b"\x89PNG", "a PNG image"), (b"%PDF", "a PDF document"))


def sniff_file_kind(path: str | Path) -> str | None:
    """'h5', 'h5mu', 'h5ad', 'loom' or 'hdf5' for an HDF5 file, by its groups; None when the
    file is not HDF5 or cannot be opened (the reader's own error then says why)."""
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as handle:
            keys = set(handle.keys())
    except (OSError, ValueError):
        return None
    if "mod" in keys:
        return "h5mu"
    if "matrix" in keys:
        return "loom" if "row_attrs" in keys else "h5"
    if {"obs", "var"} <= keys:
        return "h5ad"
    return "hdf5"


def _describe_non_hdf5(path: str | Path) -> str:
    """'it starts like text: ...' / 'it is gzip-compressed data' / 'it is empty'."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty (0 bytes)"
    for magic, what in _TEXT_KINDS:
        if head.startswith(magic):
            return f"it is {what}"
    try:
        first_line = head.decode("utf-8").splitlines()[0][:40]
        return f"it starts like text: {first_line!r}"
    except (UnicodeDecodeError, IndexError):
        return "it is binary data of an unknown kind"


def expect_file_kind(path: str | Path, expected: str, sample: str | None = None, reading: str = "") -> None:
    """Fail with the right samplesheet column when a readable HDF5 file is of another kind than
    ``expected``; say what a non-HDF5 file looks like. Unreadable HDF5 passes (its reader says why)."""
    if not Path(path).is_file():
        raise CoemInputError("input file not found", sample, path)
    want, _ = FILE_KINDS[expected]
    if not h5py.is_hdf5(path):
        raise CoemInputError(f"cannot read the file as HDF5{reading}: not an HDF5 file (file signature not "
                             f"found): {_describe_non_hdf5(path)}; expected {want}", sample, path)
    kind = sniff_file_kind(path)
    if kind is None or kind == expected or kind == "hdf5":
        return  # an HDF5 file of no known kind: the reader names what is missing
    what, column = FILE_KINDS[kind]
    if kind == "loom":
        raise CoemInputError(f"this is {what}, not {want}; convert it first, e.g. anndata.read_loom(path)"
                             ".write_h5ad(...) per modality, and use the 'rna' and 'atac' columns", sample, path)
    raise CoemInputError(f"this is {what}, not {want}; in the samplesheet it belongs in the {column} column",
                         sample, path)


# ---------------------------------------------------------------------------------------------
# 10x cellranger-arc h5
# ---------------------------------------------------------------------------------------------

def read_10x_h5(path: str | Path, sample: str | None = None, **options) -> md.MuData:
    """Read a cellranger-arc ``filtered_feature_bc_matrix.h5`` (features x cells, CSC)."""
    with open_10x_matrix(path, sample) as group:
        barcodes, features = read_10x_features(group, sample, path)
        # CSC of features x cells has the same arrays as CSR of cells x features.
        X = sp.csr_matrix((group["data"][:], group["indices"][:], group["indptr"][:]),
                          shape=(len(barcodes), len(features)))
    obs, (rna_var, genes), (atac_var, peaks) = tenx_modalities(barcodes, features, sample, path)
    rna = ad.AnnData(X=X[:, genes], obs=obs, var=rna_var)
    atac = ad.AnnData(X=X[:, peaks], obs=obs.copy(), var=atac_var)
    return assemble(rna, atac, sample, path, **options)


@contextmanager
def open_10x_matrix(path: str | Path, sample: str | None = None):
    """The ``/matrix`` group of a 10x ``.h5``, with a named error when the file is not one."""
    expect_file_kind(path, "h5", sample)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise CoemInputError(f"cannot read the file as HDF5: {err}", sample, path) from err
    with handle:
        if "matrix" not in handle:
            raise CoemInputError("not a 10x feature-barcode matrix: the HDF5 file has no '/matrix' group "
                                 "(cellranger-arc's filtered_feature_bc_matrix.h5 is expected)", sample, path)
        yield handle["matrix"]


def tenx_modalities(barcodes: np.ndarray, features: pd.DataFrame, sample=None, path=None):
    """A 10x matrix's obs, and (var, column mask) of its genes and of its peaks."""
    kind = features["feature_type"]
    others = sorted(set(kind) - {GENE_FEATURE, PEAK_FEATURE})
    if others:
        log.warning("ignoring feature types %s in %s", others, path)
    for needed, what in ((GENE_FEATURE, "genes"), (PEAK_FEATURE, "peaks")):
        if not (kind == needed).any():
            raise CoemInputError(f"the matrix has no '{needed}' features ({what}); a cellranger-arc "
                                 "multiome matrix holds both 'Gene Expression' and 'Peaks'", sample, path)
    obs = pd.DataFrame(index=pd.Index(barcodes, dtype=object))
    genes, peaks = (kind == GENE_FEATURE).to_numpy(), (kind == PEAK_FEATURE).to_numpy()
    rna_var = pd.DataFrame({"gene_id": features["id"][genes].to_numpy(), "genome": features["genome"][genes].to_numpy(),
                            "interval": features["interval"][genes].to_numpy()},
                           index=pd.Index(features["name"][genes].to_numpy(), dtype=object))
    peak_names = features["interval"][peaks].where(features["interval"][peaks] != "NA", features["name"][peaks])
    atac_var = pd.DataFrame({"interval": peak_names.to_numpy(), "genome": features["genome"][peaks].to_numpy()},
                            index=pd.Index(features["name"][peaks].to_numpy(), dtype=object))
    return obs, (rna_var, genes), (atac_var, peaks)


def _decode(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_10x_features(group: h5py.Group, sample, path) -> tuple[np.ndarray, pd.DataFrame]:
    """/matrix -> (barcodes, features table), without the counts; layout errors named."""
    needed = ["barcodes", "data", "indices", "indptr", "shape", "features"]
    missing = [k for k in needed if k not in group]
    if missing:
        raise CoemInputError(f"10x matrix lacks /matrix/{', /matrix/'.join(missing)}", sample, path)
    n_features, n_cells = (int(v) for v in group["shape"][:])
    barcodes = _decode(group["barcodes"][:])
    feats = group["features"]
    if "id" not in feats or "feature_type" not in feats:
        raise CoemInputError("10x matrix lacks /matrix/features/id or feature_type", sample, path)
    table = pd.DataFrame({"id": _decode(feats["id"][:])})
    for key in ("name", "feature_type", "genome", "interval"):
        table[key] = _decode(feats[key][:]) if key in feats else (table["id"] if key == "name" else "NA")
    n_indptr = group["indptr"].shape[0]
    if len(barcodes) != n_cells or len(table) != n_features or n_indptr != n_cells + 1:
        raise CoemInputError(
            f"inconsistent 10x matrix: shape {n_features} x {n_cells} but {len(table)} features, "
            f"{len(barcodes)} barcodes and {n_indptr} indptr entries", sample, path,
        )
    return barcodes, table


def write_10x_h5(mdata: md.MuData, path: str | Path, genome: str | None = None) -> Path:
    """Write rna+atac as a cellranger-arc ``filtered_feature_bc_matrix.h5`` (the inverse of read_10x_h5).

    Gene ids come from var ``gene_id`` (symbol when empty); gene intervals from var ``interval``
    when present, else ``chrom:tss-1-tss`` (so reading back gives the same 1-based TSS), else 'NA'.
    """
    rna, atac = mdata.mod["rna"], mdata.mod["atac"]
    if not rna.obs_names.equals(atac.obs_names):
        raise ValueError("rna and atac must hold the same barcodes in the same order")
    X = sp.hstack([sp.csr_matrix(rna.X), sp.csr_matrix(atac.X)], format="csr")
    X.sort_indices()
    features = pd.concat([_10x_gene_features(rna.var, genome), _10x_peak_features(atac.var, genome)], ignore_index=True)
    path = Path(path)
    with h5py.File(path, "w") as handle:
        handle.attrs["filetype"] = "matrix"
        handle.attrs["version"] = 2
        handle.attrs["software_version"] = f"coem {__version__}"
        group = handle.create_group("matrix")
        _dataset(group, "barcodes", _bytes(rna.obs_names))
        _dataset(group, "data", X.data.astype(np.int32))
        _dataset(group, "indices", X.indices.astype(np.int64))
        _dataset(group, "indptr", X.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        feats = group.create_group("features")
        for key in ("id", "name", "feature_type", "genome", "interval"):
            _dataset(feats, key, _bytes(features[key]))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome", b"interval"]))
    return path


def _dataset(group, name, data):
    group.create_dataset(name, data=data, compression="gzip", shuffle=True)


def _bytes(values) -> np.ndarray:
    return np.array([str(v).encode() for v in values], dtype="S")


def _10x_gene_features(var: pd.DataFrame, genome: str | None) -> pd.DataFrame:
    names = var.index.astype(str)
    ids = var["gene_id"].astype(str).to_numpy() if "gene_id" in var.columns else np.full(len(var), "")
    ids = np.where(ids == "", names, ids)
    if "interval" in var.columns:
        interval = var["interval"].astype(str).to_numpy()
    else:
        tss = var["tss"].to_numpy(dtype=float) if "tss" in var.columns else np.full(len(var), np.nan)
        chrom = var["chrom"].astype(str).to_numpy() if "chrom" in var.columns else np.full(len(var), "")
        interval = np.array([f"{c}:{int(t) - 1}-{int(t)}" if np.isfinite(t) and c else "NA" for c, t in zip(chrom, tss)])
    return pd.DataFrame({"id": ids, "name": names, "feature_type": GENE_FEATURE,
                         "genome": _genome(var, genome), "interval": interval})


def _10x_peak_features(var: pd.DataFrame, genome: str | None) -> pd.DataFrame:
    names = (var["chrom"].astype(str) + ":" + var["start"].astype(str) + "-" + var["end"].astype(str)).to_numpy()
    return pd.DataFrame({"id": names, "name": names, "feature_type": PEAK_FEATURE,
                         "genome": _genome(var, genome), "interval": names})


def _genome(var: pd.DataFrame, genome: str | None) -> np.ndarray:
    if genome is not None:
        return np.full(len(var), genome, dtype=object)
    if "genome" in var.columns:
        return var["genome"].astype(str).to_numpy()
    return np.full(len(var), "", dtype=object)


# ---------------------------------------------------------------------------------------------
# MuData and AnnData inputs
# ---------------------------------------------------------------------------------------------

def read_h5mu(path: str | Path, sample: str | None = None, **options) -> md.MuData:
    """Read a MuData file; modalities may be called rna/RNA/gex and atac/ATAC/peaks."""
    expect_file_kind(path, "h5mu", sample, " (.h5mu)")
    try:
        with warnings.catch_warnings():  # older MuData layouts read fine but warn at length
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            source = _quiet(md.read_h5mu, path)
    except (OSError, KeyError, ValueError) as err:
        raise CoemInputError(f"cannot read the file as MuData (.h5mu): {err}", sample, path) from err
    rna = source.mod[find_modality(source.mod, RNA_ALIASES, "rna", sample, path)]
    atac = source.mod[find_modality(source.mod, ATAC_ALIASES, "atac", sample, path)]
    global_obs = source.obs.loc[:, [c for c in source.obs.columns if ":" not in str(c)]]
    global_obs.index = global_obs.index.astype(str)
    return assemble(rna, atac, sample, path, obs=global_obs, **options)


def find_modality(mods: Mapping[str, ad.AnnData], aliases: tuple[str, ...], role: str, sample=None, file=None) -> str:
    """The one modality whose name (case-insensitive) is one of ``aliases``."""
    hits = [name for name in mods if name.strip().lower() in aliases]
    if len(hits) == 1:
        return hits[0]
    what = "no" if not hits else "more than one"
    raise CoemInputError(
        f"{what} {role} modality among {sorted(mods)}; name it one of {', '.join(aliases)}", sample, file,
    )


def read_anndata_pair(rna_path: str | Path, atac_path: str | Path, sample: str | None = None, **options) -> md.MuData:
    """Read an RNA .h5ad and an ATAC .h5ad of the same cells."""
    rna = _read_h5ad(rna_path, sample)
    atac = _read_h5ad(atac_path, sample)
    return assemble(rna, atac, sample, f"{rna_path} + {atac_path}", **options)


def _read_h5ad(path, sample) -> ad.AnnData:
    expect_file_kind(path, "h5ad", sample, " (.h5ad)")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise CoemInputError(f"cannot read the file as AnnData (.h5ad): {err}", sample, path) from err


# ---------------------------------------------------------------------------------------------
# Annotation and labels
# ---------------------------------------------------------------------------------------------

def attach_annotation(mdata: md.MuData, annotation, sample: str | None = None) -> dict:
    """Give genes a stranded TSS from an annotation (path or table of coem.annotation), in place.

    Genes are matched by symbol, then the rest by gene_id (Ensembl versions ignored). Matched
    genes take the annotation's chrom/tss/strand (it is stranded, unlike 10x intervals);
    unmatched genes keep what they had. Returns the counts it logs.
    """
    file = None if isinstance(annotation, pd.DataFrame) else annotation
    table = annotation if file is None else read_annotation(annotation)
    rna = mdata.mod["rna"]
    var = rna.var
    chrom = match_chrom_style(table["chrom"], mdata.mod["atac"].var["chrom"])
    by_symbol = pd.Series(np.arange(len(table)), index=table["symbol"].to_numpy())
    by_symbol = by_symbol[by_symbol.index != ""]
    ids = pd.Series(np.arange(len(table)), index=strip_version(table["gene_id"]))
    ids = ids[~ids.index.duplicated() & (ids.index != "")]
    row = pd.Series(var.index).map(by_symbol).to_numpy(dtype=float)
    n_symbol = int(np.isfinite(row).sum())
    if "gene_id" in var.columns:
        by_id = pd.Series(strip_version(var["gene_id"])).map(ids).to_numpy(dtype=float)
        row = np.where(np.isfinite(row), row, by_id)
    hit = np.isfinite(row)
    if not hit.any():
        raise CoemInputError(
            f"no gene matches the annotation by symbol or gene_id (genes e.g. {_few(var.index)}; annotation "
            f"e.g. {_few(table['symbol'])}): wrong organism or annotation?", sample, file,
        )
    idx = row[hit].astype(int)
    new_chrom = var["chrom"].astype(object).to_numpy().copy()
    new_tss = var["tss"].to_numpy(dtype=float).copy()
    new_strand = var["strand"].astype(object).to_numpy().copy()
    new_chrom[hit] = chrom[idx]
    new_tss[hit] = table["tss"].to_numpy(dtype=float)[idx]
    new_strand[hit] = table["strand"].to_numpy(dtype=object)[idx]
    var["chrom"], var["tss"], var["strand"] = new_chrom, new_tss, new_strand
    stats = {"genes": len(var), "by_symbol": n_symbol, "by_gene_id": int(hit.sum()) - n_symbol,
             "with_tss": int(np.isfinite(var["tss"].to_numpy(dtype=float)).sum())}
    log.info("annotation: %(by_symbol)d genes matched by symbol, %(by_gene_id)d by gene_id; "
             "%(with_tss)d of %(genes)d genes have a TSS", stats)
    update(mdata)
    return stats


def match_chrom_style(chroms: pd.Series, reference: pd.Series) -> np.ndarray:
    """Write annotation chromosome names like the peaks do ('chr1' vs '1', 'chrM' vs 'MT')."""
    chroms = chroms.astype(str)
    ref_chr = pd.Series(reference).astype(str).str.startswith("chr").mean() > 0.5
    ann_chr = chroms.str.startswith("chr").mean() > 0.5
    if ref_chr and not ann_chr:
        chroms = ("chr" + chroms).replace({"chrMT": "chrM"})
    elif ann_chr and not ref_chr:
        chroms = chroms.str.replace(r"^chr", "", regex=True).replace({"M": "MT"})
    return chroms.to_numpy(dtype=object)


def decode_text(path: str | Path) -> str:
    """A small text file's content whatever wrote it: UTF-8 (with or without BOM), UTF-16 with a
    BOM (Excel's 'Unicode text'), else Windows-1252 (Excel's CSV on Western Windows); gzip too."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _separator(text: str) -> str:
    """Comma, tab or semicolon (Excel's CSV where the comma is the decimal mark), by the first line."""
    first = text.split("\n", 1)[0]
    counts = {sep: first.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_labels(path: str | Path, sample: str | None = None) -> pd.Series:
    """Labels file (CSV or TSV, ``barcode,label``, header optional) -> Series indexed by barcode."""
    try:
        text = decode_text(path)
        table = pd.read_csv(io.StringIO(text), sep=_separator(text), header=None, dtype=str, keep_default_na=False)
    except (OSError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CoemInputError(f"cannot read the labels file: {err}", sample, path) from err
    if table.shape[1] < 2:
        raise CoemInputError("the labels file needs two columns: barcode,label", sample, path)
    if table.iloc[0, 0].strip().lower() in _LABEL_HEADERS:
        table = table.iloc[1:]
    barcodes, labels = table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip()
    dup = barcodes[barcodes.duplicated()]
    if len(dup):
        raise CoemInputError(f"the labels file names {len(dup)} barcodes twice (e.g. {_few(dup.unique())})", sample, path)
    return pd.Series(labels.replace("", np.nan).to_numpy(), index=pd.Index(barcodes.to_numpy(), dtype=object), name="label")


def attach_labels(mdata: md.MuData, labels, sample: str | None = None) -> dict:
    """Put labels (path or barcode-indexed Series) into ``mdata.obs['label']``; NaN where absent."""
    file = None if isinstance(labels, pd.Series) else labels
    series = labels if file is None else read_labels(labels, sample)
    cells = mdata.obs_names
    matched = cells.isin(series.index)
    if not matched.any():
        hint = ""
        if pd.Index(cells.str.replace(r"-\d+$", "", regex=True)).isin(series.index).any():
            hint = " (they match once the '-1' style suffix is removed from the data's barcodes: add it to the labels)"
        raise CoemInputError(
            f"no barcode of the labels file is a cell of this sample{hint}; data e.g. {_few(cells)}, "
            f"labels e.g. {_few(series.index)}", sample, file,
        )
    stats = {"cells": len(cells), "labelled": int(series.reindex(cells).notna().sum()),
             "labels_not_in_data": int((~series.index.isin(cells)).sum())}
    if stats["labelled"] < len(cells) or stats["labels_not_in_data"]:
        log.warning("labels: %(labelled)d of %(cells)d cells labelled; %(labels_not_in_data)d label rows "
                    "name barcodes that are not cells of this sample", stats)
    mdata.obs["label"] = pd.Categorical(series.reindex(cells).to_numpy())
    return stats


# ---------------------------------------------------------------------------------------------
# One samplesheet row
# ---------------------------------------------------------------------------------------------

def input_of(row, sample: str | None = None) -> tuple[str, tuple[str, ...], str]:
    """The row's input as (kind, files, how errors name it): ``("h5", (path,), path)``,
    ``("h5mu", (path,), path)`` or ``("pair", (rna, atac), "rna + atac")``."""
    get = _getter(row)
    if get("h5"):
        return "h5", (get("h5"),), get("h5")
    if get("h5mu"):
        return "h5mu", (get("h5mu"),), get("h5mu")
    if get("rna") and get("atac"):
        return "pair", (get("rna"), get("atac")), f"{get('rna')} + {get('atac')}"
    raise CoemInputError("the samplesheet row has no input (h5, h5mu or rna+atac)", sample or get("sample") or None)


def _getter(row) -> Callable[[str], str]:
    return (lambda k: getattr(row, k, "") or "") if not isinstance(row, Mapping) else (lambda k: row.get(k) or "")


# The reader of each input kind: (*files, sample, **options) -> MuData.
READERS = {"h5": read_10x_h5, "h5mu": read_h5mu, "pair": read_anndata_pair}


def read_sample(row, sample: str | None = None, readers: Mapping[str, Callable] | None = None,
                **options) -> md.MuData:
    """Read the row's input (h5 / h5mu / rna+atac), then attach its annotation and labels.

    Any failure while reading becomes one ``CoemInputError`` naming the sample and the file,
    whatever the library underneath raised (no traceback reaches the user). ``readers``
    replaces the reader of an input kind (``READERS``): the QC step's readers that leave the
    counts on disk (``coem.qc_backed``).
    """
    get = _getter(row)
    sample = sample or get("sample") or None
    start = time.perf_counter()
    kind, files, file = input_of(row, sample)
    reader = {**READERS, **(readers or {})}[kind]
    mdata = explained(lambda: reader(*files, sample=sample, **options), "cannot read this input", sample, file)
    log.info("read %d cells, %d genes, %d peaks in %.1f s", mdata.n_obs, mdata.mod["rna"].n_vars,
             mdata.mod["atac"].n_vars, time.perf_counter() - start)
    if get("annotation"):
        start = time.perf_counter()
        explained(lambda: attach_annotation(mdata, get("annotation"), sample), "cannot read the annotation",
                  sample, get("annotation"))
        log.info("annotation attached in %.1f s", time.perf_counter() - start)
    if get("labels"):
        explained(lambda: attach_labels(mdata, get("labels"), sample), "cannot read the labels file", sample,
                  get("labels"))
    return mdata


def explained(action, what: str, sample: str | None, file: str):
    """``action()``; an unexpected exception (a library's, not ours) becomes a CoemInputError that
    names the sample, the file and the exception. Memory errors and interrupts pass through."""
    try:
        return action()
    except (CoemInputError, MemoryError, KeyboardInterrupt):
        raise
    except OSError as err:
        if is_disk_error(err):
            raise
        raise CoemInputError(f"{what}: {type(err).__name__}: {err}", sample, file) from err
    except Exception as err:
        raise CoemInputError(f"{what}: {type(err).__name__}: {err}", sample, file) from err


def is_disk_error(err: OSError) -> bool:
    """No space, quota or read-only file system: the machine's problem, not the input's."""
    import errno

    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
