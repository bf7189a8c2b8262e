"""Knowledge distillation and pseudo-labels: the loss, the packed per-image targets, their mixing.

    loss = (1 - W) * task(logits, y) + W * T^2 * KL(q_T || softmax(logits / T))

with ``q_T = softmax(log q / T)`` the teacher's distribution at temperature T (Hinton et al. 2015:
the ``T^2`` keeps the soft term's gradient scale independent of T). ``task`` is the run's
``--criterion`` (every loss; its soft-target form from ``training.soft_targets`` where the target
is not one-hot). The KL term is a batch mean of per-image KL divergences.

Multi-head students: the KL is taken on the *derived 18-class distribution* (the multi head's
logits are ``log p_mask + log p_gender + log p_age``, so the student's 18-way distribution is the
product of its heads), not per head: the teacher's joint distribution carries the correlations
between heads that per-head marginals would drop, and single- and multi-head students are then
trained on the same quantity.

Each training image carries one packed float target of ``2 * 18`` values: its task target (one-hot
for a labelled image, the teacher's distribution at T = 1 for a pseudo-labelled one) and ``q_T``.
MixUp/CutMix mix both halves with the *same* (N, N) mixing matrix the images got
(:class:`PackedMix`), so a mixed image's teacher target is the same blend of the two teachers'
distributions as its label is of the two labels.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from maskdata import labels
from training.augment import BatchMix
from training.soft_targets import SoftAware

C = labels.NUM_CLASSES


def tempered(logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher log-probabilities → its distribution at temperature T (``softmax(logp / T)``); -inf → 0."""
    return torch.softmax(logp.double() / temperature, dim=1).float()


def kl_teacher_student(logits: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch mean of ``KL(q || softmax(logits / T))``; ``q`` already at temperature T (0 log 0 = 0)."""
    logp_s = torch.log_softmax(logits.float() / temperature, dim=1)
    q = q.float()
    return (torch.xlogy(q, q) - q * logp_s).sum(1).mean()


class DistillLoss(nn.Module):
    """``(1 - W) task + W T^2 KL`` on packed targets (N, 2C) = [task target | teacher q_T].

    A batch whose task targets are all one-hot goes to the criterion's index form, so with W = 0 the
    loss is exactly the plain loss of the same run."""

    def __init__(self, criterion: nn.Module, weight: float, temperature: float):
        super().__init__()
        if not 0 <= weight <= 1:
            raise ValueError(f"--distill-weight must be in [0, 1], got {weight}")
        if not temperature > 0:
            raise ValueError(f"--distill-temperature must be > 0, got {temperature}")
        self.task = SoftAware(criterion)
        self.weight, self.temperature = float(weight), float(temperature)

    def forward(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        target, q = packed[:, :C], packed[:, C:]
        hard = bool((target.max(dim=1).values == 1).all())
        task = self.task(logits, target.argmax(dim=1) if hard else target)
        if self.weight == 0:
            return task
        kl = kl_teacher_student(logits, q, self.temperature)
        return (1 - self.weight) * task + self.weight * self.temperature ** 2 * kl


def pack(task: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(N, C) task targets and (N, C) teacher distributions → (N, 2C) packed targets."""
    return torch.cat([task.float(), q.float()], dim=1)


@dataclasses.dataclass(frozen=True)
class PackedMix:
    """MixUp/CutMix for packed targets: ``training.augment.BatchMix``'s draw (same images, same seed),
    with the targets mixed by the (N, N) matrix that mixing N distinct one-hot labels yields."""
    mix: BatchMix

    @property
    def enabled(self) -> bool:
        return self.mix.enabled

    def __call__(self, x: torch.Tensor, packed: torch.Tensor, epoch: int, step: int):
        n = len(packed)
        # labels 0..N-1 over N classes: the mixed target row i is how much of image j image i holds
        mixed, m = dataclasses.replace(self.mix, num_classes=n)(x, torch.arange(n), epoch, step)
        return mixed, m.to(packed.dtype) @ packed


def wrap(criterion: nn.Module, mix: BatchMix, weight: float, temperature: float) -> tuple[nn.Module, object]:
    """The run's criterion and batch mixing for packed targets."""
    return DistillLoss(criterion, weight, temperature), PackedMix(mix)
