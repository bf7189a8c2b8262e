"""PNG figures for a run folder: loss/F1 curves per epoch and the best epoch's confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskdata import labels
from maskdata.io import atomic_path


def _plt():
    # imported on first use: pyplot costs ~2 s of start-up on a loaded 2-core machine
    import matplotlib
    matplotlib.use("Agg")  # headless: training machines have no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)


def save_curves(history: list[dict], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (a, b) = _plt().subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    for key in ("val_f1", "val_f1_mask", "val_f1_gender", "val_f1_age"):
        b.plot(epochs, [r[key] for r in history], "o-", label=key)
    b.set(xlabel="epoch", ylabel="macro F1", title="validation F1", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    _save(fig, path)


def save_confusion(cm: np.ndarray, path: Path, title: str = "confusion (rows: true)") -> None:
    names = [r.name for r in labels.label_table()]
    fig, ax = _plt().subplots(figsize=(9, 8))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    _save(fig, path)
