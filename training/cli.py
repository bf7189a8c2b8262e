"""``mask-train``: train a mask/gender/age classifier and write checkpoints, metrics and plots.

    mask-train --data-dir DATA/train --out runs/r1                       # the default CPU recipe
    mask-train --data-dir DATA/train --out runs/cv --folds 5             # k-fold into runs/cv/fold{k}/
    mask-train --resume runs/r1/last.pt                                  # continue exactly
    mask-train --resume runs/r1/last.pt --epochs 20                      # extend a run
    mask-train --config runs/r1/config.yaml --out runs/r1-again          # rerun a run (flags win)
    torchrun --nproc-per-node 2 -m training --data-dir DATA/train --out runs/ddp   # DDP

See docs/training.md for every option and the measured default recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from maskdata import labels
from maskdata.layout import read_train_dir
from maskdata.geometry import ASPECT_POLICIES, parse_crop
from maskdata.preprocess import FILTERS
from maskdata.relabel import check_relabel_digest, relabel_values
from training import dist, precision
from training.config import CLI_FIELDS, NEGATED, SECTIONS, RunConfig, config_yaml, field_default, field_of
from training.augment import BatchMix, presets_help
from training.data import AUGMENTS
from training.losses import parse_criterion
from training import backbones
from training.models import HEADS, MODELS
from training.optim import OPTIMIZERS, SCHEDULERS
from maskdata.yamlconfig import explicit_dests, load_config_file, parse_with_config

log = logging.getLogger("training")

AMP_CHOICES = precision.MODES
SAMPLERS = ("random", "weighted")
# --config keys that recipes commonly use for options this CLI names otherwise
CONFIG_ALIASES = {"loss": ("criterion", None),
                  "weighted_sampler": ("sampler", lambda on: "weighted" if on else "random")}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _default(dest: str):
    sec, name = CLI_FIELDS[dest]
    return field_default(sec, name)


def _help(dest: str, extra: str = "") -> str:
    sec, name = (CLI_FIELDS | NEGATED)[dest]
    return field_of(sec, name).metadata["help"] + extra


def build_parser() -> argparse.ArgumentParser:
    """Every default and help text comes from the fields of training.config (one source)."""
    p = argparse.ArgumentParser(prog="mask-train", formatter_class=_Formatter,
                                description=f"Train a mask/gender/age classifier ({labels.NUM_CLASSES} classes); "
                                            "write checkpoints, metrics and plots to RUN_DIR.",
                                epilog="examples:\n" + __doc__.split("\n\n")[1])
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML mapping of option names (argparse destinations, e.g. age_bins: [30, 58]) to values; "
                        "flags on the command line win; RUN_DIR/config.yaml reruns a run")

    def add(group, dest: str, extra: str = "", **kw):
        flag = "--" + dest.replace("_", "-")
        default = _default(dest)
        if isinstance(default, bool):
            group.add_argument(flag, action="store_true", help=_help(dest, extra), **kw)
        else:
            if isinstance(default, tuple):
                default = ",".join(str(v) for v in default)
            elif default is not None and "type" not in kw:
                kw["type"] = type(default)
            group.add_argument(flag, default=default, help=_help(dest, extra), **kw)

    g = p.add_argument_group("data")
    add(g, "data_dir")
    add(g, "out")
    g.add_argument("--resize", nargs=2, type=int, default=(field_default("data", "height"),
                                                           field_default("data", "width")),
                   metavar=("H", "W"), help="input size (with --pretrained and not given: the weights' own)")
    add(g, "resize_filter", f": {sorted(FILTERS)} (with --pretrained and not given: the weights' own)")
    g.add_argument("--mean", help="normalization mean R,G,B (default: ImageNet's, or the pretrained weights' own)")
    g.add_argument("--std", help="normalization std R,G,B (default: ImageNet's, or the pretrained weights' own)")
    add(g, "augment", f" (torchvision v2 or the hand-written tensor presets): one of {presets_help()}")
    add(g, "crop", "", metavar="center:H,W|box:L,T,R,B")
    add(g, "aspect", f": one of {list(ASPECT_POLICIES)}")
    add(g, "mixup", "", metavar="ALPHA")
    add(g, "cutmix", "", metavar="ALPHA")
    add(g, "mix_prob")
    add(g, "val_fraction")
    add(g, "folds")
    add(g, "sampler", f": {list(SAMPLERS)}")
    for dest in ("oversample", "age_bins", "batch_size"):
        add(g, dest)
    add(g, "workers", type=int)   # default None: DataConfig.loader_workers decides
    g.add_argument("--no-cache", action="store_true", help="decode images every epoch instead of once")
    add(g, "strict")
    add(g, "relabel", metavar="FILE")
    g = p.add_argument_group("model")
    add(g, "model", f": {sorted(MODELS)}, or timm/<name> (any model timm knows)")
    g.add_argument("--list-models", action="store_true", help="print the model names and exit")
    add(g, "head", f": {list(HEADS)}")
    add(g, "pretrained")
    add(g, "weights")
    g = p.add_argument_group("optimization")
    add(g, "epochs")
    add(g, "optimizer", f": {sorted(OPTIMIZERS)}")
    for dest in ("lr", "weight_decay", "momentum", "nesterov"):
        add(g, dest)
    add(g, "scheduler", f": {SCHEDULERS}")
    for dest in ("warmup_epochs", "step_size", "gamma", "milestones", "min_lr_ratio", "patience", "criterion",
                 "focal_gamma", "smoothing", "class_weights", "accum_steps", "clip_grad"):
        add(g, dest)
    g = p.add_argument_group("distillation and pseudo-labels (docs/training.md, Distillation)")
    add(g, "teacher", "", metavar="SOURCE")
    add(g, "distill_weight", "", metavar="W")
    add(g, "distill_temperature", "", metavar="T")
    add(g, "pseudo_label", "", metavar="PROBS")
    add(g, "pseudo_threshold", "", metavar="P")
    add(g, "pseudo_images", "", metavar="DIR")
    g = p.add_argument_group("run")
    add(g, "amp", f": {list(AMP_CHOICES)}", nargs="?", const="auto")
    for dest in ("device", "seed", "early_stop", "resume", "stop_after"):
        add(g, dest)
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW weights on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files in RUN_DIR")
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


def _check_args(a: argparse.Namespace) -> None:
    if not a.data_dir:
        raise ValueError("--data-dir is required (DIR/train with train.csv and images/)")
    if not a.out:
        raise ValueError("--out RUN_DIR is required")
    if backbones.is_timm(a.model):
        backbones.check_timm_name(a.model)
    else:
        _check_name("model", a.model, MODELS)
    for kind, value, valid in (("head", a.head, HEADS),
                               ("optimizer", a.optimizer, OPTIMIZERS), ("scheduler", a.scheduler, SCHEDULERS),
                               ("augmentation", a.augment, AUGMENTS), ("sampler", a.sampler, SAMPLERS),
                               ("resize filter", a.resize_filter, FILTERS),
                               ("class weights", a.class_weights, ("none", "balanced")),
                               ("amp mode", a.amp, AMP_CHOICES)):
        _check_name(kind, value, valid)
    parse_criterion(a.criterion)
    check_preprocessing_and_mix(a)
    for name, value, low in (("--accum-steps", a.accum_steps, 1), ("--epochs", a.epochs, 1),
                             ("--batch-size", a.batch_size, 1), ("--workers", a.workers, 0),
                             ("--oversample", a.oversample, 1), ("--early-stop", a.early_stop, 0),
                             ("--stop-after", a.stop_after, 0)):
        if value is not None and value < low:   # --workers None: the default (DataConfig.loader_workers)
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not 0 < a.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {a.val_fraction}")
    if a.folds == 1 or a.folds < 0:
        raise ValueError(f"--folds must be 0 (one holdout split) or >= 2, got {a.folds}")
    if a.weights and not Path(a.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {a.weights}")
    if a.pretrained and not a.weights:
        backbones.check_pretrained_available(a.model)
    from training.distillation.options import check_distill_args
    check_distill_args(a)


def config_from_args(a: argparse.Namespace, given: set[str] = frozenset()) -> RunConfig:
    """Validate every option before any data is read or any model is built; dataclasses by keyword.
    ``given``: the options the user set (command line or --config); the others may follow the
    pretrained weights' own preprocessing."""
    a.amp = precision.normalize_mode(a.amp)   # recipes may still say `amp: true`
    _check_args(a)
    try:
        milestones = tuple(int(m) for m in str(a.milestones).split(",") if m.strip())
    except ValueError:
        raise ValueError(f"--milestones must be epochs like 8,11, got {a.milestones!r}") from None
    values = {sec: {} for sec in SECTIONS}
    for dest, (sec, name) in CLI_FIELDS.items():
        values[sec][name] = getattr(a, dest)
    for dest, (sec, name) in NEGATED.items():
        values[sec][name] = not getattr(a, dest)
    h, w, resize_filter, mean, std = resolve_preprocess(a, given)
    values["data"].update(data_dir=str(Path(a.data_dir).resolve()), height=h, width=w, resize_filter=resize_filter,
                          mean=mean, std=std, age_bins=labels.parse_age_bins(a.age_bins), crop=a.crop.strip())
    values["data"].update(relabel_values(a.relabel))
    values["model"]["pretrained"] = a.pretrained or bool(a.weights)
    values["optim"]["milestones"] = milestones
    values["train"].update(out=str(Path(a.out)), resume=None)
    return RunConfig(**{sec: cls(**values[sec]) for sec, cls in SECTIONS.items()})


def _triple(flag: str, text) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in (text if isinstance(text, (list, tuple)) else str(text).split(",")))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} must be three numbers R,G,B like 0.485,0.456,0.406, got {text!r}")
    return values


def resolve_preprocess(a: argparse.Namespace, given: set[str]) -> tuple:
    """(H, W, filter, mean, std): the user's values where given, else the pretrained weights' own
    (timm pretrained_cfg / torchvision weights transforms), else the built-in defaults."""
    own = backbones.pretrained_preprocess(a.model) if (a.pretrained and not a.weights) else None
    own = own or {}
    h, w = a.resize if "resize" in given or "height" not in own else (own["height"], own["width"])
    resize_filter = a.resize_filter if "resize_filter" in given else own.get("resize_filter", a.resize_filter)
    _check_name("resize filter", resize_filter, FILTERS)
    mean = _triple("--mean", a.mean) or own.get("mean")
    std = _triple("--std", a.std) or own.get("std")
    if std is not None and min(std) <= 0:
        raise ValueError(f"--std must be positive, got {a.std!r}")
    return h, w, resize_filter, mean, std


def given_options(argv: list[str] | None) -> set[str]:
    """Destinations the user set: on the command line or in the --config file."""
    given = explicit_dests(build_parser, argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        given |= set(load_config_file(known.config, build_parser(), aliases=CONFIG_ALIASES))
    return given


def resumed_config(a: argparse.Namespace, given: set[str]) -> tuple[RunConfig, Path]:
    """The recorded config of the run to resume, with only the where/how-long options taken from the CLI
    (``--epochs`` only when ``given``: more than recorded extends the run)."""
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
    cfg = RunConfig.from_dict(saved)
    epochs = a.epochs if "epochs" in given else cfg.train.epochs
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    train = dataclasses.replace(cfg.train, resume=str(src), out=a.out or cfg.train.out, epochs=epochs,
                                stop_after=a.stop_after, progress=not a.no_progress, device=a.device)
    data = dataclasses.replace(cfg.data, workers=a.workers, data_dir=a.data_dir and str(Path(a.data_dir).resolve())
                               or cfg.data.data_dir)
    return dataclasses.replace(cfg, train=train, data=data), src


def resolve_device(name: str, ranks: dist.Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if ranks.enabled:
            dev = torch.device("cuda", ranks.local_rank)
    elif dev.type != "cpu":
        raise ValueError(f"unsupported --device {name!r}; expected auto, cpu, cuda or cuda:N")
    return dev


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp mode`` on ``device`` (None = FP32); logs which and why."""
    chosen = precision.resolve(mode, device)
    log.info("precision %s (%s)", chosen.name, chosen.reason)
    return chosen.dtype


def run(cfg: RunConfig, resume: Path | None = None, on_epoch_end=None) -> dict:
    """Train ``cfg``; ``on_epoch_end(fold, epoch, row)`` (fold 0 without --folds) is called after every
    epoch and may raise to stop the run there (``mask-tune`` prunes trials with it)."""
    from training.loop.kfold import run_kfold
    from training.loop.trainer import Env, fit
    from maskdata.io import atomic_write_text
    from maskdata.splits import train_val_split

    dev_name = cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = dist.init(torch.device(dev_name).type)
    try:
        if not ranks.main:
            logging.getLogger().setLevel(logging.WARNING)
        device = resolve_device(cfg.train.device, ranks)
        env = Env(device, resolve_amp(cfg.train.amp, device), ranks)
        samples, report = read_train_dir(cfg.data.data_dir, strict=cfg.data.strict, relabel=cfg.data.relabel)
        check_relabel_digest(cfg.data, report)
        out = Path(cfg.train.out)
        out.mkdir(parents=True, exist_ok=True)
        log.info("%d images of %d people from %s; device %s, world size %d", len(samples),
                 len({s.person for s in samples}), cfg.data.data_dir, device, ranks.world)
        if cfg.loss.teacher:   # an .onnx teacher runs once (rank 0), cached in RUN_DIR; CSV teachers are read as is
            from training.distillation.options import prepare_teacher
            prepare_teacher(cfg, samples, ranks)
        if cfg.train.folds >= 2:
            if ranks.main:
                atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
                atomic_write_text(out / "config.yaml",
                                  config_yaml(cfg) + precision.record_line(cfg.train.amp, env.amp_dtype))
            resume_dir = (resume if resume.is_dir() else resume.parent) if resume else None
            best = run_kfold(cfg, samples, out, env, resume_dir, on_epoch_end=on_epoch_end)
        else:
            train_idx, val_idx = train_val_split(samples, cfg.data.val_fraction, cfg.train.seed)
            hook = None if on_epoch_end is None else (lambda epoch, row: on_epoch_end(0, epoch, row))
            best = fit(cfg, samples, train_idx, val_idx, out, env, resume=resume, on_epoch_end=hook).best
        # every rank leaves together: a rank that tears its gloo group down while a peer still calibrates
        # or writes can be aborted by gloo ("terminate called without an active exception")
        dist.barrier(ranks)
        return best
    finally:
        dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        a = parse_with_config(build_parser(), argv, csv_keys=("age_bins", "milestones", "mean", "std"),
                              aliases=CONFIG_ALIASES)
        if a.list_models:
            print(backbones.list_models_text(sorted(MODELS)), end="")
            return 0
        if a.resume:
            cfg, resume = resumed_config(a, explicit_dests(build_parser, argv))
        else:
            cfg, resume = config_from_args(a, given_options(argv)), None
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
