"""K-fold cross-validation: ``--folds K`` trains K person-level stratified folds into
``RUN_DIR/fold{k}/`` and writes ``RUN_DIR/oof_predictions.csv`` (every image predicted by the fold
that held it out, at that fold's best epoch) and ``RUN_DIR/summary.json`` (per-fold best val macro
F1, mean ± std, and the macro F1 of the pooled out-of-fold predictions).
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from maskdata import metrics, splits
from maskdata.io import atomic_write_text
from maskdata.layout import Sample
from training.config import RunConfig
from training.loop.trainer import Env, fit

log = logging.getLogger(__name__)


def run_kfold(cfg: RunConfig, samples: list[Sample], out: Path, env: Env, resume_dir: Path | None = None,
              on_epoch_end=None) -> dict:
    """``on_epoch_end(fold, epoch, row)``: ``training.loop.trainer.fit``'s per-epoch hook, told the fold."""
    k = cfg.train.folds
    folds = splits.kfold_indices(samples, k, seed=cfg.train.seed)
    results = []
    for f, (train_idx, val_idx) in enumerate(folds):
        fold_dir = out / f"fold{f}"
        resume = None
        if resume_dir is not None and (resume_dir / f"fold{f}" / "last.pt").is_file():
            resume = resume_dir / f"fold{f}" / "last.pt"
        log.info("fold %d/%d: %d train, %d val images", f + 1, k, len(train_idx), len(val_idx))
        hook = None if on_epoch_end is None else (lambda epoch, row, f=f: on_epoch_end(f, epoch, row))
        results.append(fit(cfg, samples, train_idx, val_idx, fold_dir, env, resume=resume, on_epoch_end=hook))
        if cfg.train.stop_after and results[-1].epochs_run:
            log.info("stopping after fold %d as asked (--stop-after); resume with --resume %s", f, out)
            return {}
    if not env.ranks.main:
        return {}
    return write_summary(out, k, [r.best for r in results])


def write_summary(out: Path, k: int, bests: list[dict]) -> dict:
    rows, y_true, y_pred = [], [], []
    for f in range(k):
        with open(out / f"fold{f}" / "val_predictions.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append({"fold": f, **r})
                y_true.append(int(r["true"]))
                y_pred.append(int(r["pred"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "oof_predictions.csv", buf.getvalue())
    f1s = np.array([b["f1"] for b in bests])
    summary = {
        "folds": k, "fold_f1": [round(float(v), 6) for v in f1s],
        "f1_mean": float(f1s.mean()), "f1_std": float(f1s.std(ddof=1)) if k > 1 else 0.0,
        "oof": metrics.report(y_true, y_pred), "fold_best": bests,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("k-fold val macro F1 %.4f ± %.4f (sample std over %d folds); pooled out-of-fold F1 %.4f",
             summary["f1_mean"], summary["f1_std"], k, summary["oof"]["f1"])
    return summary
