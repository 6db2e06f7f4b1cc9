"""What every step records about itself: parameters, seed, software versions, timings."""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import coem

# Packages whose versions go into every step's record and the MultiQC versions section.
_TRACKED = ("numpy", "scipy", "pandas", "anndata", "mudata", "scikit-learn", "h5py", "torch")


def software_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, coem and the numerical stack (packages not installed are skipped)."""
    versions = {"python": platform.python_version(), "coem": coem.__version__}
    for name in _TRACKED + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars / paths / tuples into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def strict_json(value: Any) -> Any:
    """``_jsonable`` plus NaN/inf -> None, recursively: strict JSON parsers (MultiQC's
    included) reject NaN, so every JSON file a step writes goes through this."""
    value = _jsonable(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def step_record(step: str, params: dict, seed: int | None = None, **extra: Any) -> dict:
    record = {"step": step, "params": params, "seed": seed, "versions": software_versions()}
    record.update(extra)
    return _jsonable(record)


def record_json(record: dict) -> str:
    """A step record as stored in ``uns['coem'][step]`` (JSON, keys sorted)."""
    return json.dumps(record, sort_keys=True)


def record_step(mdata, step: str, params: dict, seed: int | None = None, **extra: Any) -> dict:
    """Store the step's record as a JSON string under ``mdata.uns['coem'][step]``."""
    record = step_record(step, params, seed, **extra)
    coem_uns = dict(mdata.uns.get("coem", {}))
    coem_uns[step] = record_json(record)
    mdata.uns["coem"] = coem_uns
    return record


def read_step(mdata, step: str) -> dict | None:
    raw = mdata.uns.get("coem", {}).get(step)
    return None if raw is None else json.loads(raw)


def write_versions_yml(path: str | Path, process_name: str, extra: tuple[str, ...] = ()) -> None:
    """nf-core style ``versions.yml``: ``PROCESS: {tool: version}``."""
    import yaml

    Path(path).write_text(yaml.safe_dump({process_name: software_versions(extra)}, sort_keys=True))
