"""One training run on one person-level split: build everything, loop epochs, write the run folder.

    result = fit(cfg, samples, train_idx, val_idx, out_dir, env)

RUN folder: ``config.json``, ``split.json`` (train/val people), ``metrics.csv``, ``last.pt`` (every
epoch, exact resume state), ``best.pt`` (highest val macro F1), ``val_predictions.csv`` and
``confusion.png`` of the best epoch, ``curves.png``. Only rank 0 writes.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskdata import labels
from maskdata.io import atomic_write_text
from maskdata.layout import Sample, fingerprint
from maskdata.preprocess import Preprocess
from training import data, dist, engine, plots
from training.augment import BatchMix
from training.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint, unwrap
from training.config import RunConfig
from training.losses import balanced_class_weights, create_criterion
from training.models import create_model
from training.optim import create_optimizer, create_scheduler, updates_per_epoch
from training.soft_targets import SoftAware

log = logging.getLogger(__name__)

CSV_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_acc", "val_f1", "val_f1_mask", "val_f1_gender",
               "val_f1_age", "train_img_s", "seconds")


@dataclass(frozen=True)
class Env:
    """Where the run executes (not part of the recorded config)."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    d: dist.Dist = field(default_factory=dist.Dist)


@dataclass
class FitResult:
    best: dict
    history: list[dict]
    epochs_run: int


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [int(v) for v in np_state[1]], "numpy_pos": int(np_state[2]),
            "python": [int(v) for v in random.getstate()[1]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def _csv_text(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _predictions_text(samples: list[Sample], y_true: np.ndarray, probs: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "person", "true", "pred", *[f"prob_{c}" for c in range(labels.NUM_CLASSES)]])
    for s, t, p in zip(samples, y_true, probs):
        w.writerow([s.path, s.person, int(t), int(p.argmax()), *[f"{v:.6f}" for v in p]])
    return buf.getvalue()


class Loaders:
    """Datasets, samplers and loaders for one split."""

    def __init__(self, cfg: RunConfig, samples: list[Sample], train_idx: list[int], val_idx: list[int], env: Env):
        dc, d = cfg.data, env.d
        self.preprocess = Preprocess(dc.height, dc.width, dc.resize_filter, crop=dc.crop, aspect=dc.aspect)
        data.check_crop_fits(self.preprocess, [samples[i].path for i in train_idx[:1] + val_idx[:1]])
        targets = [s.label(dc.age_bins) for s in samples]
        train_idx = data.oversample(train_idx, targets, dc.oversample)
        self.train_samples = [samples[i] for i in train_idx]
        self.train_targets = [targets[i] for i in train_idx]
        self.val_samples = [samples[i] for i in val_idx]
        self.y_val = np.array([s.label(labels.DEFAULT_AGE_BINS) for s in self.val_samples], dtype=np.int64)
        show = cfg.train.progress and d.main
        self.train_ds = data.MaskDataset(self.train_samples, self.train_targets, self.preprocess,
                                         data.create_augment(dc.augment), dc.cache, progress=show)
        self.val_ds = data.MaskDataset(self.val_samples, list(self.y_val), self.preprocess, None, dc.cache,
                                       progress=show)
        weights = data.inverse_frequency_weights(self.train_targets) if dc.sampler == "weighted" else None
        self.train_sampler = data.EpochSampler(len(self.train_ds), seed=cfg.train.seed, weights=weights,
                                               rank=d.rank, world=d.world)
        val_sampler = data.EpochSampler(len(self.val_ds), shuffle=False, rank=d.rank, world=d.world, pad=False,
                                        augment=False)
        pin = env.device.type == "cuda"
        self.train = data.make_loader(self.train_ds, self.train_sampler, dc.batch_size, dc.workers, pin)
        self.val = data.make_loader(self.val_ds, val_sampler, dc.batch_size, dc.workers, pin)


def fit(cfg: RunConfig, samples: list[Sample], train_idx: list[int], val_idx: list[int], out_dir: Path,
        env: Env, resume: str | Path | None = None) -> FitResult:
    tc, d = cfg.train, env.d
    assert not {samples[i].person for i in train_idx} & {samples[i].person for i in val_idx}, "person leak"
    if not train_idx or not val_idx:
        raise ValueError(f"split has {len(train_idx)} train and {len(val_idx)} val images; need both")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    ld = Loaders(cfg, samples, train_idx, val_idx, env)
    model = create_model(cfg.model.arch, cfg.model.head, ld.preprocess, cfg.model.pretrained, cfg.model.weights)
    model = model.to(env.device)
    if env.device.type == "cuda" and tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = model
    if d.enabled:
        ids = [env.device.index] if env.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    lc = cfg.loss
    weights = balanced_class_weights(ld.train_targets) if lc.class_weights == "balanced" else None
    criterion = create_criterion(lc.criterion, gamma=lc.focal_gamma, smoothing=lc.smoothing,
                                 class_weights=weights).to(env.device)
    mix = BatchMix(cfg.data.mixup, cfg.data.cutmix, cfg.data.mix_prob, seed=tc.seed * 31 + d.rank)
    if mix.enabled:   # MixUp/CutMix: soft targets, a function of (seed, rank, epoch, step)
        criterion = SoftAware(criterion)
    optimizer = create_optimizer(model, cfg.optim)
    upe = updates_per_epoch(len(ld.train), tc.accum_steps)
    schedule = create_scheduler(optimizer, cfg.optim, upe, tc.epochs)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.amp_dtype == torch.float16)

    fp = fingerprint(samples)
    start, best, history, bad = 0, {"f1": -1.0}, [], 0
    if resume is not None:
        ck = load_checkpoint(resume)
        if "optimizer" not in ck:
            raise ValueError(f"{resume}: not a resumable checkpoint (use last.pt, not best.pt)")
        if ck["data_fingerprint"] != fp:
            raise ValueError(f"{resume}: was trained on different data (fingerprint {ck['data_fingerprint']} != {fp})")
        model.load_state_dict(ck["state_dict"])
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        start, best, history, bad = ck["epoch"], dict(ck["best"]), list(ck["history"]), ck["bad_epochs"]
        log.info("resumed from %s at epoch %d (best val F1 %.4f)", resume, start, best["f1"])
    if d.main:
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        split = {"train_people": sorted({s.person for s in ld.train_samples}),
                 "val_people": sorted({s.person for s in ld.val_samples})}
        atomic_write_text(out_dir / "split.json", json.dumps(split, indent=1) + "\n")
    common = dict(age_bins=cfg.data.age_bins, config=cfg.to_dict(), data_fingerprint=fp, data_dir=cfg.data.data_dir,
                  val_images=[s.path for s in ld.val_samples[:64]])

    epochs_run = 0
    for epoch in range(start, tc.epochs):
        if tc.stop_after and epochs_run >= tc.stop_after:
            log.info("stopping after %d epoch(s) as asked (--stop-after); resume with --resume %s",
                     epochs_run, out_dir / "last.pt")
            break
        # model-side randomness (dropout) is a function of (seed, epoch), so resume replays it exactly
        torch.manual_seed(tc.seed * 1009 + epoch)
        ld.train_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = engine.train_one_epoch(train_model, ld.train, criterion, optimizer, schedule, scaler,
                                    device=env.device, accum_steps=tc.accum_steps, clip_grad=tc.clip_grad,
                                    amp_dtype=env.amp_dtype, d=d, desc=f"epoch {epoch + 1}/{tc.epochs}",
                                    progress=tc.progress,
                                    batch_transform=(lambda x, y, i, e=epoch: mix(x, y, e, i)) if mix.enabled else None)
        val, probs = engine.evaluate(model, ld.val, ld.y_val, device=env.device, amp_dtype=env.amp_dtype, d=d,
                                     progress=tc.progress)
        schedule.step_epoch(val["f1"])
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "val_loss": val["loss"], "val_acc": val["acc"],
               "val_f1": val["f1"], "val_f1_mask": val["f1_mask"], "val_f1_gender": val["f1_gender"],
               "val_f1_age": val["f1_age"], "train_img_s": tr["img_s"], "seconds": tr["seconds"]}
        history.append(row)
        epochs_run += 1
        improved = val["f1"] > best["f1"]
        if improved:
            best = {k: float(val[k]) for k in ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")}
            best["epoch"] = epoch + 1
            bad = 0
        else:
            bad += 1
        log.info("epoch %d/%d train/loss %.4f val/loss %.4f val/acc %.4f val/f1 %.4f (mask %.3f gender %.3f "
                 "age %.3f) %.0f img/s%s", epoch + 1, tc.epochs, tr["loss"], val["loss"], val["acc"], val["f1"],
                 val["f1_mask"], val["f1_gender"], val["f1_age"], tr["img_s"], " *" if improved else "")
        if d.main:
            metrics_now = {k: best[k] for k in ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")}
            if improved:
                save_checkpoint(out_dir / "best.pt", build_checkpoint(model, metrics=metrics_now, epoch=epoch + 1,
                                                                      **common))
                atomic_write_text(out_dir / "val_predictions.csv", _predictions_text(ld.val_samples, ld.y_val, probs))
                plots.save_confusion(val["confusion"], out_dir / "confusion.png",
                                     f"best epoch {epoch + 1}: val macro F1 {val['f1']:.4f}")
            last = build_checkpoint(model, metrics=metrics_now, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                                    scheduler=schedule.state_dict(), scaler=scaler.state_dict(), rng=_rng_state(),
                                    best=best, history=history, bad_epochs=bad, **common)
            save_checkpoint(out_dir / "last.pt", last)
            atomic_write_text(out_dir / "metrics.csv", _csv_text(history))
            plots.save_curves(history, out_dir / "curves.png")
        dist.barrier(d)
        if tc.early_stop and bad >= tc.early_stop:
            log.info("early stop: val F1 has not improved for %d epoch(s)", bad)
            break
    return FitResult(best=best, history=history, epochs_run=epochs_run)


__all__ = ["Env", "FitResult", "fit", "unwrap"]
