"""GC content of peaks from a genome FASTA, for the GC-matched peak-to-gene background.

The FASTA is read with pyfaidx (indexed random access; plain or bgzip-compressed, the index
``.fai`` is built next to the file on first use). GC is computed once per peak: the fraction
of G/C among the peak's A/C/G/T bases (N and other letters are not counted); a peak on a
sequence the FASTA lacks, or made only of N, gets NaN (it is then matched only on
accessibility and width).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from coem._logging import get_logger
from coem.errors import CoemInputError

log = get_logger(__name__)


def _open_fasta(path: str):
    import pyfaidx

    if not Path(path).is_file():
        raise CoemInputError("the genome FASTA does not exist", file=path)
    try:
        return pyfaidx.Fasta(str(path), as_raw=True, sequence_always_upper=True, rebuild=False)
    except Exception as err:  # pyfaidx raises several types for gzip (not bgzip) or malformed files
        hint = " (gzip files must be bgzip-compressed: zcat genome.fa.gz | bgzip > genome.fa.bgz)" \
            if str(path).endswith(".gz") else ""
        raise CoemInputError(f"cannot read the genome FASTA: {type(err).__name__}: {err}{hint}", file=path) from err


def gc_fraction(sequence: str) -> float:
    """G+C over A+C+G+T of an upper-case sequence; NaN when it holds no A/C/G/T."""
    gc = sequence.count("G") + sequence.count("C")
    at = sequence.count("A") + sequence.count("T")
    return gc / (gc + at) if gc + at else float("nan")


def peak_gc(peaks_var: pd.DataFrame, fasta: str) -> pd.Series:
    """GC fraction per peak (index = the var index), from ``chrom``/``start``/``end`` (BED-like, 0-based start).

    Fails when no peak's chromosome is in the FASTA (wrong genome or naming, e.g. 'chr1' vs '1').
    """
    genome = _open_fasta(fasta)
    names = set(genome.keys())
    chrom = peaks_var["chrom"].astype(str).to_numpy()
    start = pd.to_numeric(peaks_var["start"], errors="coerce").to_numpy()
    end = pd.to_numeric(peaks_var["end"], errors="coerce").to_numpy()
    known = np.isin(chrom, list(names))
    if not known.any():
        raise CoemInputError(
            f"no peak chromosome is in the genome FASTA (peaks on {sorted(set(chrom))[:3]}, "
            f"FASTA sequences {sorted(names)[:3]}); give the FASTA of the peaks' genome build with the same naming",
            file=fasta,
        )
    gc = np.full(len(chrom), np.nan)
    for i in np.flatnonzero(known & np.isfinite(start) & np.isfinite(end)):
        record = genome[chrom[i]]
        lo, hi = max(0, int(start[i])), min(len(record), int(end[i]))
        if hi > lo:
            gc[i] = gc_fraction(record[lo:hi])
    missing = int((~known).sum())
    if missing:
        log.warning("%d of %d peaks lie on sequences the FASTA lacks: matched without GC", missing, len(chrom))
    return pd.Series(gc, index=peaks_var.index, name="gc")
