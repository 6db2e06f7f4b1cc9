"""Score peak-to-gene links against known (e.g. planted) links: AUPRC, recall and calibration.

Used by ``benchmarks/validate_links.py`` and the pipeline's report. Everything is vectorised
pandas/numpy; nothing here computes correlations.

Conventions:

- ``links``: one row per tested gene-peak pair, columns ``gene``, ``peak`` and whatever is
  scored: a score column (default ``z``, higher = more likely a link), ``fdr`` and ``r``.
  NaN scores (pairs a method could not test, e.g. a peak closed in every metacell) rank
  **below** every finite score, all tied, so every method is scored on the same pairs.
- ``known``: the true links, columns ``gene`` and ``peak`` (the simulator's ``links`` table).
- a pair is **called** at level q when ``fdr <= q`` and ``r > 0`` (the links sought are positive).
- precision-recall as scikit-learn defines it: one point per distinct score (tied pairs enter
  together), average precision ``AP = sum_n (R_n - R_{n-1}) P_n``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

# programmes whose genes are expressed at a constant level in every cell (coem.simulate):
# housekeeping genes (activity 1 everywhere; their linked peaks are constant too) and chrM genes.
CONSTANT_PROGRAMMES = ("housekeeping", "mitochondrial")
DEFAULT_QS = (0.01, 0.05, 0.1, 0.2)


def _pair_keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([frame["gene"].astype(str).to_numpy(), frame["peak"].astype(str).to_numpy()])


def label_known(links: pd.DataFrame, known: pd.DataFrame) -> np.ndarray:
    """Boolean per row of ``links``: is (gene, peak) one of the ``known`` links (exact match on both)?"""
    if len(links) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(_pair_keys(links).isin(_pair_keys(known)), dtype=bool)


def _clean(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-d of one length, got {scores.shape} and {labels.shape}")
    return np.where(np.isnan(scores), -np.inf, scores), labels


def precision_recall(scores, labels) -> pd.DataFrame:
    """Precision-recall curve, one row per distinct score from the highest down.

    Columns ``threshold`` (pairs with score >= threshold are predicted links), ``n_called``,
    ``tp``, ``precision``, ``recall``. Ties enter together (as ``sklearn.metrics.
    precision_recall_curve``); NaN scores are tied at -inf. No positives: recall is NaN.
    """
    scores, labels = _clean(scores, labels)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.zeros(0, dtype=int)
    n_called = last + 1
    tp = tp[last]
    n_pos = int(labels.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    return pd.DataFrame({"threshold": s[last], "n_called": n_called, "tp": tp,
                         "precision": tp / n_called, "recall": recall})


def auprc(scores, labels) -> float:
    """Average precision (area under the precision-recall curve, step-wise; = scikit-learn's
    ``average_precision_score``). NaN without positives."""
    curve = precision_recall(scores, labels)
    if curve.empty or not np.isfinite(curve["recall"]).all():
        return float("nan")
    recall = curve["recall"].to_numpy()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * curve["precision"].to_numpy()))


def called(links: pd.DataFrame, q: float, fdr_col: str = "fdr", r_col: str = "r") -> np.ndarray:
    """Pairs called at level q: ``fdr <= q`` and ``r > 0`` (NaN never called)."""
    fdr = links[fdr_col].to_numpy(dtype=np.float64)
    r = links[r_col].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (fdr <= q) & (r > 0)


def recall_at_fdr(links: pd.DataFrame, labels, q: float = 0.1, fdr_col: str = "fdr", r_col: str = "r") -> float:
    """Share of the known pairs (``labels``) that are called at level q. NaN without known pairs."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    return float((called(links, q, fdr_col, r_col) & labels).sum() / n_pos)


def calibration(links: pd.DataFrame, labels, qs: Iterable[float] = DEFAULT_QS, fdr_col: str = "fdr",
                r_col: str = "r") -> pd.DataFrame:
    """Per level q: ``n_called``, ``n_false`` (called pairs that are not known links),
    ``false_share`` (= n_false / n_called, the observed false discovery proportion; NaN when
    nothing is called; calibrated means ``false_share <= q``) and ``recall``."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    rows = []
    for q in qs:
        call = called(links, q, fdr_col, r_col)
        n_called, n_false = int(call.sum()), int((call & ~labels).sum())
        rows.append({"q": float(q), "n_called": n_called, "n_false": n_false,
                     "false_share": n_false / n_called if n_called else float("nan"),
                     "recall": (n_called - n_false) / n_pos if n_pos else float("nan")})
    return pd.DataFrame(rows).set_index("q")


def recoverable(known: pd.DataFrame, genes_truth: pd.DataFrame | None = None,
                peaks_truth: pd.DataFrame | None = None) -> np.ndarray:
    """Boolean per row of ``known``: can a correlation method recover this planted link at all?

    A link is **unrecoverable** when its gene's expression is constant across cells: in
    ``coem.simulate`` that is every gene of programme ``housekeeping`` (activity 1 in every
    type and along the whole trajectory; its promoter and distal peaks are constant as well)
    and the chrM genes (which have no links). Any variation such a pair shows is sampling
    noise, so its correlation has expectation 0. A link is also unrecoverable when its peak
    has constant openness (``peaks_truth['kind'] == 'background'``; the simulator never links
    those). The gene's programme comes from ``known['programme']`` when present, else from
    ``genes_truth['programme']`` (indexed by gene); without either, every link counts as
    recoverable.
    """
    keep = np.ones(len(known), dtype=bool)
    if "programme" in known.columns:
        programme = known["programme"].astype(str).to_numpy()
    elif genes_truth is not None and "programme" in genes_truth.columns:
        programme = genes_truth["programme"].reindex(known["gene"].astype(str)).astype(str).to_numpy()
    else:
        programme = None
    if programme is not None:
        keep &= ~np.isin(programme, CONSTANT_PROGRAMMES)
    if peaks_truth is not None and "kind" in peaks_truth.columns:
        kind = peaks_truth["kind"].reindex(known["peak"].astype(str)).astype(str).to_numpy()
        keep &= kind != "background"
    return keep


def summarise_against_truth(links: pd.DataFrame, known: pd.DataFrame, recoverable: np.ndarray | None = None,
                            score: str = "z", fdr_col: str = "fdr", r_col: str = "r",
                            qs: Iterable[float] = DEFAULT_QS, curve_points: int = 0) -> dict[str, Any]:
    """The numbers a truth table shows for one method's links.

    ``recoverable``: boolean per row of ``known`` (see :func:`recoverable`); the
    ``*_recoverable`` numbers drop the unrecoverable known pairs from the scored set (they are
    then neither positives nor negatives). ``curve_points`` > 0 adds the precision-recall
    curve thinned to about that many points (``pr_curve``: lists ``recall``, ``precision``).
    """
    labels = label_known(links, known)
    scores = links[score].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {
        "n_pairs": int(len(links)),
        "n_pairs_scored": int(np.isfinite(scores).sum()),
        "n_known": int(len(known)),
        "n_known_tested": int(labels.sum()),
        "prevalence": float(labels.mean()) if len(labels) else float("nan"),
        "auprc": auprc(scores, labels),
    }
    cal = calibration(links, labels, qs, fdr_col, r_col)
    for q, row in cal.iterrows():
        out[f"recall_at_fdr_{q:g}"] = float(row["recall"])
        out[f"precision_at_fdr_{q:g}"] = 1.0 - float(row["false_share"])
        out[f"n_called_at_fdr_{q:g}"] = int(row["n_called"])
        out[f"false_share_at_fdr_{q:g}"] = float(row["false_share"])
    if recoverable is not None:
        recoverable = np.asarray(recoverable, dtype=bool)
        bad = label_known(links, known[~recoverable]) if (~recoverable).any() else np.zeros(len(links), bool)
        sub, sub_labels = links[~bad], labels[~bad]
        out["n_known_tested_recoverable"] = int(sub_labels.sum())
        out["auprc_recoverable"] = auprc(sub[score].to_numpy(dtype=np.float64), sub_labels)
        out["prevalence_recoverable"] = float(sub_labels.mean()) if len(sub_labels) else float("nan")
        cal_sub = calibration(sub, sub_labels, qs, fdr_col, r_col)
        for q, row in cal_sub.iterrows():
            out[f"recall_recoverable_at_fdr_{q:g}"] = float(row["recall"])
    if curve_points > 0:
        curve = precision_recall(scores, labels)
        step = max(1, len(curve) // curve_points)
        thin = curve.iloc[np.unique(np.r_[np.arange(0, len(curve), step), len(curve) - 1])] if len(curve) else curve
        out["pr_curve"] = {"recall": [round(float(v), 5) for v in thin["recall"]],
                           "precision": [round(float(v), 5) for v in thin["precision"]]}
    return out
