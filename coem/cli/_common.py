"""Shared command-line plumbing: argument helpers and the error-to-exit-code wrapper."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from coem.errors import CoemInputError

EXIT_INPUT_ERROR = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a step's ``main``; a ``CoemInputError`` becomes one ``ERROR:`` line and exit code 2."""
    try:
        return int(main(argv) or 0)
    except CoemInputError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every step takes: the sample id, the output prefix and the seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sample", required=True, help="sample id (names outputs and errors)")
    parser.add_argument("--prefix", default=None, help="output file prefix (default: sample id)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--process-name", default=None, help="Nextflow process name for versions.yml")
    return parser
