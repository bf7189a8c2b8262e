"""Checkpoints (docs/ARCHITECTURE.md): plain-typed dicts that load with ``weights_only=True``.

    ckpt = load_checkpoint("runs/x/best.pt")        # validated; one-line errors
    model = model_from_checkpoint(ckpt)              # MaskNet in eval mode, takes uint8 NHWC

``save_checkpoint`` writes to a temporary file and renames it, so an interrupted run never leaves
a half-written ``best.pt``/``last.pt``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from maskdata import labels
from maskdata.io import atomic_path
from maskdata.preprocess import Preprocess
from training.models import HEADS, MaskNet, create_model

FORMAT = "mask-checkpoint"
FORMAT_VERSION = 2   # 2: preprocess gains crop/aspect/pad_fill (maskdata.artifact.FORMAT_VERSION)
REQUIRED = ("arch", "head", "num_classes", "state_dict", "labels", "age_bins", "preprocess", "config",
            "metrics", "epoch", "data_fingerprint", "data_dir", "val_images")


def unwrap(model: torch.nn.Module) -> MaskNet:
    """The MaskNet inside a DDP / torch.compile wrapper."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def build_checkpoint(model: torch.nn.Module, *, age_bins=labels.DEFAULT_AGE_BINS, config: dict | None = None,
                     metrics: dict | None = None, epoch: int = 0, data_fingerprint: str = "",
                     data_dir: str = "", val_images: list[str] | tuple = (), **extra) -> dict:
    """The checkpoint dict for ``model`` (unwrapped from DDP); ``extra`` adds resume state to last.pt."""
    net = unwrap(model)
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": net.arch, "head": net.head_type, "num_classes": labels.NUM_CLASSES,
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "labels": labels.label_table_dicts(), "age_bins": [int(b) for b in age_bins],
        "preprocess": net.preprocess.to_dict(), "config": dict(config or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()}, "epoch": int(epoch),
        "data_fingerprint": str(data_fingerprint), "data_dir": str(data_dir),
        "val_images": [str(p) for p in list(val_images)[:64]],
    }
    ckpt.update(extra)
    return ckpt


def save_checkpoint(path: str | os.PathLike, ckpt_or_model, **fields) -> Path:
    """Atomically write a checkpoint: a dict from :func:`build_checkpoint`, or a model plus its fields."""
    ckpt = ckpt_or_model if isinstance(ckpt_or_model, dict) else build_checkpoint(ckpt_or_model, **fields)
    missing = [k for k in REQUIRED if k not in ckpt]
    assert not missing, f"checkpoint lacks {missing}"
    with atomic_path(path, suffix=".pt.tmp") as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)``; ValueError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and unpickler errors come in many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({msg})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a mask-train checkpoint (no format={FORMAT!r} field)")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this reader "
                         f"({FORMAT_VERSION}); upgrade the package")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing field(s) {','.join(missing)}")
    if ckpt["head"] not in HEADS or ckpt["num_classes"] != labels.NUM_CLASSES:
        raise ValueError(f"{path}: unsupported head {ckpt['head']!r} / num_classes {ckpt['num_classes']}")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike) -> MaskNet:
    """Rebuild the MaskNet a checkpoint (dict or path) describes, weights loaded, in eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = create_model(ckpt["arch"], head=ckpt["head"], preprocess=Preprocess.from_dict(ckpt["preprocess"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights do not fit {ckpt['arch']}/{ckpt['head']}: "
                         f"{str(e).splitlines()[0]}") from None
    model.temperature.fill_(float(ckpt.get("temperature", 1.0)))  # fitted by training.loop.calibration
    return model.eval()
