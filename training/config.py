"""Frozen run configuration, one dataclass per concern, built once from the CLI and passed down.

These dataclasses are the only place a default is written: ``mask-train``'s parser takes every
default and help text from the fields (``help`` in each field's metadata), and ``CLI_FIELDS`` maps
each argparse destination to its field. ``RunConfig.to_dict()`` is what ``config.json`` and every
checkpoint's ``config`` hold; ``config_yaml(cfg)`` writes the same run as ``--config`` keys, so
``mask-train --config RUN/config.yaml`` reruns it.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from maskdata.io import cpu_workers


def _f(default=None, help: str = "", factory=None):
    meta = {"help": help}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = _f(None, "DIR/train with train.csv and images/ (required unless --resume)")
    height: int = _f(128, "input height")
    width: int = _f(96, "input width")
    resize_filter: str = _f("bilinear", "resize filter")
    augment: str = _f("light", "augmentation preset")
    val_fraction: float = _f(0.2, "share of people held out, any value in (0, 1) (no --folds)")
    sampler: str = _f("random", "random | weighted (inverse class frequency)")
    oversample: int = _f(1, "repeat rarer-than-median classes N times (1 = off)")
    age_bins: tuple[int, int] = _f((30, 60), "training-target age thresholds (val always uses 30,60)")
    batch_size: int = _f(32, "per process")
    workers: int | None = _f(None, "DataLoader worker processes; unset (None): 0 — batches built in this process — "
                                   "when decoded images are cached (a worker process competes with the training "
                                   "threads for the cores and measured slower: docs/benchmarks.md), else CPUs - 1, "
                                   "at most 4")
    cache: bool = _f(True, "keep decoded eval-size images in memory across epochs")
    strict: bool = _f(False, "fail on any data-layout problem instead of skipping")
    relabel: str | None = _f(None, "corrections CSV (person,image,field,value; docs/data.md) applied to the labels "
                                   "as the layout is read; its digest joins the config and the data fingerprint")
    relabel_digest: str = _f("", "SHA-256 prefix of the --relabel file (set from the file, not a flag)")
    mean: tuple[float, float, float] | None = _f(None, "normalisation mean (default: ImageNet, or the pretrained weights' own)")
    std: tuple[float, float, float] | None = _f(None, "normalisation std (default: ImageNet, or the pretrained weights' own)")
    crop: str = _f("", "crop of the upright image before the aspect policy and resize: center:H,W (source "
                   "pixels) or box:L,T,R,B (0-1 relative or pixels); recorded in the model")
    aspect: str = _f("crop", "policy for inputs whose aspect differs from the input size (docs/data.md); recorded")
    mixup: float = _f(0.0, "MixUp Beta alpha (0 = off)")
    cutmix: float = _f(0.0, "CutMix Beta alpha (0 = off)")
    mix_prob: float = _f(1.0, "share of batches mixed when --mixup/--cutmix is on")
    pseudo_label: str = _f("", "teacher probabilities for images outside the training set (mask-submit --probs "
                           "on the eval set); the confident ones train on the teacher's soft targets, never validate")
    pseudo_threshold: float = _f(0.9, "--pseudo-label: keep images whose top teacher probability is at least this")
    pseudo_images: str = _f("", "--pseudo-label: folder the ImageIDs are relative to (default: DATA_DIR/../eval/images)")

    @property
    def loader_workers(self) -> int:
        """``workers`` as given, else the default its help states."""
        if self.workers is not None:
            return self.workers
        return 0 if self.cache else cpu_workers(reserve=1, at_most=4)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("plain_cnn", "architecture")
    head: str = _f("multi", "single 18-way layer, or multi (mask/gender/age heads)")
    pretrained: bool = _f(False, "ImageNet weights from the local torch hub cache")
    weights: str | None = _f(None, "backbone weights file (a state dict); implies pretrained")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = _f("adamw", "optimizer")
    lr: float = _f(3e-3, "peak learning rate")
    weight_decay: float = _f(1e-4, "not applied to biases and norm scales")
    momentum: float = _f(0.9, "sgd")
    nesterov: bool = _f(False, "sgd")
    scheduler: str = _f("cosine", "LR schedule")
    warmup_epochs: float = _f(1.0, "linear warmup (per-update schedules)")
    step_size: int = _f(10, "step: epochs between decays")
    gamma: float = _f(0.1, "step/multistep/plateau decay factor")
    milestones: tuple[int, ...] = _f((), "multistep: epochs, e.g. 8,11")
    min_lr_ratio: float = _f(0.01, "cosine floor as a fraction of --lr")
    patience: int = _f(2, "plateau: epochs without val F1 gain")


@dataclass(frozen=True)
class LossConfig:
    criterion: str = _f("cross_entropy", "loss or weighted mix, e.g. focal:0.6,f1:0.4; names: cross_entropy, "
                                         "focal, label_smoothing, f1")
    focal_gamma: float = _f(2.0, "focal loss exponent")
    smoothing: float = _f(0.1, "label_smoothing epsilon")
    class_weights: str = _f("none", "none | balanced (inverse class frequency)")
    teacher: str = _f("", "distil from a teacher: an out-of-fold/val prediction CSV, a teacher log-prob CSV, or an "
                      "exported .onnx model/ensemble (run once over the training images, cached in RUN_DIR)")
    distill_weight: float = _f(0.5, "--teacher: loss = (1 - W) task + W T^2 KL(teacher || student)")
    distill_temperature: float = _f(2.0, "--teacher: softmax temperature T of teacher and student in the KL term")


@dataclass(frozen=True)
class TrainConfig:
    out: str = _f(None, "run folder to write (default with --resume: the checkpoint's folder)")
    epochs: int = _f(12, "epochs (with --resume: as recorded unless given; more extends the run)")
    accum_steps: int = _f(1, "gradient accumulation micro-batches per update")
    clip_grad: float = _f(0.0, "max gradient norm (0 = off)")
    amp: str = _f("off", "mixed precision: off (FP32) | auto (bf16 on a CPU with native bf16, else FP32; "
                         "bf16 or fp16 on CUDA) | bf16 (CPU or CUDA) | fp16 (CUDA only); --amp alone = auto")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    seed: int = _f(0, "seed of the split, data order, augmentation and initialisation")
    early_stop: int = _f(0, "stop after N epochs without val F1 gain (0 = off)")
    folds: int = _f(0, "K >= 2: person-level k-fold into RUN_DIR/fold{k}/")
    resume: str | None = _f(None, "RUN_DIR/last.pt (or a k-fold RUN_DIR) to continue exactly")
    stop_after: int = _f(0, "stop after N epochs in this invocation (resumable)")
    channels_last: bool = _f(True, "channels-last weights on CUDA")
    progress: bool = _f(True, "progress bars")
    tensorboard: bool = _f(True, "TensorBoard event files in the run folder")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        # tuples become lists so the dict round-trips through JSON and weights_only torch.load
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        data = dict(d["data"], age_bins=tuple(d["data"]["age_bins"]))
        data.setdefault("aspect", "stretch")   # runs recorded before the aspect policy existed stretched
        for k in ("mean", "std"):   # absent in runs written before they were recorded
            data[k] = tuple(data[k]) if data.get(k) is not None else None
        optim = dict(d["optim"], milestones=tuple(d["optim"]["milestones"]))
        return cls(data=DataConfig(**data), model=ModelConfig(**d["model"]), optim=OptimConfig(**optim),
                   loss=LossConfig(**d["loss"]), train=TrainConfig(**d["train"]))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig, "train": TrainConfig}

# argparse destination -> (section, field) for every option that maps one-to-one onto a field.
# --resize (height, width) and the --no-* switches (negated booleans) are handled beside it in cli.py.
CLI_FIELDS = {
    "data_dir": ("data", "data_dir"), "resize_filter": ("data", "resize_filter"), "augment": ("data", "augment"),
    "val_fraction": ("data", "val_fraction"), "sampler": ("data", "sampler"), "oversample": ("data", "oversample"),
    "age_bins": ("data", "age_bins"), "batch_size": ("data", "batch_size"), "workers": ("data", "workers"),
    "strict": ("data", "strict"), "relabel": ("data", "relabel"),
    **{n: ("data", n) for n in ("crop", "aspect", "mixup", "cutmix", "mix_prob", "pseudo_label",
                                "pseudo_threshold", "pseudo_images")},
    "model": ("model", "arch"), "head": ("model", "head"), "pretrained": ("model", "pretrained"),
    "weights": ("model", "weights"),
    **{n: ("optim", n) for n in ("optimizer", "lr", "weight_decay", "momentum", "nesterov", "scheduler",
                                 "warmup_epochs", "step_size", "gamma", "milestones", "min_lr_ratio", "patience")},
    **{n: ("loss", n) for n in ("criterion", "focal_gamma", "smoothing", "class_weights", "teacher",
                                "distill_weight", "distill_temperature")},
    **{n: ("train", n) for n in ("out", "epochs", "accum_steps", "clip_grad", "amp", "device", "seed",
                                 "early_stop", "folds", "resume", "stop_after")},
}
NEGATED = {"no_cache": ("data", "cache"), "no_channels_last": ("train", "channels_last"),
           "no_progress": ("train", "progress"), "no_tensorboard": ("train", "tensorboard")}
NOT_RECORDED = ("resume", "stop_after")   # per invocation: a rerun trains the whole run


def field_of(section: str, name: str):
    return next(f for f in fields(SECTIONS[section]) if f.name == name)


def field_default(section: str, name: str):
    f = field_of(section, name)
    return f.default if f.default is not MISSING else f.default_factory()


def cli_values(cfg: RunConfig) -> dict:
    """``cfg`` as ``--config`` keys (argparse destinations): what ``config.yaml`` holds."""
    d = cfg.to_dict()
    out = {dest: d[sec][name] for dest, (sec, name) in CLI_FIELDS.items() if dest not in NOT_RECORDED}
    out["resize"] = [d["data"]["height"], d["data"]["width"]]
    out.update({k: d["data"][k] for k in ("mean", "std") if d["data"].get(k) is not None})
    out.update({dest: not d[sec][name] for dest, (sec, name) in NEGATED.items()})
    return out


def config_yaml(cfg: RunConfig) -> str:
    import yaml

    return ("# mask-train --config this-file reruns this run (keys: argparse destinations; flags win)\n"
            + yaml.safe_dump(cli_values(cfg), sort_keys=False))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
