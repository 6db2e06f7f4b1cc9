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

# Under Nextflow each task exports these (modules/local/*/main.nf). A bad-input error is then
# written to COEM_FAILURE_FILE and the task ends with exit 0 and no other output, so that the
# workflow drops that sample only and lists it at the end (per-sample failure isolation);
# without the variable (a user running a step by hand) the error exits 2. Warnings that mean
# data loss or weak results are appended to COEM_WARNINGS_FILE for the end-of-run summary.
FAILURE_FILE_ENV = "COEM_FAILURE_FILE"
WARNINGS_FILE_ENV = "COEM_WARNINGS_FILE"


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a step's ``main``; a ``CoemInputError`` becomes one ``ERROR:`` line and exit code 2
    (or, under Nextflow, a failure record and exit 0: see ``FAILURE_FILE_ENV``).

    Under Nextflow (``COEM_PIPELINE_VERSION`` set by every module) the installed ``coem`` package
    must be the pipeline's version: otherwise one ``ERROR:`` line says what to do, exit 2."""
    mismatch = _pipeline_version_mismatch()
    if mismatch:
        print(mismatch, file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        return int(main(argv) or 0)
    except CoemInputError as err:
        line = f"ERROR: {err}"
        print(line, file=sys.stderr)
        failure_file = os.environ.get(FAILURE_FILE_ENV)
        if failure_file:
            _remove_task_outputs(keep=Path(failure_file).name)
            Path(failure_file).write_text(line + "\n", encoding="utf-8")
            return 0
        return EXIT_INPUT_ERROR


def _pipeline_version_mismatch() -> str | None:
    """The ``ERROR:`` line when ``$COEM_PIPELINE_VERSION`` (the pipeline's manifest.version) is not
    the installed package's ``coem.__version__``; None when they agree or the variable is unset."""
    import coem

    wanted = os.environ.get("COEM_PIPELINE_VERSION", "").strip()
    if not wanted or wanted == coem.__version__:
        return None
    return (f"ERROR: the pipeline is COEM-nf {wanted} but this environment has the coem package "
            f"{coem.__version__} (from {Path(coem.__file__).parent}); reinstall it from the pipeline folder "
            f"(`pip install -e .` there, or `make install`), or run with the pipeline's container "
            f"(-profile docker/singularity: image tag {wanted})")


def _remove_task_outputs(keep: str) -> None:
    """In a Nextflow task directory, delete what the failed step wrote, so nothing half-done is
    published: regular files only (inputs are staged as links), never Nextflow's ``.command*``."""
    for path in Path(".").iterdir():
        if path.name == keep or path.name.startswith(".") or path.is_symlink() or not path.is_file():
            continue
        path.unlink()


def warn_user(message: str, sample: str, step: str) -> None:
    """A warning the operator must see: logged now, and kept for the end-of-run summary.

    One tab-separated line ``sample, step, message`` per warning in ``$COEM_WARNINGS_FILE``.
    """
    from coem._logging import get_logger

    get_logger(f"coem.{step}").warning("sample '%s': %s", sample, message)
    warnings_file = os.environ.get(WARNINGS_FILE_ENV)
    if warnings_file:
        flat = " ".join(message.split())
        with open(warnings_file, "a", encoding="utf-8") as handle:
            handle.write(f"{sample}\t{step}\t{flat}\n")


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
