"""The frame every step's CLI shares (coem/cli/_common.py): stages, records, errors, failure records."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from coem.cli import _common
from coem.cli._common import StepRun, run_cli, warn_user
from coem.errors import CoemInputError

STEP_CLIS = ("aggregate", "baselines", "embed", "evaluate", "metacells", "peak2gene", "qc", "train_vae")
CLI_DIR = Path(_common.__file__).parent


def _args(**extra) -> argparse.Namespace:
    return argparse.Namespace(sample="S1", prefix=None, seed=7, process_name=None, input="in.h5mu", **extra)


def test_stage_times_logs_and_records(caplog):
    log = logging.getLogger("coem.test_stage")
    log.propagate = True
    run = StepRun("metacells", _args(), log)
    with caplog.at_level(logging.INFO, logger="coem.test_stage"):
        with run.stage("compute") as stage:
            stage.done("12 metacells of 900 cells")
    assert set(run.timings) == {"compute_s"} and run.timings["compute_s"] >= 0
    assert re.search(r"S1: 12 metacells of 900 cells in \d+\.\d\d s", caplog.text)
    record = run.record({"k": 15}, extra_field=3)
    assert record["step"] == "metacells" and record["seed"] == 7 and record["params"] == {"k": 15}
    assert record["timings"] == run.timings and record["extra_field"] == 3 and "coem" in record["versions"]
    assert run.prefix == "S1" and run.process_name == "COEM_METACELLS"


def test_stage_names_sample_and_file_in_errors():
    run = StepRun("embed", _args(), logging.getLogger("coem.test"))
    with pytest.raises(CoemInputError) as info:
        with run.stage("embed"):
            raise CoemInputError("no cells left")
    assert str(info.value) == "sample 'S1', file 'in.h5mu': no cells left"
    assert "embed_s" not in run.timings  # a failed stage records no time
    with pytest.raises(CoemInputError, match="file 'genome.fa'"):
        with run.stage("gc", file="genome.fa"):
            raise CoemInputError("contig chr1 missing")


def test_write_h5mu_records_the_step_and_versions(tmp_path, monkeypatch):
    import anndata as ad
    import mudata as md

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    mdata = md.MuData({"rna": ad.AnnData(rng.poisson(1, (5, 3)).astype(np.float32)),
                       "atac": ad.AnnData(rng.poisson(1, (5, 4)).astype(np.float32))})
    run = StepRun("train", _args(), logging.getLogger("coem.test"), process="COEM_TRAIN_VAE")
    with run.stage("fit"):
        pass
    out = run.write_h5mu(mdata, "embed.h5mu", {"epochs": 3}, n_genes_used=3)
    assert out == Path("S1.embed.h5mu") and out.is_file() and not Path("S1.embed.h5mu.partial").exists()
    back = md.read_h5mu(out)
    record = json.loads(back.uns["coem"]["train"])
    assert record["params"] == {"epochs": 3} and record["seed"] == 7 and record["n_genes_used"] == 3
    assert "fit_s" in record["timings"]
    assert list(yaml.safe_load(Path("versions.yml").read_text())) == ["COEM_TRAIN_VAE"]
    assert "write_s" in run.timings


def test_step_clis_use_the_shared_frame():
    """No step CLI times, records or writes versions by hand any more: the one frame does it."""
    for name in STEP_CLIS:
        text = (CLI_DIR / f"{name}.py").read_text()
        assert "StepRun(" in text, name
        for hand_made in ("time.perf_counter", "write_versions_yml(", "step_record(", "record_step(STEP"):
            if name == "qc" and hand_made == "record_step(STEP":
                continue  # QC writes its h5mu itself (reports before the rename) but through run.timings
            assert hand_made not in text, f"coem/cli/{name}.py still has {hand_made}"


def test_input_error_under_nextflow_is_a_failure_record(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.h5mu").write_text("input")
    task = tmp_path / "work" / "ab" / "cdef"
    task.mkdir(parents=True)
    monkeypatch.chdir(task)
    Path("link.h5mu").symlink_to(tmp_path / "data" / "input.h5mu")  # inputs are staged as links
    Path(".command.sh").write_text("#!/bin/bash")

    def main(argv):
        Path("S1_half_written_mqc.json").write_text("{}")
        raise CoemInputError("only 2 cells left after QC", sample="S1", file="x.h5")

    assert run_cli(main, []) == 2  # by hand: exit 2, nothing else
    assert Path("S1_half_written_mqc.json").exists()
    monkeypatch.setenv("COEM_FAILURE_FILE", "coem_failed.txt")
    assert run_cli(main, []) == 0
    assert Path("coem_failed.txt").read_text() == "ERROR: sample 'S1', file 'x.h5': only 2 cells left after QC\n"
    assert not Path("S1_half_written_mqc.json").exists()  # nothing half-done is published
    assert Path("link.h5mu").is_symlink() and Path("link.h5mu").read_text() == "input"
    assert Path(".command.sh").exists()
    assert capsys.readouterr().err.count("ERROR:") == 2


def test_warn_user_keeps_warnings_for_the_end_of_run_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("COEM_WARNINGS_FILE", str(tmp_path / "coem_warnings.txt"))
    warn_user("30% of cells dropped:\nbarcodes differ", "S1", "qc")
    warn_user("labels cover 10% of cells", "S1", "qc")
    lines = (tmp_path / "coem_warnings.txt").read_text().splitlines()
    assert lines == ["S1\tqc\t30% of cells dropped: barcodes differ", "S1\tqc\tlabels cover 10% of cells"]


def test_reading_another_kind_of_file_says_what_it_is(tmp_path):
    """A step given a per-cell .h5ad where the counts' .h5mu belongs: the error says what the file is."""
    import anndata as ad

    from coem.cli._common import read_mudata

    path = tmp_path / "S1.embedding.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=["c1", "c2"])).write_h5ad(path)
    with pytest.raises(CoemInputError) as info:
        read_mudata(str(path), "S1", "pass the QC step's P.qc.h5mu with --input")
    message = str(info.value)
    assert message.startswith(f"sample 'S1', file '{path}': cannot read as MuData (")
    assert message.endswith("it is an AnnData file (HDF5 with /X, /obs, /var); pass the QC step's P.qc.h5mu with --input")
