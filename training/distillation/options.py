"""``mask-train``'s distillation and pseudo-label options: their checks, and the ONNX teacher step.

Kept beside ``training/cli.py`` so the CLI gains two calls, not the logic: ``check_distill_args``
(one-line errors before any data is read) and ``prepare_teacher`` (an ``.onnx`` teacher runs once, on
rank 0, into RUN_DIR/teacher_logits.csv; the other DDP ranks wait for it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from training import dist


def check_distill_args(a: argparse.Namespace) -> None:
    if a.teacher:
        if not Path(a.teacher).is_file():
            raise FileNotFoundError(f"--teacher {a.teacher}: file not found (an oof/val prediction CSV, a teacher "
                                    "CSV, or an exported .onnx model)")
        if not 0 <= a.distill_weight <= 1:
            raise ValueError(f"--distill-weight must be in [0, 1], got {a.distill_weight}")
        if not a.distill_temperature > 0:
            raise ValueError(f"--distill-temperature must be > 0, got {a.distill_temperature}")
    if a.pseudo_label:
        if not Path(a.pseudo_label).is_file():
            raise FileNotFoundError(f"--pseudo-label {a.pseudo_label}: file not found (mask-submit --probs output)")
        if not 0 <= a.pseudo_threshold <= 1:
            raise ValueError(f"--pseudo-threshold must be in [0, 1], got {a.pseudo_threshold}")
    elif a.pseudo_images:
        raise ValueError("--pseudo-images needs --pseudo-label PROBS")
    if a.pseudo_label:   # pseudo-labelled images train on soft targets
        from training.soft_targets import check_soft_criterion
        try:
            check_soft_criterion(a.criterion)
        except ValueError as e:
            raise ValueError(f"--pseudo-label: {e}".replace("--mixup/--cutmix need", "needs")) from None


def prepare_teacher(cfg, samples, ranks: dist.Dist) -> None:
    from training.distillation.teacher import prepare_onnx_teacher

    if ranks.main:
        prepare_onnx_teacher(cfg, samples, progress=cfg.train.progress)
    dist.barrier(ranks)
