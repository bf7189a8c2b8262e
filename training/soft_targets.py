"""Soft-target (MixUp/CutMix) versions of every loss in ``training.losses``.

    criterion = SoftAware(create_criterion("focal:0.6,f1:0.4", class_weights=w))
    loss = criterion(logits, targets)        # targets: (N,) class indices or (N, 18) probabilities

Each soft form reduces to its hard form on one-hot targets (tests/test_soft_targets.py checks it):

- cross entropy: ``sum_i sum_c w_c q_ic (-log p_ic) / sum_i sum_c w_c q_ic`` (PyTorch's weighted mean);
- label smoothing: the same against ``(1 - eps) q + eps / C``, divided by the unsmoothed weight mass;
- focal: ``mean_i sum_c w_c q_ic (1 - p_ic)^gamma (-log p_ic)``;
- soft F1: the soft counts with ``q`` in place of the one-hot matrix.

For the multi head the logits are log joint probabilities ``log p_mask + log p_gender + log p_age``,
so cross entropy against an 18-class soft target equals the sum of the per-head cross entropies
against its marginals (``training.augment.marginals``): every head gets the consistent target.
"""
from __future__ import annotations

import torch
from torch import nn

from training import losses


def soft_cross_entropy(logits, q, weight=None, smoothing: float = 0.0):
    logp = torch.log_softmax(logits.float(), dim=1)
    q = q.float()
    w = torch.ones(q.shape[1], device=q.device) if weight is None else weight.float()
    target = (1 - smoothing) * q + smoothing / q.shape[1] if smoothing else q
    return -(target * w * logp).sum() / (q * w).sum()


def soft_focal(logits, q, weight=None, gamma: float = 2.0):
    """Focal loss against soft targets, normalised like :class:`training.losses.Focal`: the batch mean
    without class weights, ``sum(q * w * l) / sum(q * w)`` with them (equal to it on one-hot targets);
    ``1 - p`` floored the same way, so ``gamma < 1`` keeps finite gradients at p = 1."""
    logp = torch.log_softmax(logits.float(), dim=1)
    q = q.float()
    one_minus_p = (-torch.expm1(logp)).clamp_min(losses.Focal.FLOOR)
    per_class = -(one_minus_p ** gamma) * logp
    if weight is None:
        return (q * per_class).sum(1).mean()
    qw = q * weight.float()
    return (qw * per_class).sum() / qw.sum()


def soft_f1(logits, q, eps: float = 1e-7):
    p = torch.softmax(logits.float(), dim=1)
    q = q.to(p.dtype)
    tp, fp, fn = (p * q).sum(0), (p * (1 - q)).sum(0), ((1 - p) * q).sum(0)
    return 1 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


def _soft(module: nn.Module, logits, q):
    if isinstance(module, losses.Combined):
        return sum(w * _soft(m, logits, q) for m, w in zip(module.losses, module.weights))
    if isinstance(module, losses.LabelSmoothing):     # before CrossEntropy: it is a subclass
        return soft_cross_entropy(logits, q, module.weight, module.smoothing)
    if isinstance(module, losses.CrossEntropy):
        return soft_cross_entropy(logits, q, module.weight)
    if isinstance(module, losses.Focal):
        return soft_focal(logits, q, module.weight, module.gamma)
    if isinstance(module, losses.SoftF1):
        return soft_f1(logits, q, module.eps)
    raise ValueError(f"loss {type(module).__name__} cannot take soft targets (MixUp/CutMix)")


SOFT_LOSSES = {"cross_entropy", "label_smoothing", "focal", "f1"}


def check_soft_criterion(spec: str) -> None:
    """Refuse, with one line, a --criterion that has a term without a soft-target form."""
    bad = [name for name, _ in losses.parse_criterion(spec) if name not in SOFT_LOSSES]
    if bad:
        raise ValueError(f"--mixup/--cutmix need soft targets, which loss {', '.join(bad)} cannot take; "
                         f"use one of {sorted(SOFT_LOSSES)}")


class SoftAware(nn.Module):
    """Wrap a criterion: index targets go to it unchanged, (N, C) float targets to its soft form."""

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    def forward(self, logits, target):
        if target.is_floating_point():
            return _soft(self.criterion, logits, target)
        return self.criterion(logits, target)
