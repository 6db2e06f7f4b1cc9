"""``coem_overview.py``: the report's per-sample overview table from the steps' MultiQC tables.

Run in the MULTIQC process before MultiQC: reads every ``*_mqc.json`` under ``--input-dir`` and
writes ``coem_overview_mqc.json`` (table ``coem_overview``, first in the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence
import argparse

from coem._logging import get_logger

log = get_logger("coem.overview")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-sample overview table for the MultiQC report.")
    parser.add_argument("--input-dir", default=".", help="folder searched (recursively) for *_mqc.json")
    parser.add_argument("--output", default="coem_overview_mqc.json", help="output file (must end in _mqc.json)")
    args = parser.parse_args(argv)
    from coem.overview import write_overview

    paths = sorted(p for p in Path(args.input_dir).rglob("*_mqc.json") if p.name != Path(args.output).name)
    out = write_overview(paths, args.output)
    log.info("overview of %d files: %s", len(paths), out or "no COEM tables found, nothing written")
    return 0
