"""Backbone creation for both families, pretrained weights the standard way, and their preprocessing.

    backbone, classifier, features = build_backbone("timm/resnet10t", pretrained=True)
    pre = pretrained_preprocess("resnet18")      # {"height", "width", "resize_filter", "mean", "std"} or None

- torchvision names (``resnet18`` ...) go through torchvision's weights API (``get_model(name,
  weights="DEFAULT")``), which downloads into the torch hub cache (``$TORCH_HOME/hub/checkpoints``)
  when online and reads the cached file without touching the network when it is there.
- ``timm/<name>`` takes any name ``timm.list_models()`` knows; ``pretrained=True`` reads the
  Hugging Face hub cache (``$HF_HOME/hub/models--timm--<name>/snapshots/<rev>/``) first and only
  downloads (timm's own ``pretrained=True``) on a miss.

Offline (``HF_HUB_OFFLINE=1``, or a download that fails) a cache miss is a one-line
``FileNotFoundError`` naming the file and the folder to put it in. ``--weights FILE`` loads any
local state dict for either family and says how many keys are missing / unexpected when it does not fit.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
_OFFLINE_VALUES = ("1", "true", "yes", "on")


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(TIMM_PREFIX):]


def offline() -> bool:
    """The Hugging Face offline switch, honoured for both families (torchvision has none of its own)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def check_timm_name(arch: str) -> None:
    """ValueError naming how to find valid names when timm does not know ``timm/<name>``."""
    import timm

    name = timm_name(arch)
    base = name.split(".", 1)[0]
    if not name or not timm.is_model(base):
        stem = (base[:6] or "resnet") + "*"
        close = timm.list_models(stem)[:8]
        raise ValueError(f"unknown timm model {name!r}; find valid names with python -c \"import timm; "
                         f"print(timm.list_models('{stem}'))\" (e.g. {close})")


def list_models_text(builtin: list[str]) -> str:
    """What ``mask-train --list-models`` prints."""
    import timm

    return ("built-in models:\n  " + "\n  ".join(builtin) + "\n\n"
            f"timm models ({len(timm.list_models())} architectures, {len(timm.list_models(pretrained=True))} "
            "with pretrained weights): --model timm/<name>, e.g. timm/resnet10t, timm/efficientnet_b0, "
            "timm/convnext_tiny\n  find names with: python -c \"import timm; print(timm.list_models('effic*'))\"\n")


# ----------------------------------------------------------------------------- cache locations

def hub_weights_path(arch: str) -> Path:
    """Where torchvision's weights file for ``arch`` lives in the torch hub cache."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        raise ValueError(f"no torchvision weights for {arch!r}; use --weights FILE") from None
    file_name = enum.DEFAULT.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _hf_cache_dir() -> Path:
    # huggingface_hub freezes HF_HOME/HF_HUB_CACHE at import; read the variables at call time so a
    # cache folder chosen after import (tests, notebooks) is honoured, falling back to its constant.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_hub_file(arch: str) -> tuple[str, Path | None, Path]:
    """(hub repo id, cached weights file or None, the folder it belongs in)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.get_pretrained_cfg(timm_name(arch))
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm has no pretrained weights for {timm_name(arch)!r}; "
                         "list those that have: timm.list_models(pretrained=True); or pass --weights FILE")
    repo, cache = cfg.hf_hub_id, _hf_cache_dir()
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        hit = try_to_load_from_cache(repo, name, cache_dir=str(cache))
        if isinstance(hit, str):
            return repo, Path(hit), cache
    folder = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / "<revision>"
    return repo, None, folder


def _missing(file_name: str, folder: Path, why: str) -> FileNotFoundError:
    return FileNotFoundError(f"pretrained weights {file_name} not found ({why}): put it in {folder} "
                             "(e.g. copied from another machine's cache) or pass --weights FILE")


def check_pretrained_available(arch: str) -> None:
    """Fail fast (before any data is read) when offline and the weights are not cached."""
    if not offline():
        return
    if is_timm(arch):
        _, hit, folder = timm_hub_file(arch)
        if hit is None:
            raise _missing("model.safetensors", folder, "HF_HUB_OFFLINE=1 and not in the Hugging Face cache")
    else:
        path = hub_weights_path(arch)
        if not path.is_file():
            raise _missing(path.name, path.parent, "HF_HUB_OFFLINE=1 and not in the torch hub cache")


# ----------------------------------------------------------------------------- building

def split_classifier(net: nn.Module) -> tuple[str, int]:
    """Replace the network's final Linear with Identity; return its dotted name and input width."""
    name, last = None, None
    for n, m in net.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    assert name is not None, "backbone has no Linear classifier"
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return name, last.in_features


def torchvision_backbone(arch: str, pretrained: bool) -> tuple[nn.Module, str, int]:
    from torchvision import models as tvm

    if not pretrained:
        net = tvm.get_model(arch, weights=None)
    else:
        path = hub_weights_path(arch)
        if not path.is_file() and offline():
            raise _missing(path.name, path.parent, "HF_HUB_OFFLINE=1 and not in the torch hub cache")
        try:
            net = tvm.get_model(arch, weights="DEFAULT")  # cache hit: reads the file; miss: downloads into it
        except OSError as e:  # URLError/socket errors are OSErrors: an offline machine
            raise _missing(path.name, path.parent, f"download failed: {str(e).splitlines()[0]}") from None
    classifier, features = split_classifier(net)
    return net, classifier, features


def timm_backbone(arch: str, pretrained: bool) -> tuple[nn.Module, str, int]:
    """timm model with its classifier removed (``num_classes=0``): forward gives pooled features."""
    import timm

    check_timm_name(arch)
    name, kwargs = timm_name(arch), {}
    if pretrained:
        repo, hit, folder = timm_hub_file(arch)
        if hit is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(hit)}  # timm's documented file override: no network
        elif offline():
            raise _missing("model.safetensors", folder, f"HF_HUB_OFFLINE=1 and {repo} is not in the cache")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except OSError as e:  # huggingface_hub's connection errors subclass OSError
        _, _, folder = timm_hub_file(arch)
        raise _missing("model.safetensors", folder, f"download failed: {str(e).splitlines()[0]}") from None
    classifier = net.pretrained_cfg.get("classifier") or "fc"
    # models with a pre-logits stage (MobileNetV3's conv_head) emit head_hidden_size, not num_features
    return net, classifier, int(getattr(net, "head_hidden_size", None) or net.num_features)


def load_backbone_weights(backbone: nn.Module, classifier: str, path: Path) -> None:
    """A local state dict (``.pt``/``.pth`` or ``.safetensors``) into ``backbone``, its classifier ignored."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip/safetensors errors come in many types
        raise ValueError(f"{path}: not a readable weights file: {str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        sd = sd.get("state_dict") or sd.get("model") or sd
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if not k.startswith(classifier + ".")}
    own = backbone.state_dict()
    wrong = [k for k, v in sd.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    missing, unexpected = backbone.load_state_dict({k: v for k, v in sd.items() if k not in wrong}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit this backbone: {len(missing)} missing keys (e.g. "
                         f"{missing[:2]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:2]}), "
                         f"{len(wrong)} of another shape")
    log.info("loaded backbone weights from %s", path)


# ----------------------------------------------------------------------------- preprocessing

_TV_FILTERS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos": "lanczos",
               "box": "box"}


def pretrained_preprocess(arch: str) -> dict | None:
    """The preprocessing the pretrained weights were trained with, or None when there is none to follow.

    timm: ``pretrained_cfg`` mean/std/input_size/interpolation; torchvision: the weights' eval
    transforms (mean/std, crop size as the square input, interpolation).
    """
    if is_timm(arch):
        import timm

        cfg = timm.get_pretrained_cfg(timm_name(arch))
        if cfg is None:
            return None
        _, h, w = cfg.input_size
        filt = _TV_FILTERS.get(str(cfg.interpolation), "bilinear")
        return {"height": int(h), "width": int(w), "resize_filter": filt,
                "mean": tuple(float(v) for v in cfg.mean), "std": tuple(float(v) for v in cfg.std)}
    from torchvision.models import get_model_weights

    try:
        t = get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, KeyError):
        return None
    size = int(t.crop_size[0])
    filt = _TV_FILTERS.get(str(t.interpolation.value), "bilinear")
    return {"height": size, "width": size, "resize_filter": filt,
            "mean": tuple(float(v) for v in t.mean), "std": tuple(float(v) for v in t.std)}
