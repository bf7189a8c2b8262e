"""Frozen run configuration, one dataclass per concern, built once from the CLI and passed down.

``RunConfig.to_dict()`` is what ``config.json`` and every checkpoint's ``config`` hold, so a run can
be reproduced (and resumed) from its own record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DataConfig:
    data_dir: str
    height: int = 128
    width: int = 96
    resize_filter: str = "bilinear"
    augment: str = "light"
    val_fraction: float = 0.2
    sampler: str = "random"            # random | weighted (inverse class frequency)
    oversample: int = 1                # repeat rare-class samples this many times (1 = off)
    age_bins: tuple[int, int] = (30, 60)   # training targets only; validation always uses 30/60
    batch_size: int = 32
    workers: int = 1
    cache: bool = True                 # keep decoded eval-size images in memory across epochs
    strict: bool = False
    crop: str = ""                     # "" | center:H,W | box:L,T,R,B (maskdata.geometry), before resize
    aspect: str = "crop"               # stretch | crop | pad for inputs of another aspect (docs/data.md)
    mixup: float = 0.0                 # MixUp Beta alpha (0 = off)
    cutmix: float = 0.0                # CutMix Beta alpha (0 = off)
    mix_prob: float = 1.0              # share of batches mixed when --mixup/--cutmix is on


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "plain_cnn"
    head: str = "multi"
    pretrained: bool = False
    weights: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 10                # epochs, for the step scheduler
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()   # epochs, for multistep
    min_lr_ratio: float = 0.01         # cosine floor as a fraction of --lr
    patience: int = 2                  # plateau scheduler


@dataclass(frozen=True)
class LossConfig:
    criterion: str = "cross_entropy"   # e.g. "focal:0.6,f1:0.4"
    focal_gamma: float = 2.0
    smoothing: float = 0.1
    class_weights: str = "none"        # none | balanced


@dataclass(frozen=True)
class TrainConfig:
    out: str
    epochs: int = 10
    accum_steps: int = 1
    clip_grad: float = 0.0             # max grad norm; 0 = off
    amp: str = "off"                   # off | auto | bf16 | fp16 (CUDA only)
    device: str = "auto"
    seed: int = 0
    early_stop: int = 0                # epochs without val F1 improvement; 0 = off
    folds: int = 0                     # 0/1 = one holdout split
    resume: str | None = None
    stop_after: int = 0                # stop after this many epochs in this invocation (0 = run to the end)
    channels_last: bool = True         # applied on CUDA only
    progress: bool = True


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out="runs/default"))

    def to_dict(self) -> dict:
        d = asdict(self)
        # tuples become lists so the dict round-trips through JSON and weights_only torch.load
        return _plain(d)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
