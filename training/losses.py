"""Loss registry over 18-class logits: cross_entropy, focal, label_smoothing, soft f1, and weighted
combinations parsed from a spec such as ``"focal:0.6,f1:0.4"``.

    criterion = create_criterion("focal:0.6,f1:0.4", gamma=2.0, class_weights=w)
    loss = criterion(logits, targets)

All losses are batch means. For multi-head models the logits are log joint probabilities, for which
cross entropy equals the sum of the three per-head cross entropies.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maskdata import labels


class CrossEntropy(nn.Module):
    """Mean cross entropy; with class weights, PyTorch's weighted mean (divided by the sum of weights)."""

    def __init__(self, weight: torch.Tensor | None = None, **_):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.weight)


class LabelSmoothing(CrossEntropy):
    """Cross entropy against ``(1 - eps) * one_hot + eps / 18`` (the mass is spread over all 18 classes)."""

    def __init__(self, weight=None, smoothing: float = 0.1, **_):
        super().__init__(weight)
        if not 0 <= smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.smoothing)


class Focal(nn.Module):
    """Focal loss ``-w[y] (1 - p_y)^gamma log p_y`` (Lin et al. 2017), normalised like ``cross_entropy``:
    the batch mean without class weights, ``sum(w[y] * l) / sum(w[y])`` with them.

    ``1 - p_y`` is computed as ``-expm1(log p_y)`` and floored at ``FLOOR``: for ``gamma < 1`` the
    derivative of ``(1 - p)^gamma`` is infinite at ``p = 1``, and ``inf * log(1) = nan`` would poison
    the whole batch's gradient. The floor changes the loss by less than ``FLOOR^gamma * |log p|``.
    """

    FLOOR = 1e-12

    def __init__(self, weight=None, gamma: float = 2.0, **_):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        logp = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        one_minus_p = (-torch.expm1(logp)).clamp_min(self.FLOOR)
        loss = -(one_minus_p ** self.gamma) * logp
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (loss * w).sum() / w.sum()


class SoftF1(nn.Module):
    """``1 - mean_c F1_c`` with soft counts from softmax probabilities over all 18 classes."""

    def __init__(self, eps: float = 1e-7, **_):
        super().__init__()
        self.eps = eps

    def forward(self, logits, target):
        p = torch.softmax(logits.float(), dim=1)
        y = F.one_hot(target, p.shape[1]).to(p.dtype)
        tp = (p * y).sum(0)
        fp = (p * (1 - y)).sum(0)
        fn = ((1 - p) * y).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cross_entropy": CrossEntropy, "focal": Focal, "label_smoothing": LabelSmoothing, "f1": SoftF1,
}


def create_loss(name: str, **kw) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name](**kw)


def parse_criterion(spec: str) -> list[tuple[str, float]]:
    """``"focal:0.6,f1:0.4"`` → ``[("focal", 0.6), ("f1", 0.4)]``; a bare name weighs 1."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise ValueError(f"bad criterion spec {spec!r}; expected NAME[:WEIGHT][,NAME[:WEIGHT]...] "
                         f"with NAME in {sorted(LOSSES)}")
    out = []
    for part in parts:
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r} in criterion {spec!r}; expected one of {sorted(LOSSES)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad criterion spec {spec!r}: weight {weight!r} of {name} is not a number") from None
        if not w > 0:
            raise ValueError(f"bad criterion spec {spec!r}: weight of {name} must be > 0")
        out.append((name, w))
    return out


class Combined(nn.Module):
    def __init__(self, terms: list[tuple[nn.Module, float]]):
        super().__init__()
        self.losses = nn.ModuleList(t for t, _ in terms)
        self.weights = [w for _, w in terms]

    def forward(self, logits, target):
        return sum(w * loss(logits, target) for loss, w in zip(self.losses, self.weights))


def create_criterion(spec: str, *, gamma: float = 2.0, smoothing: float = 0.1,
                     class_weights: torch.Tensor | None = None) -> nn.Module:
    terms = parse_criterion(spec)
    mods = [(create_loss(n, weight=class_weights, gamma=gamma, smoothing=smoothing), w) for n, w in terms]
    if len(mods) == 1 and mods[0][1] == 1.0:
        return mods[0][0]
    return Combined(mods)


def balanced_class_weights(targets, num_classes: int = labels.NUM_CLASSES) -> torch.Tensor:
    """Inverse class frequency normalized to mean 1 over the classes present; absent classes get 0."""
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return w * (counts > 0).sum() / w.sum()
