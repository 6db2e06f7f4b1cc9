"""Plain-text tables for the benchmark scripts (right-aligned columns, missing values blank)."""

from __future__ import annotations


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """One header line and one line per row; a row without a column shows it empty."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
