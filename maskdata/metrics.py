"""Competition metrics in NumPy: 18-class macro F1 (mean per-class F1, zero_division=0), accuracy,
per-head F1, confusion matrix; the expected calibration error (ECE) and its reliability bins. Used by
training validation and calibration, export checks and batch scoring."""
from __future__ import annotations

import numpy as np

from maskdata import labels


def confusion(y_true, y_pred, num_classes: int = labels.NUM_CLASSES) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1, 0 where a class is neither present nor predicted (zero_division=0)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true, y_pred, num_classes: int = labels.NUM_CLASSES) -> float:
    return float(f1_from_confusion(confusion(y_true, y_pred, num_classes)).mean())


def head_of(classes, head: str) -> np.ndarray:
    """Class indices → that head's indices (``class = mask * 6 + gender * 3 + age``)."""
    c = np.asarray(classes, dtype=np.int64)
    n_gender, n_age = labels.HEAD_SIZES["gender"], labels.HEAD_SIZES["age"]
    return {"mask": c // (n_gender * n_age), "gender": (c // n_age) % n_gender, "age": c % n_age}[head]


def report(y_true, y_pred) -> dict[str, float]:
    """All the numbers we report, with namespaced names (``f1``, ``acc``, ``f1_mask`` …)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    out = {"f1": macro_f1(y_true, y_pred), "acc": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for head, n in labels.HEAD_SIZES.items():
        out[f"f1_{head}"] = macro_f1(head_of(y_true, head), head_of(y_pred, head), n)
    return out


ECE_BINS = 15


def reliability(probs, y, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: (mean confidence, accuracy, count)."""
    p = np.asarray(probs, dtype=np.float64)
    conf, correct = p.max(1), (p.argmax(1) == np.asarray(y)).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    mean_conf = np.bincount(idx, conf, minlength=bins) / np.maximum(count, 1)
    acc = np.bincount(idx, correct, minlength=bins) / np.maximum(count, 1)
    return mean_conf, acc, count


def ece(probs, y, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (share of samples) * |accuracy - confidence|."""
    mean_conf, acc, count = reliability(probs, y, bins)
    n = count.sum()
    return float((count / n * np.abs(acc - mean_conf)).sum()) if n else 0.0
