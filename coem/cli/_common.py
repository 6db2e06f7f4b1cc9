"""Shared command-line plumbing: argument helpers and the error-to-exit-code wrapper."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

from coem.errors import CoemInputError

EXIT_INPUT_ERROR = 2
EXIT_SYSTEM_ERROR = 1  # a full disk or unwritable folder: not the sample's fault, so not isolated

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
            _remove_task_outputs(keep={Path(failure_file).name, Path(os.environ.get(WARNINGS_FILE_ENV, "")).name})
            Path(failure_file).write_text(line + "\n", encoding="utf-8")
            return 0
        return EXIT_INPUT_ERROR
    except Exception as err:  # a full disk or unwritable folder is one line too; anything else is a bug
        problem = disk_problem(err)
        if problem is None:
            raise
        sample = _sample_from(argv if argv is not None else sys.argv[1:])
        print(f"ERROR: {sample}{problem}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR


def disk_problem(err: BaseException) -> str | None:
    """One sentence when ``err`` (or an error it wraps: h5py and anndata re-raise) is a full disk,
    an exceeded quota, a read-only file system or a folder we may not write to; else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            code, text = err.errno, str(err)
            where = f" writing '{err.filename}'" if err.filename else ""
            if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "errno = 28" in text:
                return (f"no space left on the device{where}; free space, or point Nextflow's work directory "
                        "(-work-dir) and --outdir at a disk with room, then rerun with -resume")
            if code == errno.EROFS:
                return f"the file system is read-only{where}; run from (or -work-dir on) a writable disk"
            if code in (errno.EACCES, errno.EPERM):
                return (f"permission denied{where}; the folder is not writable by this user: check its "
                        "permissions, or choose another --outdir / -work-dir")
        err = err.__cause__ or err.__context__
    return None


def _sample_from(argv: Sequence[str]) -> str:
    """``sample 'S1': `` from ``--sample S1`` in the arguments (empty when absent)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--sample" and i + 1 < len(argv):
            return f"sample '{argv[i + 1]}': "
        if arg.startswith("--sample="):
            return f"sample '{arg.split('=', 1)[1]}': "
    return ""


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


def _remove_task_outputs(keep: set[str]) -> None:
    """In a Nextflow task directory, delete what the failed step wrote, so nothing half-done is
    published: regular files only (inputs are staged as links), never Nextflow's ``.command*``."""
    for path in Path(".").iterdir():
        if path.name in keep or path.name.startswith(".") or path.is_symlink() or not path.is_file():
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


def add_cells_arguments(parser: argparse.ArgumentParser, embedding: bool = False) -> None:
    """``--metacells`` (and ``--embedding``): the small per-cell files joined to the counts."""
    parser.add_argument("--metacells", default=None,
                        help="the metacell step's P.metacells.h5ad (obs['metacell'] per cell); without it the "
                             "--input MuData must hold obs['metacell']")
    if embedding:
        parser.add_argument("--embedding", default=None,
                            help="the embedding step's P.embedding.h5ad (obsm['X_embedding']); without it the "
                                 "--input MuData must hold the embedding")


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


def read_mudata(path: str, sample: str, hint: str, backed: bool = False):
    """Read a MuData; a missing or unreadable file is a user error that says what to pass.

    ``backed``: leave the count matrices on disk (``coem.h5mu_backed.BackedMuData``: tables in
    memory, counts read in row chunks by the steps that sum or embed them).
    """
    if not Path(path).is_file():
        raise CoemInputError(f"input file not found; {hint}", sample=sample, file=path)
    import mudata

    from coem.h5mu_backed import BackedMuData

    try:
        with quiet_mudata():
            return BackedMuData(path) if backed else mudata.read_h5mu(path)
    except CoemInputError as err:
        raise err.with_context(sample=sample, file=path) from err
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        from coem.readers import FILE_KINDS, sniff_file_kind

        kind = sniff_file_kind(path)  # say what it is when it is another kind of HDF5 file
        what = f": it is {FILE_KINDS[kind][0]}" if kind not in (None, "h5mu", "hdf5") else ""
        raise CoemInputError(f"cannot read as MuData ({type(err).__name__}: {err}){what}; {hint}",
                             sample=sample, file=path) from err


def write_mudata_atomically(mdata, final: Path) -> None:
    """Write to ``<final>.partial`` and rename, so a crash never leaves a plausible output."""
    from coem.stepfiles import atomic_output

    with atomic_output(final) as partial, quiet_mudata():
        mdata.write(str(partial))


# The frame every step's main() shares

class _Stage:
    """What a stage says when it ends (set with ``done``); the timing line is logged for it."""

    def __init__(self, name: str):
        self.message = name

    def done(self, message: str) -> None:
        self.message = message


class StepRun:
    """One run of a step, the part every bin/ CLI shares: read, time, log, record, write.

    ``with run.stage("embed") as stage: ...; stage.done("embedding 30 dims")`` times the block
    into ``run.timings['embed_s']``, logs ``<sample>: embedding 30 dims in 1.23 s`` and turns a
    ``CoemInputError`` raised inside into one that names the sample and the input file.
    ``read`` and ``write_h5mu`` are the first and last stages of the steps that pass a MuData on.
    """

    def __init__(self, step: str, args: argparse.Namespace, log, input_file: str | None = None,
                 process: str | None = None):
        self.step = step
        self.args = args
        self.log = log
        self.sample = args.sample
        self.prefix = args.prefix or args.sample
        self.process_name = args.process_name or process or f"COEM_{step.upper()}"
        self.input_file = input_file if input_file is not None else getattr(args, "input", None)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, file: str | None = None):
        import time

        stage = _Stage(name)
        start = time.perf_counter()
        try:
            yield stage
        except CoemInputError as err:
            raise err.with_context(sample=self.sample, file=file or self.input_file) from err
        seconds = round(time.perf_counter() - start, 3)
        self.timings[f"{name}_s"] = seconds
        self.log.info("%s: %s in %.2f s", self.sample, stage.message, seconds)

    def read(self, hint: str, path: str | None = None, name: str = "read", backed: bool = False):
        """Read the step's MuData input (``--input`` unless ``path``), timed and logged; ``backed``:
        counts left on disk (``read_mudata``)."""
        path = path or self.input_file
        with self.stage(name, file=path) as stage:
            mdata = read_mudata(path, self.sample, hint, backed=backed)
            mods = ", ".join(f"{m} {a.n_vars:,} features" for m, a in mdata.mod.items())
            where = "; counts read in chunks from disk" if backed else ""
            stage.done(f"read {path}: {mdata.n_obs:,} obs ({mods}){where}")
        return mdata

    def record(self, params: dict, **extra) -> dict:
        """The step's JSON record: parameters, seed, versions, timings so far and ``extra``."""
        from coem.provenance import step_record

        return step_record(self.step, params, seed=self.args.seed, timings=self.timings, **extra)

    def write_versions(self, extra: tuple[str, ...] = ()) -> None:
        """nf-core ``versions.yml`` (``extra``: more packages to name, e.g. the baselines')."""
        from coem.provenance import write_versions_yml

        write_versions_yml("versions.yml", self.process_name, extra=extra)

    def write_cells(self, source, suffix: str, params: dict, obs: dict | None = None, obsm: dict | None = None,
                    **extra) -> Path:
        """Write only what the step adds: ``<prefix>.<suffix>``, a matrix-free AnnData of the cells of
        ``source`` (a MuData or a per-cell file: its obs and step records carry on) with the new
        ``obs`` columns and ``obsm`` arrays, this step's record and versions.yml (``coem.stepfiles``)."""
        from coem.provenance import record_json, step_record
        from coem.stepfiles import cells_file, records_of, write_cells

        final = Path(f"{self.prefix}.{suffix}")
        with self.stage("write") as stage:
            record = step_record(self.step, params, seed=self.args.seed, timings=self.timings, **extra)
            frame = source.obs.copy()
            for column, values in (obs or {}).items():
                frame[column] = values
            cells = cells_file(frame, obsm, {**records_of(source), self.step: record_json(record)})
            self.write_versions()
            write_cells(cells, final)
            stage.done(f"wrote {final}")
        return final

    def write_h5mu(self, mdata, suffix: str, params: dict, **extra) -> Path:
        """Record the step in ``uns['coem']``, write versions.yml and ``<prefix>.<suffix>`` atomically."""
        from coem.provenance import record_step

        final = Path(f"{self.prefix}.{suffix}")
        with self.stage("write") as stage:
            record_step(mdata, self.step, params, seed=self.args.seed, timings=self.timings, **extra)
            self.write_versions()
            write_mudata_atomically(mdata, final)
            stage.done(f"wrote {final}")
        return final


def read_counts_and_cells(run: StepRun, hint: str, metacells: str | None = None, embedding: str | None = None,
                          metacell_key: str = "metacell", embedding_key: str = "X_embedding", backed: bool = False):
    """The QC'd counts (``--input``) joined in memory with what later steps added: the metacell
    of every cell (``--metacells P.metacells.h5ad``) and the embedding (``--embedding
    P.embedding.h5ad``). The files must name the same cells; without them, the input itself
    must hold ``obs[metacell_key]`` (a MuData from an earlier version, or a user's own).
    ``backed``: the counts stay on disk, read in row chunks (``read_mudata``)."""
    from coem.stepfiles import attach, check_same_cells, read_cells

    mdata = run.read(hint, backed=backed)
    for path, what, key, kind in ((metacells, "the metacell step's P.metacells.h5ad", metacell_key, "obs"),
                                  (embedding, "the embedding step's P.embedding.h5ad", embedding_key, "obsm")):
        if not path:
            continue
        with run.stage(f"read_{kind}_{key}", file=path) as stage:
            cells = read_cells(path, run.sample, f"pass {what}", needs=(key,))
            check_same_cells(cells, mdata.obs_names, run.sample, f"{path} + {run.input_file}")
            attach(mdata, cells, columns=(key,) if kind == "obs" else (), obsm=(key,) if kind == "obsm" else ())
            stage.done(f"read {path}: {key} of {cells.n_obs:,} cells")
    return mdata


def params_of(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    """The named command-line values, for the step record."""
    return {key: getattr(args, key) for key in keys}
