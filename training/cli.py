"""``mask-train``: train a mask/gender/age classifier and write checkpoints, metrics and plots.

    mask-train --data-dir DATA/train --out runs/r1                       # the default CPU recipe
    mask-train --data-dir DATA/train --out runs/cv --folds 5             # k-fold into runs/cv/fold{k}/
    mask-train --resume runs/r1/last.pt                                  # continue exactly
    torchrun --nproc-per-node 2 -m training --data-dir DATA/train --out runs/ddp   # DDP

See docs/training.md for every option and the measured default recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import torch

from maskdata import labels
from maskdata.layout import read_train_dir
from maskdata.geometry import ASPECT_POLICIES, parse_crop
from maskdata.preprocess import FILTERS
from training import dist
from training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from training.augment import BatchMix, presets_help
from training.data import AUGMENTS
from training.losses import parse_criterion
from training.models import HEADS, MODELS, hub_weights_path
from training.optim import OPTIMIZERS, SCHEDULERS

log = logging.getLogger("training")

AMP_CHOICES = ("off", "auto", "bf16", "fp16")
SAMPLERS = ("random", "weighted")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mask-train", formatter_class=_Formatter,
                                description="Train a mask/gender/age classifier (18 classes); write checkpoints, "
                                            "metrics and plots to RUN_DIR.",
                                epilog="examples:\n" + __doc__.split("\n\n")[1])
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="DIR/train with train.csv and images/ (required unless --resume)")
    g.add_argument("--out", help="run folder to write (default with --resume: the checkpoint's folder)")
    g.add_argument("--resize", nargs=2, type=int, default=(128, 96), metavar=("H", "W"), help="input size")
    g.add_argument("--resize-filter", default="bilinear", help=f"one of {sorted(FILTERS)}")
    g.add_argument("--augment", default="light", help=f"augmentation preset (torchvision v2), one of {presets_help()}")
    g.add_argument("--crop", default=DataConfig.crop, metavar="center:H,W|box:L,T,R,B",
                   help="crop of the upright image before the aspect policy and resize: a centred HxW box in source "
                        "pixels, or a box in 0-1 relative or pixel coordinates; recorded in the model")
    g.add_argument("--aspect", default=DataConfig.aspect, help=f"aspect policy for inputs whose aspect differs from "
                   f"--resize: one of {list(ASPECT_POLICIES)}; recorded in the model (docs/data.md)")
    g.add_argument("--mixup", type=float, default=DataConfig.mixup, metavar="ALPHA", help="MixUp alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=DataConfig.cutmix, metavar="ALPHA", help="CutMix alpha (0 = off)")
    g.add_argument("--mix-prob", type=float, default=DataConfig.mix_prob, help="share of batches mixed")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of people held out (no --folds)")
    g.add_argument("--folds", type=int, default=0, help="K >= 2: person-level k-fold into RUN_DIR/fold{k}/")
    g.add_argument("--sampler", default="random", help=f"{list(SAMPLERS)}; weighted = inverse class frequency")
    g.add_argument("--oversample", type=int, default=1, help="repeat rarer-than-median classes N times")
    g.add_argument("--age-bins", default="30,60", help="training-target age thresholds (val always uses 30,60)")
    g.add_argument("--batch-size", type=int, default=32, help="per process")
    g.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                   help="DataLoader worker processes")
    g.add_argument("--no-cache", action="store_true", help="decode images every epoch instead of once")
    g.add_argument("--strict", action="store_true", help="fail on any data-layout problem instead of skipping")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="plain_cnn", help=f"one of {sorted(MODELS)}")
    g.add_argument("--head", default="multi", help=f"one of {list(HEADS)}")
    g.add_argument("--pretrained", action="store_true", help="ImageNet weights from the local torch hub cache")
    g.add_argument("--weights", help="backbone weights file (a state dict); implies pretrained")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=None, help="epochs (default 12; with --resume: as recorded)")
    g.add_argument("--optimizer", default="adamw", help=f"one of {sorted(OPTIMIZERS)}")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--momentum", type=float, default=0.9, help="sgd")
    g.add_argument("--nesterov", action="store_true", help="sgd")
    g.add_argument("--scheduler", default="cosine", help=f"one of {SCHEDULERS}")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup (per-update schedules)")
    g.add_argument("--step-size", type=int, default=10, help="step: epochs between decays")
    g.add_argument("--gamma", type=float, default=0.1, help="step/multistep/plateau decay factor")
    g.add_argument("--milestones", default="", help="multistep: epochs, e.g. 8,11")
    g.add_argument("--min-lr-ratio", type=float, default=0.01, help="cosine floor as a fraction of --lr")
    g.add_argument("--patience", type=int, default=2, help="plateau: epochs without val F1 gain")
    g.add_argument("--criterion", default="cross_entropy",
                   help="loss or weighted mix, e.g. focal:0.6,f1:0.4; names: cross_entropy, focal, "
                        "label_smoothing, f1")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--smoothing", type=float, default=0.1, help="label_smoothing epsilon")
    g.add_argument("--class-weights", default="none", help="none | balanced (inverse class frequency)")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation micro-batches per update")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0 = off)")
    g = p.add_argument_group("run")
    g.add_argument("--amp", nargs="?", const="auto", default="off", help=f"mixed precision on CUDA: {list(AMP_CHOICES)}")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--early-stop", type=int, default=0, help="stop after N epochs without val F1 gain (0 = off)")
    g.add_argument("--resume", help="RUN_DIR/last.pt (or a k-fold RUN_DIR) to continue exactly")
    g.add_argument("--stop-after", type=int, default=0, help="stop after N epochs in this invocation (resumable)")
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW weights on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_name(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(valid)}")


def check_preprocessing_and_mix(a: argparse.Namespace) -> None:
    """--crop, --aspect and --mixup/--cutmix/--mix-prob: one-line reasons before any work."""
    parse_crop(a.crop)
    _check_name("aspect policy", a.aspect, ASPECT_POLICIES)
    mix = BatchMix(a.mixup, a.cutmix, a.mix_prob)
    if mix.enabled:
        from training.soft_targets import check_soft_criterion
        check_soft_criterion(a.criterion)


def config_from_args(a: argparse.Namespace) -> RunConfig:
    """Validate every option before any data is read or any model is built."""
    if not a.data_dir:
        raise ValueError("--data-dir is required (DIR/train with train.csv and images/)")
    if not a.out:
        raise ValueError("--out RUN_DIR is required")
    _check_name("model", a.model, MODELS)
    _check_name("head", a.head, HEADS)
    _check_name("optimizer", a.optimizer, OPTIMIZERS)
    _check_name("scheduler", a.scheduler, SCHEDULERS)
    _check_name("augmentation", a.augment, AUGMENTS)
    _check_name("sampler", a.sampler, SAMPLERS)
    _check_name("resize filter", a.resize_filter, FILTERS)
    _check_name("class weights", a.class_weights, ("none", "balanced"))
    _check_name("amp mode", a.amp, AMP_CHOICES)
    parse_criterion(a.criterion)
    check_preprocessing_and_mix(a)
    epochs = 12 if a.epochs is None else a.epochs
    for name, value, low in (("--accum-steps", a.accum_steps, 1), ("--epochs", epochs, 1),
                             ("--batch-size", a.batch_size, 1), ("--workers", a.workers, 0),
                             ("--oversample", a.oversample, 1), ("--early-stop", a.early_stop, 0),
                             ("--stop-after", a.stop_after, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if a.folds == 1 or a.folds < 0:
        raise ValueError(f"--folds must be 0 (one holdout split) or >= 2, got {a.folds}")
    try:
        milestones = tuple(int(m) for m in a.milestones.split(",") if m.strip())
    except ValueError:
        raise ValueError(f"--milestones must be epochs like 8,11, got {a.milestones!r}") from None
    if a.weights and not Path(a.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {a.weights}")
    if a.pretrained and not a.weights:
        path = hub_weights_path(a.model)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights for {a.model} not found: put {path.name} in {path.parent} "
                                    "or pass --weights FILE")
    h, w = a.resize
    return RunConfig(
        data=DataConfig(str(Path(a.data_dir).resolve()), h, w, a.resize_filter, a.augment, a.val_fraction, a.sampler,
                        a.oversample, labels.parse_age_bins(a.age_bins), a.batch_size, a.workers, not a.no_cache,
                        a.strict, crop=a.crop.strip(), aspect=a.aspect, mixup=a.mixup, cutmix=a.cutmix,
                        mix_prob=a.mix_prob),
        model=ModelConfig(a.model, a.head, a.pretrained or bool(a.weights), a.weights),
        optim=OptimConfig(a.optimizer, a.lr, a.weight_decay, a.momentum, a.nesterov, a.scheduler, a.warmup_epochs,
                          a.step_size, a.gamma, milestones, a.min_lr_ratio, a.patience),
        loss=LossConfig(a.criterion, a.focal_gamma, a.smoothing, a.class_weights),
        train=TrainConfig(out=str(Path(a.out)), epochs=epochs, accum_steps=a.accum_steps, clip_grad=a.clip_grad,
                          amp=a.amp, device=a.device, seed=a.seed, early_stop=a.early_stop, folds=a.folds,
                          resume=None, stop_after=a.stop_after, channels_last=not a.no_channels_last,
                          progress=not a.no_progress),
    )


def config_from_dict(d: dict) -> RunConfig:
    data = dict(d["data"], age_bins=tuple(d["data"]["age_bins"]))
    data.setdefault("aspect", "stretch")   # runs recorded before the aspect policy existed stretched
    optim = dict(d["optim"], milestones=tuple(d["optim"]["milestones"]))
    return RunConfig(DataConfig(**data), ModelConfig(**d["model"]), OptimConfig(**optim), LossConfig(**d["loss"]),
                     TrainConfig(**d["train"]))


def resumed_config(a: argparse.Namespace) -> tuple[RunConfig, Path]:
    """The recorded config of the run to resume, with only the where/how-long options taken from the CLI."""
    src = Path(a.resume)
    if src.is_dir():
        src = src / "last.pt" if (src / "last.pt").is_file() else src
    if src.is_file():
        from training.checkpoint import load_checkpoint
        saved = load_checkpoint(src)["config"]
    elif (src / "config.json").is_file():
        saved = json.loads((src / "config.json").read_text(encoding="utf-8"))
    else:
        raise FileNotFoundError(f"nothing to resume at {a.resume} (expected RUN_DIR/last.pt or a k-fold RUN_DIR)")
    cfg = config_from_dict(saved)
    train = dataclasses.replace(cfg.train, resume=str(src), out=a.out or cfg.train.out,
                                epochs=a.epochs or cfg.train.epochs, stop_after=a.stop_after,
                                progress=not a.no_progress, device=a.device)
    data = dataclasses.replace(cfg.data, workers=a.workers, data_dir=a.data_dir and str(Path(a.data_dir).resolve())
                               or cfg.data.data_dir)
    return dataclasses.replace(cfg, train=train, data=data), src


def resolve_device(name: str, d: dist.Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if d.enabled:
            dev = torch.device("cuda", d.local_rank)
    elif dev.type != "cpu":
        raise ValueError(f"unsupported --device {name!r}; expected auto, cpu, cuda or cuda:N")
    return dev


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "off":
        return None
    if device.type != "cuda":
        log.warning("--amp %s ignored: mixed precision is used on CUDA only; training in fp32", mode)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def run(cfg: RunConfig, resume: Path | None = None) -> dict:
    from training.kfold import run_kfold
    from training.trainer import Env, fit
    from maskdata.io import atomic_write_text
    from maskdata.splits import train_val_split

    dev_name = cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    d = dist.init(torch.device(dev_name).type)
    try:
        if not d.main:
            logging.getLogger().setLevel(logging.WARNING)
        device = resolve_device(cfg.train.device, d)
        env = Env(device, resolve_amp(cfg.train.amp, device), d)
        samples, _ = read_train_dir(cfg.data.data_dir, strict=cfg.data.strict)
        out = Path(cfg.train.out)
        out.mkdir(parents=True, exist_ok=True)
        log.info("%d images of %d people from %s; device %s, world size %d", len(samples),
                 len({s.person for s in samples}), cfg.data.data_dir, device, d.world)
        if cfg.train.folds >= 2:
            if d.main:
                atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
            resume_dir = (resume if resume.is_dir() else resume.parent) if resume else None
            return run_kfold(cfg, samples, out, env, resume_dir)
        train_idx, val_idx = train_val_split(samples, cfg.data.val_fraction, cfg.train.seed)
        result = fit(cfg, samples, train_idx, val_idx, out, env, resume=resume)
        return result.best
    finally:
        dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    try:
        if a.resume:
            cfg, resume = resumed_config(a)
        else:
            cfg, resume = config_from_args(a), None
        best = run(cfg, resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {cfg.train.out}/last.pt holds the last finished epoch; continue with --resume",
              file=sys.stderr)
        return 130
    if best:
        log.info("done: best val macro F1 %.4f", best.get("f1", best.get("f1_mean", float("nan"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
