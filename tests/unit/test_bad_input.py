"""The bad-input catalogue (docs/usage.md, "Bad input catalogue"): one test per row.

Each test writes a small bad input to a temporary folder, runs the real step (its
``coem.cli`` ``main`` through ``run_cli``, or the ``bin/`` script) from an empty output folder,
and asserts exit code 2, an ``ERROR:`` line that names the sample, the file and the problem,
and that the output folder is still empty: nothing is left that could pass for a good output.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem.cli import metacells, peak2gene, qc, samplesheet_check
from coem.cli._common import EXIT_INPUT_ERROR, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "S1"
STEPS = {"samplesheet_check": samplesheet_check, "qc": qc, "metacells": metacells, "peak2gene": peak2gene}


# ---------------------------------------------------------------------------------------------
# Inputs: one small simulated sample, written once as every input kind
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    """60 cells x (60 genes + 200 peaks), seed 0: small enough that every test stays well under 1 s."""
    from coem.simulate import simulate_multiome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return simulate_multiome(n_cells=60, n_genes=60, n_peaks=200, seed=0).mdata


@pytest.fixture(scope="module")
def good(sim, tmp_path_factory) -> dict[str, Path]:
    """The good sample as .h5ad pair, 10x .h5 and .h5mu, plus a labels CSV that matches it."""
    from coem.readers import write_10x_h5

    folder = tmp_path_factory.mktemp("good_inputs")
    paths = {"rna": folder / "rna.h5ad", "atac": folder / "atac.h5ad", "h5": folder / "sample.h5",
             "h5mu": folder / "sample.h5mu", "labels": folder / "labels.csv"}
    sim.mod["rna"].write_h5ad(paths["rna"])
    sim.mod["atac"].write_h5ad(paths["atac"])
    write_10x_h5(sim, paths["h5"])
    sim.write(str(paths["h5mu"]))
    pd.DataFrame({"barcode": sim.obs_names, "label": sim.obs["state"].astype(str)}).to_csv(paths["labels"], index=False)
    return paths


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    """An empty folder the step runs in (its outputs land here) -- it must stay empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def bad(tmp_path) -> Path:
    """Where a test writes its bad input (apart from the output folder)."""
    folder = tmp_path / "bad"
    folder.mkdir()
    return folder


def run_step(step: str, argv: list[str], capsys, via_bin: bool = False) -> tuple[int, str]:
    """Run one step like Nextflow does; return the exit code and the ``ERROR:`` line."""
    if via_bin:
        proc = subprocess.run([sys.executable, str(REPO / "bin" / f"coem_{step}.py"), *argv],
                              capture_output=True, text=True, timeout=120)
        rc, stderr = proc.returncode, proc.stderr
    else:
        rc = run_cli(STEPS[step].main, argv)
        stderr = capsys.readouterr().err
    start = stderr.find("ERROR: ")  # the message may span lines (samplesheet problems, one a line)
    return rc, stderr[start:] if start >= 0 else stderr


def assert_rejected(rc: int, message: str, out: Path, file, phrases, sample: str | None = SAMPLE) -> None:
    """Exit 2; the message names the sample, the file and the problem; no output was written."""
    assert rc == EXIT_INPUT_ERROR == 2, message
    assert message.startswith("ERROR: "), message
    if sample is not None:
        assert f"sample '{sample}'" in message
    assert f"file '{file}'" in message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert sorted(p.name for p in out.iterdir()) == [], "a failed step left outputs behind"


def qc_args(*extra) -> list[str]:
    return ["--sample", SAMPLE, "--prefix", SAMPLE, *map(str, extra)]


def write_h5ad(adata, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def with_counts(adata, value: float):
    """A copy whose first stored count is replaced by ``value``."""
    copy = adata.copy()
    X = sp.csr_matrix(copy.X, copy=True)
    X.data[0] = value
    copy.X = X
    return copy


# ---------------------------------------------------------------------------------------------
# Samplesheet check
# ---------------------------------------------------------------------------------------------

SHEETS = {
    # id: (samplesheet text, sample named in the message or None, key phrases)
    "unknown_column": ("sample,h5,fastq\nS1,sample.h5,x.fq\n", None,
                       ["line 1, column 'fastq': unknown column", "allowed columns are sample, h5"]),
    "duplicate_sample_ids": ("sample,h5\nS1,sample.h5\nS1,sample.h5\n", None,  # the phrase names it
                             ["line 3, column 'sample': duplicate sample id 'S1' (first on line 2)"]),
    "wrong_extension": ("sample,h5\nS1,rna.h5ad\n", SAMPLE,
                        ["line 2, column 'h5': 'rna.h5ad' has the wrong extension; expected .h5"]),
    "both_input_kinds": ("sample,h5,h5mu\nS1,sample.h5,sample.h5mu\n", SAMPLE,
                         ["line 2, column 'h5mu': more than one input kind (h5, h5mu)",
                          "fill exactly one of h5, h5mu or rna+atac"]),
    "no_input": ("sample,h5,labels\nS1,,labels.csv\n", SAMPLE,
                 ["line 2, column 'h5': no input given; fill exactly one of h5, h5mu or rna+atac"]),
    "missing_file": ("sample,h5\nS1,gone.h5\n", SAMPLE,
                     ["line 2, column 'h5': file not found:", "gone.h5", "relative paths resolve against"]),
    "empty_samplesheet": ("", None, ["line 1: the samplesheet is empty; expected a header line starting with 'sample'"]),
}


@pytest.mark.parametrize("case", list(SHEETS))
def test_malformed_samplesheet(case, good, bad, out, capsys):
    text, sample, phrases = SHEETS[case]
    sheet = bad / "samplesheet.csv"
    sheet.write_text(text)
    rc, message = run_step("samplesheet_check", [
        "--input", str(sheet), "--base-dir", str(good["h5"].parent),
        "--output", str(out / "samplesheet.valid.csv"), "--versions", str(out / "versions.yml"),
    ], capsys)
    assert_rejected(rc, message, out, sheet, phrases, sample)
    assert "samplesheet has 1 problem:" in message  # one bad thing, one problem: no follow-on noise


# ---------------------------------------------------------------------------------------------
# QC: reading the input
# ---------------------------------------------------------------------------------------------

def _not_hdf5(good, bad):
    path = bad / "sample.h5"
    path.write_text("barcode,gene,count\nAAAC-1,CD3E,4\n")  # a CSV renamed to .h5
    return ["--h5", path], path


def _truncated(kind):
    def make(good, bad):
        data = good[kind].read_bytes()
        path = bad / good[kind].name
        path.write_bytes(data[: len(data) // 2])  # an interrupted copy
        if kind == "rna":
            return ["--rna", path, "--atac", good["atac"]], path  # the broken one of the pair is named
        return [f"--{kind}", path], path
    return make


CORRUPT = {
    "not_hdf5": (_not_hdf5, ["cannot read the file as HDF5", "file signature not found",
                             "it starts like text: 'barcode,gene,count'", "expected a 10x cellranger-arc"]),
    "truncated_h5": (_truncated("h5"), ["cannot read the file as HDF5", "truncated file"]),
    "truncated_h5ad": (_truncated("rna"), ["cannot read the file as AnnData (.h5ad)", "truncated file"]),
    "truncated_h5mu": (_truncated("h5mu"), ["cannot read the file as MuData (.h5mu)", "truncated file"]),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_input_file(case, good, bad, out, capsys):
    make, phrases = CORRUPT[case]
    args, file = make(good, bad)
    rc, message = run_step("qc", qc_args(*args), capsys)
    assert_rejected(rc, message, out, file, phrases)


WRONG_COLUMN = {
    # case: (samplesheet column the file was put in, good file used, phrases)
    "h5mu_in_h5": ("h5", "h5mu", ["this is a MuData file (HDF5 with /mod), not a 10x cellranger-arc",
                                   "it belongs in the 'h5mu' column"]),
    "h5ad_in_h5": ("h5", "rna", ["this is an AnnData file (HDF5 with /X, /obs, /var)",
                                 "it belongs in the 'rna' or 'atac' (one AnnData per modality) column"]),
    "h5_in_h5mu": ("h5mu", "h5", ["this is a 10x cellranger-arc feature-barcode matrix (HDF5 with /matrix), "
                                  "not a MuData file", "it belongs in the 'h5' column"]),
}


@pytest.mark.parametrize("case", list(WRONG_COLUMN))
def test_file_in_the_wrong_column(case, good, bad, out, capsys):
    """The file kind is recognised from its layout, whatever its name, and the right column named."""
    column, kind, phrases = WRONG_COLUMN[case]
    path = bad / f"input.{column}"  # the extension the column expects: only the content tells
    path.write_bytes(good[kind].read_bytes())
    rc, message = run_step("qc", qc_args(f"--{column}", path), capsys)
    assert_rejected(rc, message, out, path, phrases)


def test_empty_input_file(bad, out, capsys):
    path = bad / "sample.h5"
    path.write_bytes(b"")
    rc, message = run_step("qc", qc_args("--h5", path), capsys)
    assert_rejected(rc, message, out, path, ["not an HDF5 file", "the file is empty (0 bytes)"])


def test_unexpected_library_error_is_one_line(sim, bad, out, capsys):
    """A layout our checks do not foresee still ends in one ERROR line, not a traceback."""
    import h5py

    from coem.readers import write_10x_h5

    path = write_10x_h5(sim, bad / "odd.h5")
    with h5py.File(path, "r+") as handle:
        del handle["matrix/shape"]
        handle["matrix/shape"] = np.array([b"many", b"few"])  # strings where two integers belong
    rc, message = run_step("qc", qc_args("--h5", path), capsys, via_bin=True)
    assert_rejected(rc, message, out, path, ["cannot read this input: ValueError"])
    assert "Traceback" not in message and message.count("\n") <= 1


def test_full_disk_is_one_line(good, out, capsys):
    """Writing to /dev/full fails with ENOSPC, as a full disk does."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system to stand for a full disk")
    (out / f"{SAMPLE}.qc.h5mu.partial").symlink_to("/dev/full")
    rc, message = run_step("qc", qc_args("--h5mu", good["h5mu"]), capsys, via_bin=True)
    assert rc == 1, message
    assert message.startswith(f"ERROR: sample '{SAMPLE}': no space left on the device"), message
    assert "-work-dir" in message and "Traceback" not in message and message.count("\n") <= 1
    assert not (out / f"{SAMPLE}.qc.h5mu").exists()


METACELL_COUNTS = {
    "one_metacell": (["--n-metacells", "1"], "--n_metacells 1 gives 1 metacells; at least 3 are needed",
                     "raise --n_metacells to at least 3"),
    "cells_per_metacell_too_big": (["--cells-per-metacell", "100"],
                                   "--cells_per_metacell 100 (60 cells / 100 = 1) gives 1 metacells",
                                   "lower --cells_per_metacell to at most 20"),
    "more_than_cells": (["--n-metacells", "500"], "--n_metacells 500 asks for 500 metacells but only 60 cells "
                        "are left after QC", "lower --n_metacells to at most 60"),
}


@pytest.mark.parametrize("case", list(METACELL_COUNTS))
def test_metacell_count_checked_right_after_qc(case, good, out, capsys):
    """Fails at QC, naming the parameter, before the embedding and metacell steps run."""
    extra, problem, fix = METACELL_COUNTS[case]
    rc, message = run_step("qc", qc_args("--h5mu", good["h5mu"], "--min-rna-counts", "0", "--min-genes", "0",
                                         "--min-atac-counts", "0", "--min-peaks", "0", *extra), capsys)
    assert_rejected(rc, message, out, good["h5mu"], [problem, fix])


def test_barcodes_not_shared(sim, good, bad, out, capsys):
    atac = sim.mod["atac"].copy()
    atac.obs_names = [f"other_{name}" for name in atac.obs_names]  # e.g. a prefix added upstream
    atac_path = write_h5ad(atac, bad / "atac_other.h5ad")
    rc, message = run_step("qc", qc_args("--rna", good["rna"], "--atac", atac_path), capsys)
    assert_rejected(rc, message, out, f"{good['rna']} + {atac_path}", [
        "only 0 barcodes are shared by rna (60) and atac (60)",
        "probably come from different samples or name cells differently", "other_",
    ])


def test_duplicated_barcodes(sim, good, bad, out, capsys):
    rna = sim.mod["rna"].copy()
    names = list(rna.obs_names)
    names[5] = names[4]
    rna.obs_names = names
    rna_path = write_h5ad(rna, bad / "rna_dup.h5ad")
    rc, message = run_step("qc", qc_args("--rna", rna_path, "--atac", good["atac"]), capsys)
    assert_rejected(rc, message, out, f"{rna_path} + {good['atac']}", [
        f"1 duplicated barcodes in the rna modality (e.g. '{names[4]}')", "each cell must appear once",
    ])


COUNT_VALUES = {
    "non_integer": (0.5, "the rna matrix holds non-integer values (e.g. 0.5): it looks normalised; give raw counts"),
    "negative": (-3.0, "the rna matrix holds negative values (min -3); raw counts are needed"),
    "nan": (np.nan, "the rna matrix holds NaN or infinite values; raw counts are needed"),
}


@pytest.mark.parametrize("case", list(COUNT_VALUES))
def test_bad_count_values(case, sim, good, bad, out, capsys):
    value, phrase = COUNT_VALUES[case]
    rna_path = write_h5ad(with_counts(sim.mod["rna"], value), bad / f"rna_{case}.h5ad")
    rc, message = run_step("qc", qc_args("--rna", rna_path, "--atac", good["atac"]), capsys)
    assert_rejected(rc, message, out, f"{rna_path} + {good['atac']}", [phrase])


def test_empty_matrix_no_cells(sim, good, bad, out, capsys):
    rna_path = write_h5ad(sim.mod["rna"][:0].copy(), bad / "rna_empty.h5ad")
    rc, message = run_step("qc", qc_args("--rna", rna_path, "--atac", good["atac"]), capsys)
    assert_rejected(rc, message, out, f"{rna_path} + {good['atac']}", ["the rna matrix is empty (0 cells x 60 features)"])


def test_empty_matrix_no_features(sim, good, bad, out, capsys):
    atac_path = write_h5ad(sim.mod["atac"][:, :0].copy(), bad / "atac_empty.h5ad")
    rc, message = run_step("qc", qc_args("--rna", good["rna"], "--atac", atac_path), capsys)
    assert_rejected(rc, message, out, f"{good['rna']} + {atac_path}", ["the atac matrix is empty (60 cells x 0 features)"])


def test_peaks_on_unknown_contigs(sim, good, bad, out, capsys):
    atac = sim.mod["atac"].copy()
    renamed = [name.replace("chr2:", "contig_7:") for name in atac.var_names]
    atac.var = pd.DataFrame(index=pd.Index(renamed))  # coordinates come from the peak names
    n_bad = sum(name.startswith("contig_7:") for name in renamed)
    assert n_bad > 0
    atac_path = write_h5ad(atac, bad / "atac_contigs.h5ad")
    rc, message = run_step("qc", qc_args("--rna", good["rna"], "--atac", atac_path), capsys)
    assert_rejected(rc, message, out, f"{good['rna']} + {atac_path}", [
        f"{n_bad} peaks lie on contigs that are not chromosome names: 'contig_7' ({n_bad})",
        "check the peak names (chrN:start-end)",
    ])


def test_labels_match_no_barcode(good, bad, out, capsys):
    """Through the bin/ script, as Nextflow runs it."""
    labels = bad / "labels_other_run.csv"
    labels.write_text("barcode,label\nTTTTGGGGCCCCAAAA-1,B cell\nGGGGCCCCAAAATTTT-1,T cell\n")
    rc, message = run_step("qc", qc_args("--h5mu", good["h5mu"], "--labels", labels), capsys, via_bin=True)
    assert_rejected(rc, message, out, labels, [
        "no barcode of the labels file is a cell of this sample", "labels e.g. 'TTTTGGGGCCCCAAAA-1'",
    ])


# ---------------------------------------------------------------------------------------------
# QC thresholds, metacells, peak-to-gene
# ---------------------------------------------------------------------------------------------

def test_no_cell_left_after_qc(good, out, capsys):
    rc, message = run_step("qc", qc_args("--h5mu", good["h5mu"], "--min-rna-counts", "1e9"), capsys)
    assert_rejected(rc, message, out, good["h5mu"], [
        "no cell passes QC (0 of 60 cells left)",
        "the filter removing most cells is min_rna_counts=1000000000 (60 cells fail it; loosen it with --min-rna-counts)",
    ])


def test_more_metacells_than_cells(sim, bad, out, capsys):
    embedded = sim.copy()
    embedded.obsm["X_embedding"] = np.random.default_rng(0).normal(size=(embedded.n_obs, 5)).astype(np.float32)
    path = bad / "S1.embed.h5mu"
    embedded.write(str(path))
    rc, message = run_step("metacells", ["--sample", SAMPLE, "--input", str(path), "--n-metacells", "61"], capsys)
    assert_rejected(rc, message, out, path, [
        "61 metacells were asked for but there are only 60 cells",
        "lower --n-metacells or raise --cells-per-metacell",
    ])


NO_TSS = {
    "tss_all_missing": ("no gene has TSS information (60 genes, all with missing 'chrom' or 'tss')",),
    "no_tss_columns": ("no gene has TSS information: the RNA var table lacks column(s) ['chrom', 'tss']",),
}


@pytest.mark.parametrize("case", list(NO_TSS))
def test_no_gene_tss(case, sim, bad, out, capsys):
    aggregated = sim.copy()  # 60 observations stand in for 60 metacells
    rna = aggregated.mod["rna"]
    if case == "tss_all_missing":
        rna.var["tss"] = np.nan
    else:
        rna.var = rna.var.drop(columns=["chrom", "tss"])
    path = bad / "S1.aggregated.h5mu"
    aggregated.write(str(path))
    rc, message = run_step("peak2gene", ["--sample", SAMPLE, "--input", str(path), "--n-background", "5"], capsys)
    assert_rejected(rc, message, out, path, [*NO_TSS[case], "the samplesheet's 'annotation' column"])


def test_no_gene_tss_is_caught_at_qc(sim, bad, out, capsys):
    """The pipeline fails on it at QC, in seconds, not after the VAE and the metacells."""
    no_tss = sim.copy()
    no_tss.mod["rna"].var["tss"] = np.nan
    path = bad / "S1.h5mu"
    no_tss.write(str(path))
    rc, message = run_step("qc", qc_args("--h5mu", path, "--min-rna-counts", "0", "--min-genes", "0",
                                         "--min-atac-counts", "0", "--min-peaks", "0"), capsys)
    assert_rejected(rc, message, out, path, [*NO_TSS["tss_all_missing"], "the samplesheet's 'annotation' column"])
