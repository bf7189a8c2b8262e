"""Model registry and ``MaskNet``: a backbone plus an 18-class head that takes uint8 NHWC images.

``create_model("resnet18", head="multi", preprocess=Preprocess(128, 96))`` builds a network whose
``forward`` takes what decoders produce, ``(N, H, W, 3)`` uint8, casts and normalizes inside the
graph (so ONNX export and every client get the same input contract) and returns 18-class logits.

Heads:
- ``single``: one 18-way linear layer.
- ``multi``: mask (3) / gender (2) / age (3) linear heads; the 18 logits are the log of the joint
  probability ``p(mask) p(gender) p(age)``, so ``softmax(logits)`` is the derived 18-class
  distribution and everything downstream sees 18 classes either way.

``timm/<name>`` builds any timm model (``training.backbones``). ``--pretrained`` goes through
torchvision's weights API / timm's ``pretrained=True`` (the usual torch hub / Hugging Face caches,
no network on a cache hit), ``--weights FILE`` reads any local state dict for the backbone.

``temperature`` (a non-persistent buffer, 1 while training) divides the 18 logits; it is set from
the checkpoint's fitted temperature (``training.loop.calibration``), so export bakes it into the graph.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from maskdata import labels
from maskdata.preprocess import Preprocess
from training import backbones
from training.backbones import hub_weights_path  # noqa: F401  (re-exported for the CLI)

log = logging.getLogger(__name__)

HEADS = ("single", "multi")


class TinyCNN(nn.Sequential):
    """Three strided conv blocks: a few thousand parameters, for tests and smoke runs."""

    def __init__(self, width: int = 16):
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (width, width * 2, width * 4):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000)]
        super().__init__(*layers)


def _separable(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """A CPU-friendly depthwise-separable net (~0.1M parameters) that trains from scratch in minutes."""

    def __init__(self):
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                   nn.ReLU(inplace=True)]
        c_in = 32
        for c_out, stride in ((48, 2), (64, 1), (96, 2), (128, 1), (192, 2), (256, 1)):
            layers += _separable(c_in, c_out, stride)
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(c_in, 1000)]
        super().__init__(*layers)


class PlainCNN(nn.Sequential):
    """VGG-style 3×3 convolutions (oneDNN runs them far faster per FLOP than depthwise ones on CPU),
    keeping a 64×48 feature map for the fine detail (wrinkles, hair) that age and gender need."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 192)):
        layers: list[nn.Module] = []
        c_in = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, stride=2 if i == 0 else 1, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, 1000)]
        super().__init__(*layers)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision import models as tvm
        return tvm.get_model(name, weights=None)
    build.__name__ = name
    return build


TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "efficientnet_b0",
                     "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "mobilenet_v3_small",
                     "mobilenet_v3_large", "convnext_tiny")
MODELS: dict[str, Callable[[], nn.Module]] = {"tiny_cnn": TinyCNN, "small_cnn": SmallCNN, "plain_cnn": PlainCNN}
MODELS.update({name: _torchvision(name) for name in TORCHVISION_ARCHS})


class MaskNet(nn.Module):
    """Backbone + head. ``forward(uint8 NHWC) -> (N, 18)`` logits; normalization is inside."""

    def __init__(self, arch: str, backbone: nn.Module, features: int, head: str, preprocess: Preprocess):
        super().__init__()
        self.arch, self.head_type, self.preprocess = arch, head, preprocess
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        # not in the state dict: checkpoints record it as a field, older ones without it load as 1
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        self.backbone = backbone
        if head == "single":
            self.head = nn.Linear(features, labels.NUM_CLASSES)
        else:
            self.head = nn.ModuleDict({k: nn.Linear(features, n) for k, n in labels.HEAD_SIZES.items()})

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalized float (N, 3, H, W)."""
        x = x.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) / self.std

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": (N, 18)}`` plus, for the multi head, ``"mask"``, ``"gender"``, ``"age"`` logits."""
        feats = self.backbone(self.normalize(x))
        if self.head_type == "single":
            return {"logits": self.head(feats)}
        out = {k: self.head[k](feats) for k in labels.HEAD_SIZES}
        lm, lg, la = (torch.log_softmax(out[k].float(), dim=1) for k in ("mask", "gender", "age"))
        # class = mask*6 + gender*3 + age, i.e. row-major over (mask, gender, age)
        joint = lm[:, :, None, None] + lg[:, None, :, None] + la[:, None, None, :]
        out["logits"] = joint.reshape(joint.shape[0], labels.NUM_CLASSES)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(x)["logits"] / self.temperature


def create_model(arch: str, head: str = "single", preprocess: Preprocess | None = None,
                 pretrained: bool = False, weights: str | Path | None = None) -> MaskNet:
    """Build a :class:`MaskNet`. ``pretrained``: the family's standard weights; ``weights``: a local file."""
    if arch not in MODELS and not backbones.is_timm(arch):
        raise ValueError(f"unknown model {arch!r}; expected one of {sorted(MODELS)} or timm/<name> "
                         "(mask-train --list-models)")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEADS)}")
    preprocess = preprocess or Preprocess(128, 96)
    path = None
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
    from_hub = pretrained and path is None
    if backbones.is_timm(arch):
        backbone, classifier, features = backbones.timm_backbone(arch, from_hub)
    elif arch in TORCHVISION_ARCHS:
        backbone, classifier, features = backbones.torchvision_backbone(arch, from_hub)
    else:
        if from_hub:
            raise ValueError(f"no pretrained weights for {arch!r}; --pretrained works with torchvision "
                             f"{sorted(TORCHVISION_ARCHS)} and timm/<name> models (or pass --weights FILE)")
        backbone = MODELS[arch]()
        classifier, features = backbones.split_classifier(backbone)
    if path is not None:
        backbones.load_backbone_weights(backbone, classifier, path)
    return MaskNet(arch, backbone, features, head, preprocess)
