"""The training set of a distilled and/or pseudo-labelled run: its images and packed targets.

    targets = build_train_targets(cfg, all_samples, train_samples, train_targets, preprocess)
    # None when neither --teacher nor --pseudo-label is given (the run trains exactly as before)

Pseudo-labels (``--pseudo-label PROBS --pseudo-threshold P``): the rows of PROBS (``mask-submit
--probs`` on the eval set, or any teacher file) whose top teacher probability is at least P, for
images *outside the training layout* (an image of the layout, trained on or held out, is never
taken), join the training images of the run — never its validation set: they are appended to the
training dataset only, after the person-level split (and in k-fold, in every fold, after that
fold's split). They train on the teacher's distribution as their task target (and, with
``--teacher``, on the teacher's tempered distribution in the KL term).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskdata import labels
from maskdata.layout import Sample
from maskdata.preprocess import Preprocess
from training.distillation import distill, teacher

log = logging.getLogger(__name__)

_AGE_OF_GROUP = (20, 45, 65)   # a representative age per age group, for pseudo-labelled Sample records


@dataclass
class TrainTargets:
    samples: list[Sample]                 # the run's training images, then the pseudo-labelled ones
    packed: list[torch.Tensor]            # one (2 * 18,) float target per image (training.distillation.distill.pack)
    hard: list[int]                       # class per image (argmax for pseudo-labelled ones): samplers
    record: dict = field(default_factory=dict)   # what config.json, the checkpoints and the export show


def _teacher_q(cfg, train_samples: list[Sample], train_targets: list[int], preprocess: Preprocess,
              record: dict) -> torch.Tensor | None:
    path = teacher.teacher_file(cfg)
    if path is None:
        return None
    table = teacher.read_teacher(path)
    T = cfg.loss.distill_temperature
    if not table.exact:
        if T != 1:
            raise ValueError(f"teacher {path} carries probabilities only (no logp_* columns), which rounding "
                             f"makes unusable at --distill-temperature {T:g}; use T = 1 or a file with "
                             "log-probabilities (mask-train and mask-submit --probs write them)")
        log.info("teacher %s has probabilities only (no log-probabilities): used at T = 1", path)
    teacher.check_preprocess(table, preprocess)
    logp = torch.from_numpy(table.rows_for([teacher.image_key(s.path) for s in train_samples]))
    q = distill.tempered(logp, T)
    agree = float((q.argmax(1) == torch.as_tensor(train_targets)).float().mean())
    log.info("teacher %s: %d training images, agrees with their labels on %.1f%%; distilling with W=%g, T=%g",
             cfg.loss.teacher, len(train_samples), 100 * agree, cfg.loss.distill_weight, T)
    record.update(teacher=cfg.loss.teacher, teacher_file=str(path), teacher_log_probs=table.exact,
                  distill_weight=cfg.loss.distill_weight, distill_temperature=T, teacher_label_agreement=agree)
    return q


def pseudo_images_dir(cfg) -> Path:
    if cfg.data.pseudo_images:
        return Path(cfg.data.pseudo_images)
    return Path(cfg.data.data_dir).parent / "eval" / "images"


def select_pseudo(cfg, all_samples: list[Sample], preprocess: Preprocess) -> tuple[list[Sample], torch.Tensor, dict]:
    """(pseudo-labelled samples, their (N, 18) teacher log-probabilities, the record) for --pseudo-label."""
    table = teacher.read_teacher(cfg.data.pseudo_label)
    teacher.check_preprocess(table, preprocess)
    folder = pseudo_images_dir(cfg)
    if not folder.is_dir():
        raise FileNotFoundError(f"--pseudo-label: images folder {folder} not found; pass --pseudo-images DIR")
    layout = {str(Path(s.path).resolve()) for s in all_samples}
    conf = np.exp(table.logp).max(1)
    taken, rows, in_layout, missing = [], [], 0, 0
    for i, image_id in enumerate(table.keys):
        path = (folder / image_id).resolve()
        if str(path) in layout:
            in_layout += 1
        elif not path.is_file():
            missing += 1
        elif conf[i] >= cfg.data.pseudo_threshold:
            m, g, a = labels.decode(int(table.logp[i].argmax()))
            taken.append(Sample(str(path), f"pseudo:{image_id}", "", g, "", _AGE_OF_GROUP[a], m))
            rows.append(i)
    if missing:
        raise ValueError(f"--pseudo-label {table.source}: {missing} image(s) not found under {folder} "
                         "(pass --pseudo-images DIR, the folder its ImageIDs are relative to)")
    record = {"pseudo_label": str(table.source), "pseudo_threshold": cfg.data.pseudo_threshold,
              "pseudo_candidates": len(table.keys) - in_layout, "pseudo_taken": len(taken)}
    log.info("pseudo-labels: %d of %d images outside the training layout have teacher confidence >= %g%s",
             len(taken), record["pseudo_candidates"], cfg.data.pseudo_threshold,
             f" ({in_layout} rows of training-layout images ignored)" if in_layout else "")
    return taken, torch.from_numpy(table.logp[rows]).reshape(-1, labels.NUM_CLASSES), record


def build_train_targets(cfg, all_samples: list[Sample], train_samples: list[Sample], train_targets: list[int],
                        preprocess: Preprocess) -> TrainTargets | None:
    if not cfg.loss.teacher and not cfg.data.pseudo_label:
        return None
    record: dict = {}
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(train_targets, dtype=torch.long), labels.NUM_CLASSES)
    q = _teacher_q(cfg, train_samples, train_targets, preprocess, record)
    packed = distill.pack(one_hot, one_hot.float() if q is None else q)
    samples, hard = list(train_samples), list(train_targets)
    if cfg.data.pseudo_label:
        extra, logp, rec = select_pseudo(cfg, all_samples, preprocess)
        record.update(rec)
        task = distill.tempered(logp, 1.0)
        extra_q = distill.tempered(logp, cfg.loss.distill_temperature) if q is not None else task
        packed = torch.cat([packed, distill.pack(task, extra_q)])
        samples += extra
        hard += task.argmax(1).tolist()
    # one small tensor per image (not views of one big storage that every DataLoader worker would share)
    return TrainTargets(samples, [row.clone() for row in packed], hard, record)
