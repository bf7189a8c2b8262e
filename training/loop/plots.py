"""PNG figures for a run folder: loss/F1 curves per epoch and the best epoch's confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskdata.io import atomic_path
from maskdata.scoring import plot_confusion


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
    """The same figure as ``mask-submit --labels`` draws: :func:`maskdata.scoring.plot_confusion`."""
    plot_confusion(cm, path, title)
