"""The full per-class report, torch-free (NumPy only): what the competition's evaluation prints, plus
the one-vs-rest macro ROC-AUC from the probabilities.

    rows, summary = class_report(y_true, probs)       # probs (N, 18); predictions are probs.argmax(1)
    write_report_csv("val_report.csv", y_true, probs)

Per class: precision, recall, F1 (0 where undefined, like scikit-learn's ``zero_division=0``) and
support. ROC-AUC rule for classes absent from the labels: a class's one-vs-rest AUC is defined only
when the labels hold at least one positive and one negative; the macro AUC is the mean over those
classes, and ``auc_classes`` says how many that was (18 when every class is present). Ties in the
scores count one half (the Mann-Whitney statistic), as scikit-learn's ``roc_auc_score`` does.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from maskdata import labels
from maskdata.io import atomic_write_text

COLUMNS = ("class", "name", "precision", "recall", "f1", "support", "roc_auc")


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for the boolean ``positive``; NaN without both positives and negatives."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank over each run of tied scores
    edges = np.flatnonzero(np.r_[True, s[1:] != s[:-1], True])
    for a, b in zip(edges[:-1], edges[1:]):
        ranks[a:b] = (a + b + 1) / 2.0
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def class_report(y_true, probs, num_classes: int = labels.NUM_CLASSES) -> tuple[list[dict], dict]:
    """(one row per class, summary with macro/weighted averages, accuracy and the macro ROC-AUC)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y), num_classes):
        raise ValueError(f"probs must be (N, {num_classes}) for {len(y)} labels, got {p.shape}")
    pred = p.argmax(1)
    names = [r.name for r in labels.label_table()] if num_classes == labels.NUM_CLASSES else None
    rows = []
    for c in range(num_classes):
        tp = int(((pred == c) & (y == c)).sum())
        n_pred, support = int((pred == c).sum()), int((y == c).sum())
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        rows.append({"class": c, "name": names[c] if names else str(c),
                     "precision": prec, "recall": rec, "f1": f1, "support": support,
                     "roc_auc": binary_auc(y == c, p[:, c])})
    aucs = [r["roc_auc"] for r in rows if not math.isnan(r["roc_auc"])]
    sup = np.array([r["support"] for r in rows], dtype=np.float64)
    summary = {"accuracy": float((pred == y).mean()) if len(y) else 0.0, "support": int(len(y)),
               "auc_classes": len(aucs), "roc_auc_macro": float(np.mean(aucs)) if aucs else math.nan}
    for k in ("precision", "recall", "f1"):
        v = np.array([r[k] for r in rows])
        summary[f"{k}_macro"] = float(v.mean())
        summary[f"{k}_weighted"] = float((v * sup).sum() / sup.sum()) if sup.sum() else 0.0
    return rows, summary


def report_csv_text(y_true, probs, report: tuple[list[dict], dict] | None = None) -> str:
    """The report as CSV; ``report``: :func:`class_report`'s result when the caller already has it."""
    rows, summary = report if report is not None else class_report(y_true, probs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    fmt = lambda v: "" if isinstance(v, float) and math.isnan(v) else (f"{v:.6f}" if isinstance(v, float) else v)
    for r in rows:
        w.writerow([fmt(r[k]) for k in COLUMNS])
    w.writerow(["macro", "", *(fmt(summary[f"{k}_macro"]) for k in ("precision", "recall", "f1")),
                summary["support"], fmt(summary["roc_auc_macro"])])
    w.writerow(["weighted", "", *(fmt(summary[f"{k}_weighted"]) for k in ("precision", "recall", "f1")),
                summary["support"], ""])
    w.writerow(["accuracy", "", "", "", fmt(summary["accuracy"]), summary["support"], ""])
    w.writerow(["auc_classes", "", "", "", "", summary["auc_classes"], ""])
    return buf.getvalue()


def write_report_csv(path: str | Path, y_true, probs) -> Path:
    atomic_write_text(path, report_csv_text(y_true, probs))
    return Path(path)
