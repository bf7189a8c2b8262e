"""Scoring predictions against an answers CSV, and the one confusion-matrix figure.

Torch-free and beside :mod:`maskdata.metrics`, whose numbers it reports: ``mask-submit --labels``
(serving) and a training run's ``confusion.png`` (training.loop.plots) both draw their confusion matrix
with :func:`plot_confusion`, so the two figures read the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskdata import labels, metrics
from maskdata.io import atomic_path, read_csv

SKIPPED = -1  # the ``ans`` of an image that could not be read (missing, undecodable)


def read_answers(labels_csv: str | Path) -> dict[str, int]:
    """``ImageID,ans`` CSV → {ImageID: class}, with a one-line reason for a bad ``ans``."""
    _, rows = read_csv(labels_csv, ("ImageID", "ans"))
    truth: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        try:
            truth[row["ImageID"]] = int(row["ans"])
        except ValueError:
            raise ValueError(f"{labels_csv}: row {line}: ans {row['ans']!r} is not a class index") from None
    return truth


def score(image_ids: list[str], ans: np.ndarray, labels_csv: str | Path,
          confusion_png: str | Path | None = None) -> dict:
    """Score predictions against an answers CSV (``ImageID,ans``): macro F1, accuracy, per-head F1.

    Rows predicted ``SKIPPED`` are left out and counted in ``skipped``. Writes the confusion
    matrix PNG when ``confusion_png`` is given.
    """
    truth = read_answers(labels_csv)
    absent = [i for i in image_ids if i not in truth]
    if absent:
        raise ValueError(f"{labels_csv} has no answer for {len(absent)} ImageID(s) (e.g. {absent[:3]})")
    ans = np.asarray(ans, dtype=np.int64)
    keep = ans != SKIPPED
    y_true = np.asarray([truth[i] for i in image_ids], dtype=np.int64)[keep]
    y_pred = ans[keep]
    if y_true.size and not ((0 <= y_true) & (y_true < labels.NUM_CLASSES)).all():
        raise ValueError(f"{labels_csv}: answers must be class indices 0..{labels.NUM_CLASSES - 1}")
    result = {**metrics.report(y_true, y_pred), "n": int(keep.sum()), "skipped": int((~keep).sum())}
    if confusion_png is not None:
        plot_confusion(metrics.confusion(y_true, y_pred), confusion_png,
                       title=f"macro F1 {result['f1']:.3f}, accuracy {result['acc']:.3f}, n={result['n']}")
    return result


def plot_confusion(cm: np.ndarray, path: str | Path, title: str = "confusion (rows: true)") -> Path:
    """Write the class × class confusion matrix (rows: true, columns: predicted) as a PNG, atomically."""
    import matplotlib  # on first use: pyplot costs ~2 s of start-up on a loaded 2-core machine

    matplotlib.use("Agg")  # headless: servers and training machines have no display
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    if cm.shape != (labels.NUM_CLASSES, labels.NUM_CLASSES):
        raise ValueError(f"confusion matrix must be {labels.NUM_CLASSES}x{labels.NUM_CLASSES}, got {cm.shape}")
    names = [f"{r.index} {r.name}" for r in labels.label_table()]
    fig, ax = plt.subplots(figsize=(10, 9))
    ax.imshow(cm, cmap="Blues")
    for (t, p), v in np.ndenumerate(cm):
        if v:
            ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
