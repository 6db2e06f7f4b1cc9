"""docs/api.md's example code runs as written (from the repository root)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_api_md_example_runs_and_does_what_it_says(monkeypatch, capsys):
    blocks = python_blocks((REPO / "docs" / "api.md").read_text())
    assert len(blocks) == 2
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for block in blocks:
            exec(compile(block, "docs/api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "significant links" in out and "dubious metacells" in out
    agg, summary, links = namespace["agg"], namespace["summary"], namespace["links"]
    assert agg.n_obs == 30 and agg.obs["size"].sum() == 600 and agg.obs["dubious"].dtype == bool
    assert len(links) == namespace["p2g"]["n_pairs"] and namespace["p2g"]["n_significant"] > 0
    assert 0.5 < summary["purity"]["mean"] <= 1 and 0.5 < summary["purity_cells"] <= 1
    assert 0 <= summary["dubious"]["n_dubious"] <= 30
    # what the report shows for this sample: no value above 1e6 unless its modality is flagged
    for mod in ("rna", "atac"):
        for metric in ("compactness", "separation"):
            assert summary[f"{metric}_{mod}"]["median"] < 1e6
            if summary[f"{metric}_{mod}"]["mean"] > 1e6:
                assert summary["diffusion"][mod]["nearly_disconnected"]
    np.testing.assert_array_equal(namespace["labels"], namespace["model"].labels_)
