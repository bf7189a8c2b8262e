"""One training run on one person-level split: build everything, loop epochs, write the run folder.

    result = fit(cfg, samples, train_idx, val_idx, out_dir, env)

RUN folder: ``config.json``/``config.yaml``, ``split.json`` (train/val people), ``metrics.csv``,
``last.pt`` (every epoch: that epoch's metrics, the best ones under ``best``, exact resume state),
``best.pt`` (highest val macro F1), ``val_predictions.csv`` and ``confusion.png`` of the best epoch,
``curves.png``. Only rank 0 writes.

Resume: the split recorded in last.pt (or split.json beside it) is used, never a re-derived one; a run
that finished or early-stopped trains no further epoch; ``--epochs N`` extends per
``training.optim.extend_restarts``. Randomness is a function of (seed, epoch) (model init from the
seed, dropout re-seeded each epoch, data order and augmentation from the sampler), so no global RNG
state needs saving.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskdata import labels, splits
from maskdata.io import atomic_write_text
from maskdata.layout import Sample, fingerprint
from maskdata.preprocess import Preprocess
from maskdata.report import class_report, report_csv_text
from training import data, dist, precision
from training.loop import calibration, engine, plots
from training.distillation import distill
from training.loop.tensorboard import RunLogger
from training.augment import BatchMix
from training.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint, unwrap
from training.config import RunConfig, config_yaml
from training.losses import balanced_class_weights, create_criterion
from training.models import create_model
from training.distillation.pseudo import build_train_targets
from training.optim import create_optimizer, create_scheduler, extend_restarts, updates_per_epoch
from training.soft_targets import SoftAware

log = logging.getLogger(__name__)

CSV_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_acc", "val_f1", "val_f1_mask", "val_f1_gender",
               "val_f1_age", "train_img_s", "seconds", "val_roc_auc", "ece_before", "ece_after")


@dataclass(frozen=True)
class Env:
    """Where the run executes (not part of the recorded config)."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    ranks: dist.Dist = field(default_factory=dist.Dist)   # this process's rank in the world (DDP)


@dataclass
class FitResult:
    best: dict
    history: list[dict]
    epochs_run: int


def _csv_text(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _predictions_text(samples: list[Sample], y_true: np.ndarray, probs: np.ndarray,
                      log_probs: np.ndarray | None = None) -> str:
    """path, person, true, pred, prob_0..17 (6 decimals) and, after them, logp_0..17 (log_softmax of the
    logits, 9 significant digits: what a distillation teacher at temperature T needs)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    n = labels.NUM_CLASSES
    logp_cols = [f"logp_{c}" for c in range(n)] if log_probs is not None else []
    w.writerow(["path", "person", "true", "pred", *[f"prob_{c}" for c in range(n)], *logp_cols])
    for i, (s, t, p) in enumerate(zip(samples, y_true, probs)):
        logp = [f"{v:.9g}" for v in log_probs[i]] if log_probs is not None else []
        w.writerow([s.path, s.person, int(t), int(p.argmax()), *[f"{v:.6f}" for v in p], *logp])
    return buf.getvalue()


class Loaders:
    """Datasets, samplers and loaders for one split."""

    def __init__(self, cfg: RunConfig, samples: list[Sample], train_idx: list[int], val_idx: list[int], env: Env):
        data_cfg, ranks = cfg.data, env.ranks
        self.preprocess = Preprocess(data_cfg.height, data_cfg.width, data_cfg.resize_filter, crop=data_cfg.crop,
                                     aspect=data_cfg.aspect,
                                     **{k: tuple(v) for k, v in (("mean", data_cfg.mean), ("std", data_cfg.std)) if v})
        data.check_crop_fits(self.preprocess, [samples[i].path for i in train_idx[:1] + val_idx[:1]])
        targets = [s.label(data_cfg.age_bins) for s in samples]
        train_idx = data.oversample(train_idx, targets, data_cfg.oversample)
        self.train_samples = [samples[i] for i in train_idx]
        self.train_targets = [targets[i] for i in train_idx]
        self.val_samples = [samples[i] for i in val_idx]
        self.y_val = np.array([s.label(labels.DEFAULT_AGE_BINS) for s in self.val_samples], dtype=np.int64)
        show = cfg.train.progress and ranks.main
        # --teacher / --pseudo-label: packed soft targets, pseudo-labelled images after the split (train only)
        self.soft = build_train_targets(cfg, samples, self.train_samples, self.train_targets, self.preprocess)
        ds_samples, ds_targets = ((self.soft.samples, self.soft.packed) if self.soft else
                                  (self.train_samples, self.train_targets))
        self.train_ds = data.MaskDataset(ds_samples, ds_targets, self.preprocess,
                                         data.create_augment(data_cfg.augment), data_cfg.cache, progress=show)
        self.val_ds = data.MaskDataset(self.val_samples, list(self.y_val), self.preprocess, None, data_cfg.cache,
                                       progress=show)
        weights = (data.inverse_frequency_weights(self.soft.hard if self.soft else self.train_targets)
                   if data_cfg.sampler == "weighted" else None)
        self.train_sampler = data.EpochSampler(len(self.train_ds), seed=cfg.train.seed, weights=weights,
                                               rank=ranks.rank, world=ranks.world)
        val_sampler = data.EpochSampler(len(self.val_ds), shuffle=False, rank=ranks.rank, world=ranks.world, pad=False,
                                        augment=False)
        pin = env.device.type == "cuda"
        self.train = data.make_loader(self.train_ds, self.train_sampler, data_cfg.batch_size, data_cfg.loader_workers, pin)
        self.val = data.make_loader(self.val_ds, val_sampler, data_cfg.batch_size, data_cfg.loader_workers, pin)


METRIC_KEYS = ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")


@dataclass
class Parts:
    """What one run trains with, built once per fit."""
    model: torch.nn.Module
    train_model: torch.nn.Module          # the model, or its DDP wrapper
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object                      # training.optim.Schedule
    scaler: torch.amp.GradScaler
    mix: BatchMix                         # MixUp/CutMix (off unless --mixup/--cutmix)


@dataclass
class Progress:
    """Where a run stands: what last.pt records and resume restores."""
    start: int = 0                        # epochs finished
    best: dict = field(default_factory=lambda: {"f1": -1.0})
    history: list = field(default_factory=list)
    bad: int = 0                          # epochs since the best one
    restarts: list = field(default_factory=list)   # cosine restarts from extending the run


def _read_resume(resume: str | Path, fp: str) -> dict:
    ck = load_checkpoint(resume)
    if "optimizer" not in ck:
        raise ValueError(f"{resume}: not a resumable checkpoint (use last.pt, not best.pt)")
    if ck["data_fingerprint"] != fp:
        raise ValueError(f"{resume}: was trained on different data (fingerprint {ck['data_fingerprint']} != {fp})")
    return ck


def _recorded_split(ck: dict, resume: str | Path, samples: list[Sample]) -> tuple[list[int], list[int]]:
    """The split the run was trained on (last.pt's ``split``, else split.json beside it), never a new one."""
    split = ck.get("split")
    if split is None:
        path = Path(resume).parent / "split.json"
        if not path.is_file():
            raise ValueError(f"{resume}: records no train/val split and {path} is missing; resuming with a "
                             "re-derived split could move training people into validation")
        split = json.loads(path.read_text(encoding="utf-8"))
    return splits.indices_for_people(samples, split["val_people"])


def _build(cfg: RunConfig, loaders: Loaders, env: Env, upe: int, restarts: list) -> Parts:
    model = create_model(cfg.model.arch, cfg.model.head, loaders.preprocess, cfg.model.pretrained, cfg.model.weights)
    model = model.to(env.device)
    if env.device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = model
    if env.ranks.enabled:
        ids = [env.device.index] if env.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_cfg = cfg.loss
    weights = balanced_class_weights(loaders.train_targets) if loss_cfg.class_weights == "balanced" else None
    criterion = create_criterion(loss_cfg.criterion, gamma=loss_cfg.focal_gamma, smoothing=loss_cfg.smoothing,
                                 class_weights=weights).to(env.device)
    mix = BatchMix(cfg.data.mixup, cfg.data.cutmix, cfg.data.mix_prob, seed=cfg.train.seed * 31 + env.ranks.rank)
    if loaders.soft is not None:   # distillation / pseudo-labels: packed targets (training.distillation.distill)
        criterion, mix = distill.wrap(criterion, mix, cfg.loss.distill_weight if cfg.loss.teacher else 0.0,
                                      cfg.loss.distill_temperature)
    elif mix.enabled:   # MixUp/CutMix: soft targets, a function of (seed, rank, epoch, step)
        criterion = SoftAware(criterion)
    optimizer = create_optimizer(model, cfg.optim)
    schedule = create_scheduler(optimizer, cfg.optim, upe, cfg.train.epochs, restarts)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.amp_dtype == torch.float16)
    return Parts(model, train_model, criterion, optimizer, schedule, scaler, mix)


def _restore(ck: dict, cfg: RunConfig, upe: int) -> Progress:
    """The progress recorded in ``ck``, with the schedule's restarts for a changed ``--epochs``."""
    old_epochs = int(ck["config"]["train"]["epochs"])
    done_updates = int(ck["scheduler"].get("last_epoch", 0))
    restarts = extend_restarts(cfg.optim, upe, old_epochs, cfg.train.epochs, done_updates,
                               ck.get("schedule_restarts", []))
    return Progress(start=ck["epoch"], best=dict(ck["best"]), history=list(ck["history"]), bad=ck["bad_epochs"],
                    restarts=restarts)


def _load_state(parts: Parts, ck: dict) -> None:
    parts.model.load_state_dict(ck["state_dict"])
    parts.optimizer.load_state_dict(ck["optimizer"])
    parts.schedule.load_state_dict(ck["scheduler"])
    parts.scaler.load_state_dict(ck["scaler"])


def _nothing_left(progress: Progress, train_cfg) -> str:
    """Why a resumed run has no epoch left to train ('' if it has)."""
    if progress.start >= train_cfg.epochs:
        return f"all {train_cfg.epochs} epochs are done (pass --epochs N > {progress.start} to extend)"
    if train_cfg.early_stop and progress.bad >= train_cfg.early_stop:
        return (f"it early-stopped after epoch {progress.start} ({progress.bad} epoch(s) without val F1 gain, "
                f"--early-stop {train_cfg.early_stop})")
    return ""


def nothing_left(last: str | Path) -> str:
    """Why the run whose ``last.pt`` this is has no epoch left to train ('' if it has one): what
    ``--resume`` would say before training nothing."""
    ck = load_checkpoint(last)
    progress = Progress(start=int(ck["epoch"]), bad=int(ck.get("bad_epochs", 0)))
    return _nothing_left(progress, RunConfig.from_dict(ck["config"]).train)


def _train_epoch(epoch: int, parts: Parts, loaders: Loaders, cfg: RunConfig, env: Env) -> tuple[dict, dict, np.ndarray]:
    train_cfg = cfg.train
    # model-side randomness (dropout) is a function of (seed, epoch), so resume replays it exactly
    torch.manual_seed(train_cfg.seed * 1009 + epoch)
    loaders.train_sampler.set_epoch(epoch)
    lr = parts.optimizer.param_groups[0]["lr"]
    tr = engine.train_one_epoch(parts.train_model, loaders.train, parts.criterion, parts.optimizer, parts.schedule,
                                parts.scaler, device=env.device, accum_steps=train_cfg.accum_steps,
                                clip_grad=train_cfg.clip_grad, amp_dtype=env.amp_dtype, d=env.ranks,
                                desc=f"epoch {epoch + 1}/{train_cfg.epochs}", progress=train_cfg.progress,
                                batch_transform=((lambda x, y, i: parts.mix(x, y, epoch, i)) if parts.mix.enabled
                                                 else None))
    val, probs = engine.evaluate(parts.model, loaders.val, loaders.y_val, device=env.device, amp_dtype=env.amp_dtype,
                                 d=env.ranks, progress=train_cfg.progress)
    parts.schedule.step_epoch(val["f1"])
    val["report"] = class_report(loaders.y_val, probs)   # val_report.csv reuses it on a best epoch
    val["roc_auc"] = val["report"][1]["roc_auc_macro"]
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "val_loss": val["loss"], "val_acc": val["acc"],
           "val_f1": val["f1"], "val_f1_mask": val["f1_mask"], "val_f1_gender": val["f1_gender"],
           "val_f1_age": val["f1_age"], "train_img_s": tr["img_s"], "seconds": tr["seconds"],
           "val_roc_auc": val["roc_auc"]}
    return row, val, probs


def _write_epoch(out_dir: Path, parts: Parts, loaders: Loaders, progress: Progress, val: dict, probs: np.ndarray,
                 improved: bool, common: dict, tb: RunLogger) -> None:
    """best.pt (if improved) with the best metrics; last.pt with this epoch's metrics and the best ones."""
    epoch = progress.start
    if improved:
        best_metrics = {k: progress.best[k] for k in METRIC_KEYS}
        save_checkpoint(out_dir / "best.pt", build_checkpoint(parts.model, metrics=best_metrics, epoch=epoch,
                                                              **common))
        atomic_write_text(out_dir / "val_predictions.csv",
                          _predictions_text(loaders.val_samples, loaders.y_val, probs, val.get("log_probs")))
        report = report_csv_text(loaders.y_val, probs, val["report"])
        atomic_write_text(out_dir / "val_report.csv", report)
        tb.report(report, epoch)
        plots.save_confusion(val["confusion"], out_dir / "confusion.png",
                             f"best epoch {epoch}: val macro F1 {val['f1']:.4f}")
    last = build_checkpoint(parts.model, metrics={k: float(val[k]) for k in METRIC_KEYS}, epoch=epoch,
                            optimizer=parts.optimizer.state_dict(), scheduler=parts.schedule.state_dict(),
                            scaler=parts.scaler.state_dict(), best=progress.best, history=progress.history,
                            bad_epochs=progress.bad, schedule_restarts=progress.restarts, **common)
    save_checkpoint(out_dir / "last.pt", last)
    atomic_write_text(out_dir / "metrics.csv", _csv_text(progress.history))
    plots.save_curves(progress.history, out_dir / "curves.png")


def _distilled(loaders: Loaders) -> dict:
    """``{"distill": {teacher, W, T, pseudo-label counts}}`` for config.json and the checkpoints, or {}."""
    return {"distill": loaders.soft.record} if loaders.soft else {}


def _write_run_record(out_dir: Path, cfg: RunConfig, split: dict, env: Env, extra: dict | None = None) -> None:
    atomic_write_text(out_dir / "config.json", json.dumps({**cfg.to_dict(), **(extra or {})}, indent=2) + "\n")
    atomic_write_text(out_dir / "config.yaml", config_yaml(cfg) + precision.record_line(cfg.train.amp, env.amp_dtype))
    atomic_write_text(out_dir / "split.json", json.dumps(split, indent=1) + "\n")


def _note_epoch(epoch: int, row: dict, val: dict, progress: Progress, epochs: int) -> bool:
    """Update the best metrics and the epochs-without-improvement count, log the epoch's line; True
    when validation macro F1 improved."""
    improved = val["f1"] > progress.best["f1"]
    if improved:
        progress.best = {**{k: float(val[k]) for k in METRIC_KEYS}, "epoch": epoch + 1}
    progress.bad = 0 if improved else progress.bad + 1
    log.info("epoch %d/%d train/loss %.4f val/loss %.4f val/acc %.4f val/f1 %.4f (mask %.3f gender %.3f "
             "age %.3f) %.0f img/s%s", epoch + 1, epochs, row["train_loss"], val["loss"], val["acc"],
             val["f1"], val["f1_mask"], val["f1_gender"], val["f1_age"], row["train_img_s"],
             " *" if improved else "")
    return improved


def _call_epoch_hook(on_epoch_end, epoch: int, row: dict, tb, cfg: RunConfig, progress: Progress) -> None:
    """``on_epoch_end(epoch + 1, row)``; if it raises (a search pruning the run), TensorBoard is closed first."""
    try:
        on_epoch_end(epoch + 1, dict(row))
    except BaseException:
        tb.close(cfg.to_dict(), progress.best)
        raise


def fit(cfg: RunConfig, samples: list[Sample], train_idx: list[int], val_idx: list[int], out_dir: Path,
        env: Env, resume: str | Path | None = None, on_epoch_end=None) -> FitResult:
    """``on_epoch_end(epoch, row)``: called after each finished epoch (files written, ``row`` = that
    epoch's metrics.csv row); an exception it raises (a search pruning the run) stops the run at that
    epoch boundary, with TensorBoard closed, and propagates."""
    train_cfg, ranks = cfg.train, env.ranks
    fp = fingerprint(samples, cfg.data.relabel_digest)
    ck = _read_resume(resume, fp) if resume is not None else None
    if ck is not None:
        train_idx, val_idx = _recorded_split(ck, resume, samples)
    assert not {samples[i].person for i in train_idx} & {samples[i].person for i in val_idx}, "person leak"
    if not train_idx or not val_idx:
        raise ValueError(f"split has {len(train_idx)} train and {len(val_idx)} val images; need both")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    loaders = Loaders(cfg, samples, train_idx, val_idx, env)
    upe = updates_per_epoch(len(loaders.train), train_cfg.accum_steps)
    progress = _restore(ck, cfg, upe) if ck is not None else Progress()
    parts = _build(cfg, loaders, env, upe, progress.restarts)
    if ck is not None:
        _load_state(parts, ck)
        log.info("resumed from %s at epoch %d (best val F1 %.4f)", resume, progress.start, progress.best["f1"])
        reason = _nothing_left(progress, train_cfg)
        if reason:
            log.info("nothing to train in %s: %s", out_dir, reason)
            return FitResult(best=progress.best, history=progress.history, epochs_run=0)
    split = {"train_people": sorted({s.person for s in loaders.train_samples}),
             "val_people": sorted({s.person for s in loaders.val_samples})}
    common = dict(age_bins=cfg.data.age_bins, config=cfg.to_dict(), data_fingerprint=fp, data_dir=cfg.data.data_dir,
                  val_images=[s.path for s in loaders.val_samples[:64]], split=split, **_distilled(loaders),
                  precision=precision.name_of(env.amp_dtype))
    if ranks.main:
        _write_run_record(out_dir, cfg, split, env, _distilled(loaders))
    tb = RunLogger(out_dir, enabled=train_cfg.tensorboard and ranks.main)
    epochs_run = 0
    for epoch in range(progress.start, train_cfg.epochs):
        if train_cfg.stop_after and epochs_run >= train_cfg.stop_after:
            log.info("stopping after %d epoch(s) as asked (--stop-after); resume with --resume %s",
                     epochs_run, out_dir / "last.pt")
            break
        row, val, probs = _train_epoch(epoch, parts, loaders, cfg, env)
        progress.history.append(row)
        progress.start, epochs_run = epoch + 1, epochs_run + 1
        improved = _note_epoch(epoch, row, val, progress, train_cfg.epochs)
        tb.epoch(row, val, improved)
        if ranks.main:
            _write_epoch(out_dir, parts, loaders, progress, val, probs, improved, common, tb)
        dist.barrier(ranks)
        if on_epoch_end is not None:
            _call_epoch_hook(on_epoch_end, epoch, row, tb, cfg, progress)
        if train_cfg.early_stop and progress.bad >= train_cfg.early_stop:
            log.info("early stop: val F1 has not improved for %d epoch(s)", progress.bad)
            break
    stopped = train_cfg.early_stop and progress.bad >= train_cfg.early_stop
    if epochs_run and (progress.start >= train_cfg.epochs or stopped):
        # the temperature is fitted once, on the best epoch (not after a --stop-after slice)
        _calibrate(parts.model, loaders, out_dir, env, progress, tb)
    tb.close(cfg.to_dict(), progress.best)
    return FitResult(best=progress.best, history=progress.history, epochs_run=epochs_run)


def _calibrate(model, loaders: Loaders, out_dir: Path, env: Env, progress: Progress, tb: RunLogger) -> None:
    """Temperature on the best epoch's validation logits; ECE before/after into best, metrics.csv, TensorBoard."""
    cal = calibration.calibrate_best(model, loaders.val, loaders.y_val, out_dir, env)
    if not cal:
        return
    ece = {"ece_before": cal["ece_before"], "ece_after": cal["ece_after"]}
    best = progress.best
    best.update(ece, temperature=cal["temperature"])
    next(r for r in progress.history if r["epoch"] == best["epoch"]).update(ece)
    atomic_write_text(out_dir / "metrics.csv", _csv_text(progress.history))
    tb.scalars({f"calibration/{k}": v for k, v in (ece | {"temperature": cal["temperature"]}).items()}, best["epoch"])


__all__ = ["Env", "FitResult", "fit", "nothing_left", "unwrap"]
