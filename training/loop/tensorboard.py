"""TensorBoard event files for a run: what the trainer calls once per epoch and once at the end.

    tb = RunLogger(out_dir, enabled=cfg.train.tensorboard)   # writes RUN_DIR/events.out.tfevents.*
    tb.epoch(row, val)                                        # scalars (+ confusion image when improved)
    tb.close(cfg.to_dict(), best)                             # hparams: resolved config + best metric

Scalars: ``train/loss``, ``train/lr``, ``train/img_s``, ``val/loss``, ``val/f1``, ``val/acc``,
``val/f1_mask|gender|age``, ``val/roc_auc`` and, after training, ``calibration/ece_before|after``.
Each run folder (each k-fold ``fold{k}/``) is its own TensorBoard run, so
``tensorboard --logdir runs`` compares runs and folds side by side. Only rank 0 writes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCALARS = {"train/loss": "train_loss", "train/lr": "lr", "train/img_s": "train_img_s", "val/loss": "val_loss",
           "val/f1": "val_f1", "val/acc": "val_acc", "val/f1_mask": "val_f1_mask",
           "val/f1_gender": "val_f1_gender", "val/f1_age": "val_f1_age"}


def _flat_hparams(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


class RunLogger:
    """A no-op when disabled, so the trainer calls it unconditionally."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir))

    def epoch(self, row: dict, val: dict, improved: bool = False) -> None:
        if self.writer is None:
            return
        step = int(row["epoch"])
        for tag, key in SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), step)
        if "roc_auc" in val:
            self.writer.add_scalar("val/roc_auc", float(val["roc_auc"]), step)
        if improved and "confusion" in val:
            self.writer.add_image("val/confusion", confusion_image(np.asarray(val["confusion"])), step,
                                  dataformats="HWC")
        self.writer.flush()

    def report(self, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text("val/report", "    " + text.replace("\n", "\n    "), step)

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, float(v), step)

    def close(self, config: dict, best: dict) -> None:
        if self.writer is None:
            return
        metrics = {f"hparam/best_{k}": float(v) for k, v in best.items() if isinstance(v, (int, float))}
        self.writer.add_hparams(_flat_hparams(config), metrics, run_name=".")
        self.writer.close()
        self.writer = None


def confusion_image(cm: np.ndarray, cell: int = 12) -> np.ndarray:
    """(H, W, 3) uint8 heat map of the row-normalised confusion matrix (rows: true class)."""
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    import matplotlib

    rgb = (matplotlib.colormaps["Blues"](frac)[..., :3] * 255).astype(np.uint8)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
