"""Shared command-line plumbing: argument helpers and the error-to-exit-code wrapper."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
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


# MuData files carried between steps

@contextmanager
def quiet_mudata():
    """mudata 0.3 warns about its future ``pull_on_update`` default on every update; mute it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def read_mudata(path: str, sample: str, hint: str):
    """Read a MuData; a missing or unreadable file is a user error that says what to pass."""
    if not Path(path).is_file():
        raise CoemInputError(f"input file not found; {hint}", sample=sample, file=path)
    import mudata

    try:
        with quiet_mudata():
            return mudata.read_h5mu(path)
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise CoemInputError(f"cannot read as MuData ({type(err).__name__}: {err})", sample=sample, file=path) from err


def write_mudata_atomically(mdata, final: Path) -> None:
    """Write to ``<final>.partial`` and rename, so a crash never leaves a plausible output."""
    partial = Path(f"{final}.partial")
    try:
        with quiet_mudata():
            mdata.write(str(partial))
        os.replace(partial, final)
    finally:
        if partial.exists():
            partial.unlink()
