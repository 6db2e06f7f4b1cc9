"""The report's per-sample overview: one row per sample from the steps' MultiQC tables.

Each step writes its own ``*_mqc.json`` table; MultiQC cannot merge columns of different files
into one row, so ``overview_rows`` reads them (QC, VAE, metacells, peak-to-gene, evaluation) and
makes the table shown first in the report: cells in / out, metacells, purity, significant links,
dubious metacells, warnings, seconds, device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

SOURCES = {
    "coem_qc_summary": {"cells_before": "cells_in", "cells_after": "cells_out"},
    "coem_metacells_summary": {"metacells": "metacells", "seconds": "_metacells_s"},
    "coem_vae_summary": {"device": "device", "seconds_per_epoch": "_s_per_epoch", "epochs_run": "_epochs"},
    "coem_peak2gene_summary": {"significant": "significant_links"},
    "coem_evaluation": {"purity_cells": "purity", "dubious_pct": "dubious_pct", "warnings": "warnings"},
}

HEADERS = {
    "cells_in": {"title": "Cells in", "description": "cells before QC", "format": "{:,.0f}"},
    "cells_out": {"title": "Cells out", "description": "cells after QC (good: most of them)", "format": "{:,.0f}"},
    "metacells": {"title": "Metacells", "format": "{:,.0f}"},
    "purity": {"title": "Purity", "description": "share of labelled cells carrying their metacell's majority label "
               "(good: close to 1)", "min": 0, "max": 1, "format": "{:,.3f}"},
    "dubious_pct": {"title": "Dubious", "description": "share of metacells whose cells are not homogeneous "
                    "(good: a few %)", "suffix": "%", "min": 0, "max": 100, "format": "{:,.1f}"},
    "significant_links": {"title": "Significant links", "description": "peak-to-gene links within the FDR and r "
                          "cut-offs", "format": "{:,.0f}"},
    "warnings": {"title": "Warnings", "description": "plain-language warnings of the evaluation ('none': all well)"},
    "seconds": {"title": "Seconds", "description": "VAE training + metacells", "format": "{:,.1f}"},
    "device": {"title": "Device", "description": "where the VAE trained"},
}

DESCRIPTION = (
    "One row per sample, from the sections below: cells before and after QC, metacells, purity (per cell; with "
    "labels), share of dubious metacells, significant peak-to-gene links, warnings, seconds of VAE training and "
    "metacells, and the VAE's device. Good: most cells kept, purity close to 1, few dubious metacells, "
    "Warnings 'none'."
)


def read_sections(paths: Iterable[Path]) -> dict[str, list[Mapping]]:
    """{section id: [data dicts]} of the COEM tables among ``paths`` (other files are skipped)."""
    out: dict[str, list[Mapping]] = {}
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and content.get("id") in SOURCES and isinstance(content.get("data"), dict):
            out.setdefault(content["id"], []).append(content["data"])
    return out


def overview_rows(sections: Mapping[str, list[Mapping]]) -> dict[str, dict]:
    """{sample: overview row}; columns a sample lacks (e.g. no labels, pca_lsi) are left out."""
    rows: dict[str, dict] = {}
    for section_id, columns in SOURCES.items():
        for data in sections.get(section_id, []):
            for sample, values in data.items():
                row = rows.setdefault(sample, {})
                for source, target in columns.items():
                    if isinstance(values, Mapping) and values.get(source) is not None:
                        row[target] = values[source]
    for row in rows.values():
        seconds = [row.pop("_metacells_s", None)]
        per_epoch, epochs = row.pop("_s_per_epoch", None), row.pop("_epochs", None)
        if per_epoch is not None and epochs is not None:
            seconds.append(per_epoch * epochs)
        if any(s is not None for s in seconds):
            row["seconds"] = round(sum(s for s in seconds if s is not None), 1)
        row.setdefault("device", "cpu (no VAE)")
    return {sample: {k: row[k] for k in HEADERS if k in row} for sample, row in sorted(rows.items())}


def write_overview(paths: Iterable[Path], output: str | Path) -> Path | None:
    """Write the ``coem_overview`` table; None (nothing written) when no COEM table was found."""
    from coem import multiqc

    rows = overview_rows(read_sections(paths))
    if not rows:
        return None
    used = {k for row in rows.values() for k in row}
    return multiqc.table(output, "coem_overview", "Overview", DESCRIPTION, rows,
                         headers={k: v for k, v in HEADERS.items() if k in used})
