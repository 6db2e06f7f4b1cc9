"""coem.link_truth: hand-computed precision-recall, AUPRC, recall and calibration on toy pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coem import link_truth as lt


def toy_links() -> pd.DataFrame:
    # 6 pairs ranked by z; known links at ranks 1, 3 and 6
    return pd.DataFrame({
        "gene": ["A", "A", "B", "B", "C", "C"],
        "peak": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "z": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        "r": [0.9, 0.8, 0.7, -0.2, 0.5, 0.4],
        "fdr": [0.001, 0.04, 0.08, 0.09, 0.15, 0.5],
    })


def toy_known() -> pd.DataFrame:
    return pd.DataFrame({"gene": ["A", "B", "C", "D"], "peak": ["p1", "p3", "p6", "p9"],
                         "programme": ["joint", "traj_up", "housekeeping", "joint"]})


def test_label_known_matches_gene_and_peak():
    links = toy_links()
    assert lt.label_known(links, toy_known()).tolist() == [True, False, True, False, False, True]
    # same peak with another gene is not a known link
    other = pd.DataFrame({"gene": ["B"], "peak": ["p1"]})
    assert lt.label_known(other, toy_known()).tolist() == [False]
    assert lt.label_known(links.iloc[:0], toy_known()).shape == (0,)


def test_auprc_hand_computed():
    labels = [1, 0, 1, 0, 0, 1]
    scores = toy_links()["z"]
    # AP = 1/3 * (1/1 + 2/3 + 3/6) = 13/18
    assert lt.auprc(scores, labels) == pytest.approx(13 / 18)
    curve = lt.precision_recall(scores, labels)
    assert curve["precision"].tolist() == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6])
    assert curve["recall"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])


def test_ties_enter_together():
    # ranks 2 and 3 tied (one known, one not): one curve point for both
    scores = [6.0, 5.0, 5.0, 3.0]
    labels = [1, 0, 1, 0]
    curve = lt.precision_recall(scores, labels)
    assert curve["n_called"].tolist() == [1, 3, 4]
    assert curve["precision"].tolist() == pytest.approx([1, 2 / 3, 2 / 4])
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert lt.auprc(scores, labels) == pytest.approx(5 / 6)


def test_nan_scores_rank_last():
    # the known link with NaN score is found only at the very end
    assert lt.auprc([np.nan, 2.0, 1.0], [1, 1, 0]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(lt.auprc([1.0, 2.0], [0, 0]))


def test_auprc_matches_sklearn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        labels = rng.random(n) < 0.2
        labels[0] = True
        scores = np.round(rng.normal(size=n) + labels, 1)  # rounding makes ties
        assert lt.auprc(scores, labels) == pytest.approx(sklearn_metrics.average_precision_score(labels, scores))
        precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
        curve = lt.precision_recall(scores, labels)
        # sklearn lists points from the lowest threshold up and appends (recall 0, precision 1)
        assert curve["precision"].to_numpy()[::-1] == pytest.approx(precision[:-1])
        assert curve["recall"].to_numpy()[::-1] == pytest.approx(recall[:-1])


def test_recall_and_calibration():
    links = toy_links()
    labels = lt.label_known(links, toy_known())
    # fdr <= 0.1 and r > 0: rows 0, 1, 2 (row 3 has r < 0); known among them: rows 0 and 2
    assert lt.recall_at_fdr(links, labels, 0.1) == pytest.approx(2 / 3)
    cal = lt.calibration(links, labels, qs=(0.01, 0.05, 0.1, 0.2))
    assert cal["n_called"].tolist() == [1, 2, 3, 4]
    assert cal["n_false"].tolist() == [0, 1, 1, 2]
    assert cal["false_share"].tolist() == pytest.approx([0, 1 / 2, 1 / 3, 2 / 4])
    assert cal["recall"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    nothing = lt.calibration(links.assign(fdr=1.0), labels, qs=(0.1,))
    assert nothing.loc[0.1, "n_called"] == 0 and np.isnan(nothing.loc[0.1, "false_share"])


def test_recoverable_marks_constant_genes():
    known = toy_known()
    assert lt.recoverable(known).tolist() == [True, True, False, True]
    genes = pd.DataFrame({"programme": ["joint", "housekeeping", "traj_down", "mitochondrial"]},
                         index=["A", "B", "C", "D"])
    assert lt.recoverable(known[["gene", "peak"]], genes_truth=genes).tolist() == [True, False, True, False]
    peaks = pd.DataFrame({"kind": ["promoter", "distal", "background", "promoter"]}, index=["p1", "p3", "p6", "p9"])
    assert lt.recoverable(known[["gene", "peak"]], peaks_truth=peaks).tolist() == [True, True, False, True]
    assert lt.recoverable(known[["gene", "peak"]]).all()


def test_summarise_against_truth():
    links, known = toy_links(), toy_known()
    out = lt.summarise_against_truth(links, known, recoverable=lt.recoverable(known), curve_points=10)
    assert out["n_known"] == 4 and out["n_known_tested"] == 3
    assert out["auprc"] == pytest.approx(13 / 18)
    assert out["recall_at_fdr_0.1"] == pytest.approx(2 / 3)
    assert out["precision_at_fdr_0.1"] == pytest.approx(2 / 3)
    assert out["n_called_at_fdr_0.1"] == 3
    # without C-p6 (housekeeping): 5 pairs, known at ranks 1 and 3 -> AP = 1/2 * (1 + 2/3)
    assert out["n_known_tested_recoverable"] == 2
    assert out["auprc_recoverable"] == pytest.approx(5 / 6)
    assert out["recall_recoverable_at_fdr_0.1"] == pytest.approx(1.0)
    assert out["pr_curve"]["recall"][-1] == pytest.approx(1.0)
    assert lt.summarise_against_truth(links, known, score="r")["auprc"] == pytest.approx(
        lt.auprc(links["r"], lt.label_known(links, known)))
