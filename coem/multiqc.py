"""Writers for MultiQC custom content (``*_mqc.json``), one function per plot type.

MultiQC merges files that share a section ``id`` across samples, so each step writes one
file per sample and section with the sample's own data. An invalid plot type makes MultiQC
drop the section silently, so the plot types are checked here. See DESIGN.md section 5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from coem.provenance import _jsonable

PARENT_ID = "coem"
PARENT_NAME = "COEM metacells"
PARENT_DESCRIPTION = ("Every sample through QC, the joint embedding, COEM metacells, peak-to-gene links and "
                      "metacell quality; the Overview table sums up each sample, and each section says what good "
                      "looks like.")
PLOT_TYPES = {"generalstats", "table", "bargraph", "linegraph", "boxplot", "scatter", "heatmap", "violin", "html"}


def _write(path: str | Path, content: dict) -> Path:
    path = Path(path)
    if not path.name.endswith("_mqc.json"):
        raise ValueError(f"MultiQC custom content must end in _mqc.json, got {path.name}")
    path.write_text(json.dumps(_jsonable(content), indent=1, sort_keys=False))
    return path


def section(
    path: str | Path,
    section_id: str,
    section_name: str,
    description: str,
    plot_type: str,
    data: Any,
    pconfig: Mapping | None = None,
    headers: Mapping | None = None,
    parent: bool = True,
) -> Path:
    """Write one custom-content section (the building block of the helpers below)."""
    if plot_type not in PLOT_TYPES:
        raise ValueError(f"unknown MultiQC plot_type {plot_type!r}")
    content: dict[str, Any] = {
        "id": section_id,
        "section_name": section_name,
        "description": description,
        "plot_type": plot_type,
        "data": data,
    }
    if plot_type != "html":
        content["pconfig"] = {"id": f"{section_id}_plot", "title": f"COEM: {section_name}", **(pconfig or {})}
    if headers:
        content["headers"] = headers
    if parent:
        content["parent_id"] = PARENT_ID
        content["parent_name"] = PARENT_NAME
        content["parent_description"] = PARENT_DESCRIPTION
    return _write(path, content)


def general_stats(path: str | Path, section_id: str, sample: str, values: Mapping, headers: Mapping) -> Path:
    """One row of the General Statistics table (``headers`` give title/format per column)."""
    content = {"id": section_id, "plot_type": "generalstats", "headers": headers, "data": {sample: values}}
    return _write(path, content)


def table(path, section_id, section_name, description, rows: Mapping[str, Mapping], headers=None, **kw) -> Path:
    """``rows``: {row name (usually the sample): {column: value}}."""
    return section(path, section_id, section_name, description, "table", rows, headers=headers, **kw)


def bargraph(path, section_id, section_name, description, bars: Mapping[str, Mapping], **kw) -> Path:
    return section(path, section_id, section_name, description, "bargraph", bars, **kw)


def linegraph(path, section_id, section_name, description, series: Mapping[str, Mapping], pairs: bool = False,
              **kw) -> Path:
    """``series``: {line name: {x: y}}.

    JSON object keys are strings, and MultiQC 1.35 sorts a line's x values before drawing it:
    as strings when they come as keys ('1.0', '10.0', '2.0', ...: a zig-zag line). ``pairs=True``
    writes each line as a list of numeric ``[x, y]`` pairs in increasing x instead, which
    MultiQC sorts as numbers (checked on its ``multiqc_data.json``: tests/unit/test_multiqc.py).
    """
    if pairs:
        data = {name: sorted([float(x), float(y)] for x, y in points.items()) for name, points in series.items()}
    else:
        data = {name: {float(x): float(y) for x, y in points.items()} for name, points in series.items()}
    return section(path, section_id, section_name, description, "linegraph", data, **kw)


def boxplot(path, section_id, section_name, description, values: Mapping[str, list], **kw) -> Path:
    """``values``: {sample: [numbers]} drawn as one box per sample."""
    data = {name: [float(v) for v in vals] for name, vals in values.items()}
    return section(path, section_id, section_name, description, "boxplot", data, **kw)


def html(path, section_id, section_name, description, body: str, **kw) -> Path:
    return section(path, section_id, section_name, description, "html", body, **kw)


def scatter(path, section_id, section_name, description, points: Mapping[str, list], **kw) -> Path:
    """``points``: {series name: [{"x", "y"} and optionally "color"]}; one legend entry per
    series colour. Points are not annotated with names (MultiQC labels outliers otherwise)."""
    data = {name: [{**{k: v for k, v in p.items()}, "x": float(p["x"]), "y": float(p["y"]), "annotate": False}
                   for p in pts] for name, pts in points.items()}
    return section(path, section_id, section_name, description, "scatter", data, **kw)
