"""``coem_samplesheet_check.py``: validate the samplesheet, write it back normalised.

Every problem is reported at once (line, column, what to fix) so a user fixes the sheet in one
go; the output has absolute paths and all columns, so later steps need no path logic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from coem._logging import get_logger
from coem.provenance import write_versions_yml
from coem.samplesheet import validate_samplesheet, write_samplesheet

log = get_logger("coem.samplesheet_check")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate a COEM-nf samplesheet and write it normalised.")
    parser.add_argument("--input", required=True, help="samplesheet CSV (sample + h5 | h5mu | rna+atac, labels, annotation)")
    parser.add_argument("--base-dir", default=".", help="directory relative paths resolve against (the samplesheet's own folder)")
    parser.add_argument("--output", default="samplesheet.valid.csv", help="normalised samplesheet to write")
    parser.add_argument("--no-check-files", action="store_true",
                        help="skip file existence checks (the files are not visible, e.g. inside a container)")
    parser.add_argument("--process-name", default="SAMPLESHEET_CHECK", help="Nextflow process name for versions.yml")
    parser.add_argument("--versions", default="versions.yml", help="where to write versions.yml")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows = validate_samplesheet(args.input, Path(args.base_dir).resolve(), check_files=not args.no_check_files)
    kinds = {kind: sum(r.input_kind == kind for r in rows) for kind in sorted({r.input_kind for r in rows})}
    log.info("validated %d samples (%s) in %.2f s", len(rows), ", ".join(f"{k}: {v}" for k, v in kinds.items()),
             time.perf_counter() - start)
    write_samplesheet(rows, args.output)
    write_versions_yml(args.versions, args.process_name)
    log.info("wrote %s and %s", args.output, args.versions)
    return 0
