"""QC metrics, filters and the QC command, checked against hand-computed values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from coem.errors import CoemInputError
from coem.qc import AutoQC, QCThresholds, apply_qc, compute_qc_metrics, derive_thresholds, mito_mask

REPO = Path(__file__).resolve().parents[2]

# 6 cells x 5 genes (one mitochondrial) and 4 peaks. Per cell, by hand:
#        RNA total  genes  % mito   ATAC total  peaks
#  c0       20        3     25.0        2         2
#  c1       12        3      0.0        3         2
#  c2        2        2     50.0        3         3
#  c3       10        3      0.0        0         0
#  c4        0        0      0.0        4         4
#  c5       10        4     10.0        2         2
RNA = np.array(
    [
        [10, 0, 5, 5, 0],
        [4, 4, 4, 0, 0],
        [1, 0, 0, 1, 0],
        [6, 2, 0, 0, 2],
        [0, 0, 0, 0, 0],
        [3, 3, 3, 1, 0],
    ],
    dtype=np.float32,
)
ATAC = np.array(
    [[1, 1, 0, 0], [2, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]], dtype=np.float32
)
GENES = ["A", "B", "C", "MT-CO1", "D"]
PEAKS = ["chr1:100-200", "chr1:300-400", "chr2:100-200", "chr2:500-600"]
CELLS = [f"c{i}" for i in range(6)]

# Thresholds for the tiny object. Cells failing: min_rna_counts -> c2, c4; min_genes -> c4;
# max_pct_mito -> c2; min_atac_counts -> c3; min_peaks -> c3. Kept: c0, c1, c5.
# Genes in the kept cells: A 3, B 2, C 3, MT-CO1 2, D 0 -> D dropped (min_cells_per_gene=2).
# Peaks in the kept cells: p0 3, p1 1, p2 2, p3 0 -> p1 and p3 dropped.
TINY = dict(
    min_rna_counts=5, min_genes=2, max_pct_mito=30, min_atac_counts=1, min_peaks=1,
    min_cells_per_gene=2, min_cells_per_peak=2, min_cells=2,
)


def _tiny_mudata(rna=RNA, atac=ATAC, genes=GENES) -> md.MuData:
    obs = pd.DataFrame(index=CELLS)
    mdata = md.MuData(
        {
            "rna": ad.AnnData(sp.csr_matrix(rna), obs=obs.copy(), var=pd.DataFrame(index=genes)),
            "atac": ad.AnnData(sp.csr_matrix(atac), obs=obs.copy(), var=pd.DataFrame(index=PEAKS)),
        }
    )
    mdata.obs["label"] = pd.Categorical(["T", "B", "T", "B", "T", "B"])
    return mdata


@pytest.fixture
def tiny():
    return _tiny_mudata()


# ---------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values(tiny):
    metrics = compute_qc_metrics(tiny)
    assert list(metrics.index) == CELLS
    np.testing.assert_array_equal(metrics["rna_total_counts"], [20, 12, 2, 10, 0, 10])
    np.testing.assert_array_equal(metrics["rna_n_genes"], [3, 3, 2, 3, 0, 4])
    np.testing.assert_allclose(metrics["rna_pct_mito"], [25.0, 0.0, 50.0, 0.0, 0.0, 10.0])
    np.testing.assert_array_equal(metrics["atac_total_counts"], [2, 3, 3, 0, 4, 2])
    np.testing.assert_array_equal(metrics["atac_n_peaks"], [2, 2, 3, 0, 4, 2])


def test_explicit_zeros_are_not_detected(tiny):
    x = sp.csr_matrix(RNA)
    x.data[x.data == 4] = 0  # c1's three 4s become stored zeros
    assert x.nnz == sp.csr_matrix(RNA).nnz
    tiny.mod["rna"].X = x
    metrics = compute_qc_metrics(tiny)
    assert metrics.loc["c1", "rna_n_genes"] == 0
    assert metrics.loc["c1", "rna_total_counts"] == 0
    assert metrics.loc["c0", "rna_n_genes"] == 3


def test_mito_prefix_is_case_insensitive_and_a_prefix():
    names = ["MT-CO1", "mt-Nd1", "Mt-Atp6", "MTOR", "SMT-1", "mt_x", "ACTB"]
    assert mito_mask(names).tolist() == [True, True, True, False, False, False, False]


def test_mouse_mito_genes_count(tiny):
    lower = _tiny_mudata(genes=["A", "B", "C", "mt-Co1", "D"])
    np.testing.assert_allclose(compute_qc_metrics(lower)["rna_pct_mito"], [25.0, 0.0, 50.0, 0.0, 0.0, 10.0])


# ---------------------------------------------------------------- filtering


def test_apply_qc_shapes_and_report(tiny):
    filtered, report = apply_qc(tiny, QCThresholds(**TINY), sample="S1")
    assert list(filtered.obs_names) == ["c0", "c1", "c5"]
    assert filtered.mod["rna"].shape == (3, 4)
    assert list(filtered.mod["rna"].var_names) == ["A", "B", "C", "MT-CO1"]
    assert list(filtered.mod["atac"].var_names) == ["chr1:100-200", "chr2:100-200"]
    assert sp.isspmatrix_csr(filtered.mod["rna"].X) and sp.isspmatrix_csr(filtered.mod["atac"].X)
    np.testing.assert_array_equal(filtered.mod["atac"].X.toarray(), [[1, 0], [2, 1], [1, 1]])
    assert (report.cells_before, report.cells_after) == (6, 3)
    assert (report.genes_before, report.genes_after) == (5, 4)
    assert (report.peaks_before, report.peaks_after) == (4, 2)
    assert report.removed_by_filter == {
        "min_rna_counts": 2, "min_genes": 1, "max_pct_mito": 1, "min_atac_counts": 1, "min_peaks": 1,
    }
    assert report.pct_cells_kept == pytest.approx(50.0)


def test_report_medians_before_and_after(tiny):
    _, report = apply_qc(tiny, QCThresholds(**TINY), sample="S1")
    assert report.medians_before == {
        "rna_total_counts": 10.0, "rna_n_genes": 3.0, "rna_pct_mito": 5.0,
        "atac_total_counts": 2.5, "atac_n_peaks": 2.0,
    }
    assert report.medians_after == {
        "rna_total_counts": 12.0, "rna_n_genes": 3.0, "rna_pct_mito": 10.0,
        "atac_total_counts": 2.0, "atac_n_peaks": 2.0,
    }
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["pct_cells_kept"] == 50.0 and as_json["thresholds"]["min_genes"] == 2


def test_filtered_obs_keeps_metrics_and_labels_and_input_untouched(tiny):
    filtered, _ = apply_qc(tiny, QCThresholds(**TINY))
    np.testing.assert_array_equal(filtered.obs["rna_total_counts"], [20, 12, 10])
    np.testing.assert_allclose(filtered.obs["rna_pct_mito"], [25.0, 0.0, 10.0])
    assert list(filtered.obs["label"].astype(str)) == ["T", "B", "B"]
    assert tiny.shape == (6, 9) and "rna_total_counts" not in tiny.obs


def test_max_filters_and_none_switches_them_off(tiny):
    loose = {**TINY, "max_pct_mito": None}
    filtered, report = apply_qc(tiny, QCThresholds(**loose))
    assert "max_pct_mito" not in report.removed_by_filter
    assert list(filtered.obs_names) == ["c0", "c1", "c5"]  # c2 still fails min_rna_counts
    capped = {**TINY, "max_rna_counts": 15, "max_atac_counts": 2, "min_cells": 1,
              "min_cells_per_gene": 1, "min_cells_per_peak": 1}
    filtered, report = apply_qc(tiny, QCThresholds(**capped))
    assert report.removed_by_filter["max_rna_counts"] == 1  # c0 (20)
    assert report.removed_by_filter["max_atac_counts"] == 3  # c1, c2, c4
    assert list(filtered.obs_names) == ["c5"]
    assert list(filtered.mod["rna"].var_names) == ["A", "B", "C", "MT-CO1"]  # D is 0 in c5
    assert list(filtered.mod["atac"].var_names) == ["chr1:100-200", "chr2:100-200"]


def test_rare_features_dropped_after_cell_filtering(tiny):
    # With min_cells_per_gene=3, only A and C are seen in 3 kept cells; MT-CO1 and B (2 cells) go.
    filtered, report = apply_qc(tiny, QCThresholds(**{**TINY, "min_cells_per_gene": 3, "min_cells_per_peak": 0}))
    assert list(filtered.mod["rna"].var_names) == ["A", "C"]
    assert report.peaks_after == 4  # 0 keeps every peak, even the empty one


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_rna_counts": -1}, "min_rna_counts must be a finite number >= 0"),
        ({"min_rna_counts": "500"}, "min_rna_counts must be a number"),
        ({"max_rna_counts": float("nan")}, "max_rna_counts must be a finite number"),
        ({"min_genes": 2.5}, "min_genes must be a whole number"),
        ({"min_peaks": True}, "min_peaks must be a whole number"),
        ({"min_cells": 0}, "min_cells must be at least 1"),
        ({"max_pct_mito": 150}, "max_pct_mito is a percentage"),
        ({"min_rna_counts": 1000, "max_rna_counts": 100}, "max_rna_counts=100 is below min_rna_counts=1000"),
        ({"min_atac_counts": 10, "max_atac_counts": 5}, "max_atac_counts=5 is below min_atac_counts=10"),
    ],
)
def test_threshold_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        QCThresholds(**kwargs)


def test_defaults_are_valid_and_documented():
    t = QCThresholds()
    assert (t.min_rna_counts, t.max_rna_counts, t.min_genes, t.max_pct_mito) == (500, None, 200, 20)
    assert (t.min_atac_counts, t.max_atac_counts, t.min_peaks) == (500, None, 200)
    assert (t.min_cells_per_gene, t.min_cells_per_peak, t.min_cells) == (3, 3, 50)
    assert "min_rna_counts=500" in QCThresholds.__doc__ and "min_cells=50" in QCThresholds.__doc__


def test_too_few_cells_names_sample_count_and_worst_filter(tiny):
    with pytest.raises(CoemInputError) as err:
        apply_qc(tiny, QCThresholds(**{**TINY, "min_cells": 4}), sample="S7")
    text = str(err.value)
    assert text.startswith("sample 'S7': only 3 of 6 cells pass QC, fewer than min_cells=4")
    assert "min_rna_counts=5 (2 cells fail it" in text and "--min-rna-counts" in text


def test_zero_cells_left_is_a_clear_error(tiny):
    with pytest.raises(CoemInputError, match=r"sample 'S1': no cell passes QC \(0 of 6 cells left\); "
                                             r"the filter removing most cells is min_atac_counts=100 \(6 cells"):
        apply_qc(tiny, QCThresholds(**{**TINY, "min_atac_counts": 100}), sample="S1")


def test_fixed_10x_preset_on_tiny_data_fails_with_most_removing_filter(tiny):
    with pytest.raises(CoemInputError, match="no cell passes QC.*min_rna_counts=500 \\(6 cells fail it"):
        apply_qc(tiny, QCThresholds(), sample="S1")


def test_auto_default_on_tiny_data_fails_on_the_floors(tiny):
    # 0-20 UMIs per cell: every cell is under the 100-UMI floor, whatever the MADs say.
    with pytest.raises(CoemInputError, match="no cell passes QC.*min_rna_counts=100 \\(6 cells fail it"):
        apply_qc(tiny, sample="S1")


def test_no_gene_left_is_an_error(tiny):
    with pytest.raises(CoemInputError, match="no gene is detected in at least min_cells_per_gene=4 of the 3 cells"):
        apply_qc(tiny, QCThresholds(**{**TINY, "min_cells_per_gene": 4}), sample="S1")


def test_missing_modality_is_an_error(tiny):
    rna_only = md.MuData({"rna": tiny.mod["rna"]})
    with pytest.raises(CoemInputError, match="no 'atac' modality"):
        compute_qc_metrics(rna_only, sample="S1")


def test_cells_missing_from_a_modality_is_an_error(tiny):
    atac = tiny.mod["atac"][:4].copy()  # c4, c5 have no ATAC
    mixed = md.MuData({"rna": tiny.mod["rna"].copy(), "atac": atac})
    with pytest.raises(CoemInputError, match="2 cells \\(e.g. 'c4'\\) are missing from the 'atac' modality"):
        compute_qc_metrics(mixed, sample="S1")


# ---------------------------------------------------------------- command


def _big_enough_mudata(n_cells: int = 60, seed: int = 0) -> md.MuData:
    """Random counts that pass the TINY thresholds; a few cells are made to fail on purpose."""
    rng = np.random.default_rng(seed)
    rna = rng.poisson(2.0, size=(n_cells, 30)).astype(np.float32)
    atac = rng.poisson(1.0, size=(n_cells, 40)).astype(np.float32)
    rna[:3] = 0  # three empty droplets
    cells = [f"AAAC{i:04d}-1" for i in range(n_cells)]
    genes = [f"G{i}" for i in range(29)] + ["MT-ND1"]
    peaks = [f"chr1:{1000 * i + 1}-{1000 * i + 500}" for i in range(40)]
    rna_ad = ad.AnnData(sp.csr_matrix(rna), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    rna_ad.var["chrom"] = "chr1"
    rna_ad.var["tss"] = np.arange(30, dtype=float) * 1000 + 1
    rna_ad.var["strand"] = "+"
    atac_ad = ad.AnnData(sp.csr_matrix(atac), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=peaks))
    atac_ad.var["chrom"] = "chr1"
    atac_ad.var["start"] = np.arange(40) * 1000 + 1
    atac_ad.var["end"] = np.arange(40) * 1000 + 500
    return md.MuData({"rna": rna_ad, "atac": atac_ad})


CLI_FLAGS = [
    "--min-rna-counts", "5", "--min-genes", "2", "--max-pct-mito", "30", "--min-atac-counts", "1",
    "--min-peaks", "1", "--min-cells-per-gene", "2", "--min-cells-per-peak", "2", "--min-cells", "10",
]


@pytest.fixture
def h5mu_input(tmp_path):
    path = tmp_path / "in.h5mu"
    _big_enough_mudata().write(str(path))
    return path


def test_cli_writes_filtered_h5mu_and_multiqc_content(h5mu_input, tmp_path, monkeypatch):
    from coem.cli.qc import main
    from coem.provenance import read_step

    monkeypatch.chdir(tmp_path)
    assert main(["--sample", "S1", "--h5mu", str(h5mu_input), "--prefix", "P", "--process-name", "QC", *CLI_FLAGS]) == 0

    out = md.read_h5mu("P.qc.h5mu")
    assert out.n_obs == 57
    assert not {"AAAC0000-1", "AAAC0001-1", "AAAC0002-1"} & set(out.obs_names)  # the empty droplets
    assert {"rna_total_counts", "rna_n_genes", "rna_pct_mito", "atac_total_counts", "atac_n_peaks"} <= set(out.obs)
    record = read_step(out, "qc")
    assert record["params"]["min_rna_counts"] == 5 and record["seed"] == 0
    assert not Path("P.qc.h5mu.partial").exists()

    summary = json.loads(Path("P.qc_summary.json").read_text())
    assert summary["cells_before"] == 60 and summary["cells_after"] == 57 and summary["sample"] == "S1"

    general = json.loads(Path("P_qc_general_mqc.json").read_text())
    assert general["id"] == "coem_qc_general" and general["plot_type"] == "generalstats"
    assert general["data"]["S1"]["cells_after_qc"] == 57
    assert general["data"]["S1"]["pct_cells_kept"] == pytest.approx(95.0)
    assert set(general["headers"]) == set(general["data"]["S1"])

    table = json.loads(Path("P_qc_summary_mqc.json").read_text())
    assert table["id"] == "coem_qc_summary" and table["section_name"] == "QC: before / after"
    assert list(table["data"]) == ["S1"]
    assert table["data"]["S1"]["cells_before"] == 60 and table["data"]["S1"]["failed_min_rna_counts"] == 3

    for suffix, metric in (("rna_counts", "rna_total_counts"), ("atac_counts", "atac_total_counts"),
                           ("genes", "rna_n_genes")):
        box = json.loads(Path(f"P_qc_{suffix}_mqc.json").read_text())
        assert box["id"] == f"coem_qc_{suffix}" and box["plot_type"] == "boxplot"
        assert list(box["data"]) == ["S1"]
        np.testing.assert_allclose(box["data"]["S1"], out.obs[metric].to_numpy())

    assert "QC:" in Path("versions.yml").read_text()


def test_cli_auto_mode_records_thresholds_and_fixed_mode_is_as_before(h5mu_input, tmp_path, monkeypatch):
    from coem.cli.qc import main
    from coem.provenance import read_step

    monkeypatch.chdir(tmp_path)
    # Auto (default): the given per-cell thresholds win, the others (mito, high cuts) are derived.
    given = ["--min-rna-counts", "5", "--min-genes", "2", "--min-atac-counts", "1", "--min-peaks", "1",
             "--min-cells-per-gene", "2", "--min-cells-per-peak", "2", "--min-cells", "10"]
    assert main(["--sample", "S1", "--h5mu", str(h5mu_input), "--prefix", "A", *given]) == 0
    summary = json.loads(Path("A.qc_summary.json").read_text())
    assert summary["mode"] == "auto" and summary["cells_after"] == 57
    how = summary["derivation"]
    assert how["min_rna_counts"] == {"value": 5, "source": "given"}
    assert how["max_pct_mito"]["source"] in {"mad", "floor", "ceiling"} and how["max_rna_counts"]["source"] == "mad"
    assert summary["thresholds"]["max_pct_mito"] == how["max_pct_mito"]["value"]
    row = json.loads(Path("A_qc_summary_mqc.json").read_text())["data"]["S1"]
    assert row["qc_mode"] == "auto" and row["threshold_min_rna_counts"] == 5
    assert row["threshold_max_rna_counts"] == how["max_rna_counts"]["value"] and row["failed_min_rna_counts"] == 3
    record = read_step(md.read_h5mu("A.qc.h5mu"), "qc")
    assert record["params"]["qc_mode"] == "auto" and record["params"]["min_genes"] == 2

    # Fixed: exactly the thresholds given, the 10x defaults for the rest, max_* off unless given.
    assert main(["--sample", "S1", "--h5mu", str(h5mu_input), "--prefix", "F", "--qc-mode", "fixed",
                 *CLI_FLAGS]) == 0
    summary = json.loads(Path("F.qc_summary.json").read_text())
    assert summary["mode"] == "fixed" and summary["derivation"] == {} and summary["cells_after"] == 57
    assert summary["thresholds"]["max_pct_mito"] == 30 and summary["thresholds"]["max_rna_counts"] is None
    row = json.loads(Path("F_qc_summary_mqc.json").read_text())["data"]["S1"]
    assert row["threshold_max_rna_counts"] == "off" and "failed_max_rna_counts" not in row
    with pytest.raises(CoemInputError, match="no cell passes QC.*min_rna_counts=500"):
        main(["--sample", "S1", "--h5mu", str(h5mu_input), "--prefix", "G", "--qc-mode", "fixed"])


def test_cli_given_max_below_derived_min_is_an_input_error(h5mu_input, tmp_path, monkeypatch):
    from coem.cli.qc import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CoemInputError, match="invalid QC threshold: max_rna_counts=50 is below min_rna_counts=100"):
        main(["--sample", "S1", "--h5mu", str(h5mu_input), "--max-rna-counts", "50"])


def test_cli_boxplots_are_subsampled_with_the_seed(monkeypatch):
    import coem.cli.qc as cli

    monkeypatch.setattr(cli, "MAX_BOX_CELLS", 5)
    a, b, c = cli._subsample(20, 0), cli._subsample(20, 0), cli._subsample(20, 1)
    assert len(a) == 5 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(cli._subsample(4, 0), np.arange(4))


def test_cli_failing_sample_writes_nothing(h5mu_input, tmp_path, monkeypatch):
    from coem.cli.qc import main

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    with pytest.raises(CoemInputError, match=r"sample 'S1', file '.*\.h5mu': only 57 of 60 cells pass QC, fewer than min_cells=100"):
        main(["--sample", "S1", "--h5mu", str(h5mu_input), "--prefix", "P", *CLI_FLAGS, "--min-cells", "100"])
    assert list(out_dir.iterdir()) == []


def test_cli_input_and_threshold_errors(tmp_path):
    from coem.cli.qc import main

    with pytest.raises(CoemInputError, match="give exactly one input.*found: h5, h5mu"):
        main(["--sample", "S1", "--h5", "a.h5", "--h5mu", "b.h5mu"])
    with pytest.raises(CoemInputError, match="--rna and --atac must be given together"):
        main(["--sample", "S1", "--rna", "r.h5ad"])
    with pytest.raises(CoemInputError, match="found: none"):
        main(["--sample", "S1"])
    with pytest.raises(CoemInputError, match="invalid QC threshold: min_genes must be a whole number"):
        main(["--sample", "S1", "--h5mu", "x.h5mu", "--min-genes", "2.5"])


def test_bin_script_is_the_shim_and_input_errors_exit_2(tmp_path, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.qc import main

    shim = REPO / "bin" / "coem_qc.py"
    assert os.access(shim, os.X_OK)
    assert "from coem.cli.qc import main" in shim.read_text() and "run_cli(main)" in shim.read_text()
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S9", "--max-pct-mito", "none"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("ERROR: sample 'S9': give exactly one input")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- simulated data


def test_defaults_keep_most_simulated_cells():
    from coem.simulate import simulate_multiome

    mdata = simulate_multiome(n_cells=300, seed=0).mdata
    filtered, report = apply_qc(mdata, QCThresholds(), sample="sim")  # the fixed 10x preset
    assert report.removed_by_filter["max_pct_mito"] < 0.2 * report.cells_before
    assert report.cells_after > 0.8 * report.cells_before
    assert filtered.n_obs == report.cells_after
    _, auto = apply_qc(mdata, sample="sim")  # the derived thresholds keep well-behaved cells too
    assert auto.mode == "auto" and auto.cells_after >= 0.98 * auto.cells_before


def test_planted_low_quality_cells_are_removed_and_good_ones_kept():
    """10x-like densities (1,500 UMIs, 3,000 ATAC counts per cell), 5% of each planted kind."""
    from coem.simulate import simulate_multiome

    sim = simulate_multiome(n_cells=2000, n_genes=500, n_peaks=5000, seed=0, empty_fraction=0.05,
                            low_count_fraction=0.05, damaged_fraction=0.05, doublet_fraction=0.05)
    quality = sim.mdata.obs["quality"].astype(str)
    filtered, report = apply_qc(sim.mdata, sample="sim")
    removed = ~quality.index.isin(filtered.obs_names)
    bad = quality.isin(["empty", "low_count", "damaged"]).to_numpy()
    good = (quality == "good").to_numpy()
    assert bad.sum() == 300 and good.sum() == 1600
    assert removed[bad].mean() >= 0.90
    assert removed[good].mean() <= 0.02
    for kind in ("empty", "low_count", "damaged"):  # each kind on its own, too
        assert removed[(quality == kind).to_numpy()].mean() >= 0.90, kind
    # Count-based QC is not a doublet detector: a doublet has about twice a cell's counts,
    # well under the 5-MAD high cut. Recorded, not required.
    assert removed[(quality == "doublet").to_numpy()].mean() < 0.5


# ---------------------------------------------------------------- auto thresholds

# log1p(counts) = 8 + (-2, -1, -0.5, 0, 0, 0, 0.5, 1, 2): median 8, MAD 0.5, scaled 0.7413 (x 1.4826).
HAND_COUNTS = np.array([402, 1096, 1807, 2980, 2980, 2980, 4914, 8102, 22025], dtype=float)


def _hand_metrics(genes=300, mito=(0, 1, 2, 3, 4, 5, 6, 7, 30.0)):
    return pd.DataFrame({
        "rna_total_counts": HAND_COUNTS, "rna_n_genes": np.full(9, genes), "rna_pct_mito": np.asarray(mito, float),
        "atac_total_counts": 2 * HAND_COUNTS, "atac_n_peaks": np.full(9, 40),
    })


def test_derived_thresholds_match_hand_computed_values():
    t, how = derive_thresholds(_hand_metrics())
    # low: expm1(8 - 3 x 0.7413) = 321.3 -> 322 (whole UMIs); high: expm1(8 + 5 x 0.7413) = 121,392.x
    assert t.min_rna_counts == 322 and how["min_rna_counts"]["source"] == "mad"
    assert t.max_rna_counts == 121392
    assert t.min_atac_counts == 644  # 2x the counts: log1p shifts by log 2, MAD unchanged
    # genes and peaks have MAD 0 (all cells equal): only the floors apply
    assert (t.min_genes, how["min_genes"]["source"]) == (50, "floor")
    assert (t.min_peaks, how["min_peaks"]["source"]) == (50, "floor")
    # % mito: expm1(log1p(4) + 3 x 0.697) = 39.4 > the 20% ceiling
    assert (t.max_pct_mito, how["max_pct_mito"]["source"]) == (20.0, "ceiling")
    assert how["min_rna_counts"]["mad_log1p"] == pytest.approx(1.4826 * 0.5, rel=1e-4)


def test_derived_mito_cut_between_floor_and_ceiling_and_floor_without_mito():
    t, how = derive_thresholds(_hand_metrics(mito=(6, 7, 7.5, 8, 8, 8, 8.5, 9, 10)))
    # log1p(% mito): median log 9 = 2.197; |deviations| median log(9/8.5) = 0.0572, scaled 0.0847;
    # cut expm1(2.197 + 3 x 0.0848) = 10.606, rounded down to 0.01
    assert t.max_pct_mito == 10.6 and how["max_pct_mito"]["source"] == "mad"
    t, how = derive_thresholds(_hand_metrics(mito=(3, 3.5, 3.8, 4, 4, 4, 4.2, 4.5, 5)))
    assert (t.max_pct_mito, how["max_pct_mito"]["mad_cut"]) == (5.0, 4.99)  # the 5% floor binds
    t, how = derive_thresholds(_hand_metrics(mito=(0,) * 9))  # no mitochondrial genes in the panel
    assert (t.max_pct_mito, how["max_pct_mito"]["source"]) == (5.0, "floor")


def test_given_thresholds_replace_derived_ones_and_rule_knobs_apply():
    base = QCThresholds(min_rna_counts=1000, max_pct_mito=None, min_cells=7)
    t, how = derive_thresholds(_hand_metrics(), AutoQC(nmads=2, nmads_high=None), base,
                               given=("min_rna_counts", "max_pct_mito"))
    assert t.min_rna_counts == 1000 and how["min_rna_counts"] == {"value": 1000, "source": "given"}
    assert t.max_pct_mito is None and t.min_cells == 7
    assert t.max_rna_counts is None and how["max_rna_counts"]["source"] == "off"
    # ATAC: median log1p 8.6930, scaled MAD 0.74152: expm1(8.6930 - 2 x 0.74152) = 1351.4 -> 1352
    assert t.min_atac_counts == 1352


def test_auto_rule_validation():
    with pytest.raises(ValueError, match="nmads must be > 0"):
        AutoQC(nmads=0)
    with pytest.raises(ValueError, match="mito_floor <= mito_ceiling"):
        AutoQC(mito_floor=30)
    with pytest.raises(ValueError, match="unknown per-cell thresholds"):
        derive_thresholds(_hand_metrics(), given=("min_cells",))


def test_auto_mode_report_records_rule_and_derivation():
    from coem.simulate import simulate_multiome

    mdata = simulate_multiome(n_cells=300, seed=1).mdata
    _, report = apply_qc(mdata, sample="sim")
    out = json.loads(json.dumps(report.to_dict()))
    assert out["mode"] == "auto" and out["rule"]["nmads"] == 3.0 and out["rule"]["floor_rna_counts"] == 100
    assert set(out["derivation"]) == {"min_rna_counts", "max_rna_counts", "min_genes", "max_pct_mito",
                                      "min_atac_counts", "max_atac_counts", "min_peaks"}
    assert out["thresholds"]["min_rna_counts"] == out["derivation"]["min_rna_counts"]["value"]
    _, fixed = apply_qc(mdata, QCThresholds(), sample="sim")
    assert fixed.mode == "fixed" and fixed.derivation == {} and fixed.thresholds["min_rna_counts"] == 500


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_scicar_auto_qc_keeps_what_the_documented_thresholds_keep():
    """No flags: the derived thresholds keep >= 80% of the 2,274 cells the documented ones keep."""
    path = REPO / ".." / "shared" / "data" / "scicar_a549" / "scicar_a549.h5mu"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (needs the shared data folder next to the repository)")
    mdata = md.read_h5mu(str(path))
    filtered, report = apply_qc(mdata, sample="scicar")
    documented, _ = apply_qc(mdata, QCThresholds(min_rna_counts=200, min_genes=100, min_atac_counts=100,
                                                  min_peaks=100), sample="scicar")
    kept = set(filtered.obs_names)
    assert len(kept & set(documented.obs_names)) >= 0.8 * documented.n_obs
    assert report.cells_after == 2422  # sci-CAR's RNA floor (100 UMIs) and ATAC floor (100) bind
    assert report.thresholds["min_rna_counts"] == 100 and report.thresholds["min_atac_counts"] == 100
    _, fixed_10x = apply_qc(mdata, QCThresholds(), sample="scicar")  # what the old defaults did
    assert fixed_10x.cells_after < 0.2 * report.cells_before


@pytest.mark.realdata
def test_scicar_qc_binary_atac_and_labels_carried():
    path = REPO / ".." / "shared" / "data" / "scicar_a549" / "scicar_a549.h5mu"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see DESIGN.md section 8)")
    mdata = md.read_h5mu(str(path))
    metrics = compute_qc_metrics(mdata)
    # Binary ATAC: counts per cell equal peaks per cell; no MT- genes among scAI's 1,185 genes.
    np.testing.assert_array_equal(metrics["atac_total_counts"], metrics["atac_n_peaks"])
    assert metrics["rna_pct_mito"].max() == 0
    loose = QCThresholds(min_rna_counts=200, min_genes=100, min_atac_counts=100, min_peaks=100)
    filtered, report = apply_qc(mdata, loose, sample="scicar")
    assert (report.cells_before, report.cells_after) == (2641, 2274)
    assert report.genes_after == 1185 and report.peaks_after == 51197
    assert filtered.obs["dex_time_h"].value_counts().to_dict() == {"3": 898, "1": 873, "0": 503}


def test_data_losses_become_warnings_for_the_end_of_run_summary(tmp_path, monkeypatch):
    """Barcodes dropped by the intersection, few labelled cells and a small share kept by QC are
    each one warning line (sample, step, sentence) in $COEM_WARNINGS_FILE; a clean sample has none."""
    from coem.cli.qc import main
    from coem.simulate import simulate_multiome

    sim = simulate_multiome(n_cells=200, n_genes=80, n_peaks=300, seed=3).mdata
    rna, atac = sim.mod["rna"].copy(), sim.mod["atac"][:140].copy()  # 30% of RNA barcodes have no ATAC partner
    rna.write_h5ad(tmp_path / "rna.h5ad")
    atac.write_h5ad(tmp_path / "atac.h5ad")
    labelled = sim.obs_names[:14]  # 10% of the 140 shared cells
    pd.DataFrame({"barcode": labelled, "label": "T"}).to_csv(tmp_path / "labels.csv", index=False)
    warnings_file = tmp_path / "coem_warnings.txt"
    monkeypatch.setenv("COEM_WARNINGS_FILE", str(warnings_file))
    monkeypatch.chdir(tmp_path)
    median = float(np.median(np.asarray(rna[:140].X.sum(axis=1)).ravel()))
    args = ["--sample", "S1", "--rna", "rna.h5ad", "--atac", "atac.h5ad", "--labels", "labels.csv",
            "--qc-mode", "fixed", "--min-rna-counts", str(int(median * 1.3)), "--min-genes", "0",
            "--min-atac-counts", "0", "--min-peaks", "0", "--min-cells", "3"]
    assert main(args) == 0
    lines = [line.split("\t") for line in warnings_file.read_text().splitlines()]
    assert all(sample == "S1" and step == "qc" for sample, step, _ in lines)
    text = "\n".join(message for *_, message in lines)
    assert "60 of 200 RNA barcodes (30%) have no partner in the other modality" in text
    out = md.read_h5mu("S1.qc.h5mu")  # coverage among the cells kept, the ones purity is computed on
    n_labelled = int(out.obs["label"].notna().sum())
    assert 0 < n_labelled < 0.9 * out.n_obs
    assert f"labels cover {100 * n_labelled / out.n_obs:.0f}% of the cells ({n_labelled} of {out.n_obs})" in text
    kept = json.loads(Path("S1.qc_summary.json").read_text())["cells_after"]
    assert kept < 70 and f"QC kept {100 * kept / 140:.0f}% of the cells ({kept} of 140" in text
    assert len(lines) == 3

    warnings_file.unlink()
    sim.write(str(tmp_path / "clean.h5mu"))
    assert main(["--sample", "S2", "--h5mu", "clean.h5mu"]) == 0
    assert not warnings_file.exists()
