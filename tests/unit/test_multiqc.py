"""coem.multiqc writers, checked against what MultiQC itself makes of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coem import multiqc


def _multiqc_line_pairs(folder: Path, section_id: str) -> list:
    """Run MultiQC on ``folder`` and return the [x, y] pairs of the section's first line."""
    exe = shutil.which("multiqc") or str(Path(sys.executable).with_name("multiqc"))
    subprocess.run([exe, "-q", "-f", str(folder), "-o", str(folder / "out"), "--data-format", "json"],
                   check=True, timeout=300)
    data = json.loads((folder / "out" / "multiqc_data" / "multiqc_data.json").read_text())
    plot = data["report_plot_data"][f"{section_id}_plot"]  # coem.multiqc names plots <id>_plot
    return plot["datasets"][0]["lines"][0]["pairs"]


def test_linegraph_pairs_keep_twelve_epochs_in_numeric_order(tmp_path):
    """Twelve epochs as keys come out '1.0', '10.0', '11.0', '12.0', '2.0' ... in MultiQC;
    as numeric pairs they stay 1, 2, ..., 12 (the VAE loss curve of issue 16)."""
    series = {"S1 train": {epoch: 100.0 / epoch for epoch in range(12, 0, -1)}}
    as_keys = tmp_path / "keys"
    as_keys.mkdir()
    multiqc.linegraph(as_keys / "k_mqc.json", "keys_demo", "keys", "", series)
    xs = [x for x, _ in _multiqc_line_pairs(as_keys, "keys_demo")]
    assert xs[:3] == ["1.0", "10.0", "11.0"]  # the bug: string order

    as_pairs = tmp_path / "pairs"
    as_pairs.mkdir()
    path = multiqc.linegraph(as_pairs / "p_mqc.json", "pairs_demo", "pairs", "", series, pairs=True)
    assert json.loads(path.read_text())["data"]["S1 train"][0] == [1.0, 100.0]
    pairs = _multiqc_line_pairs(as_pairs, "pairs_demo")
    xs = [x for x, _ in pairs]
    assert xs == sorted(xs) and [float(x) for x in xs] == [float(e) for e in range(1, 13)]
    assert pairs[-1][1] == pytest.approx(100.0 / 12)
