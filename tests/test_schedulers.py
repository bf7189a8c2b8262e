"""Optimizer/scheduler registries: LR shapes per optimizer update, and updates under accumulation."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from training.config import OptimConfig
from training.optim import OPTIMIZERS, SCHEDULERS, create_optimizer, create_scheduler, updates_per_epoch

BASE = OptimConfig(optimizer="sgd", lr=1.0, weight_decay=0.0, warmup_epochs=0.0)


def _lrs(cfg: OptimConfig, upe: int = 4, epochs: int = 5) -> list[float]:
    """LR in effect for each of the ``upe * epochs`` updates."""
    model = torch.nn.Linear(2, 2)
    opt = create_optimizer(model, cfg)
    sched = create_scheduler(opt, cfg, upe, epochs)
    out = []
    for _ in range(upe * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_update()
    return out


def test_cosine_with_linear_warmup_shape():
    cfg = dataclasses.replace(BASE, scheduler="cosine", warmup_epochs=1.0, min_lr_ratio=0.0)
    lrs = _lrs(cfg, upe=4, epochs=5)
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]), f"warmup is not linear: {lrs[:4]}"
    assert lrs[4] == pytest.approx(1.0), f"cosine must start at the peak after warmup, got {lrs[4]}"
    span = 16
    for u in range(4, 20):
        want = 0.5 * (1 + math.cos(math.pi * (u - 4) / span))
        assert lrs[u] == pytest.approx(want, abs=1e-9), f"update {u}: lr {lrs[u]} != cosine {want}"
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])), "cosine must not increase after warmup"


def test_cosine_floor():
    lrs = _lrs(dataclasses.replace(BASE, scheduler="cosine", min_lr_ratio=0.1), upe=2, epochs=50)
    assert min(lrs) >= 0.1 - 1e-9 and lrs[-1] < 0.11, f"floor not respected: min {min(lrs)}, last {lrs[-1]}"


def test_step_decays_every_step_size_epochs():
    lrs = _lrs(dataclasses.replace(BASE, scheduler="step", step_size=2, gamma=0.5), upe=3, epochs=5)
    want = [1.0] * 6 + [0.5] * 6 + [0.25] * 3
    assert lrs == pytest.approx(want), f"step schedule {lrs}"


def test_multistep_decays_at_milestones():
    lrs = _lrs(dataclasses.replace(BASE, scheduler="multistep", milestones=(1, 3), gamma=0.1), upe=2, epochs=4)
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]), f"multistep schedule {lrs}"


def test_onecycle_rises_to_peak_then_anneals():
    lrs = _lrs(dataclasses.replace(BASE, scheduler="onecycle"), upe=10, epochs=4)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0.2 * len(lrs) <= peak <= 0.4 * len(lrs), f"peak at update {peak} of {len(lrs)}"
    assert max(lrs) == pytest.approx(1.0, rel=1e-3) and lrs[0] < 0.1 and lrs[-1] < 1e-3, f"onecycle ends {lrs[0]}, {lrs[-1]}"


def test_plateau_steps_per_epoch_on_f1():
    cfg = dataclasses.replace(BASE, scheduler="plateau", patience=1, gamma=0.5)
    opt = create_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = create_scheduler(opt, cfg, updates_per_epoch=4, epochs=10)
    for _ in range(8):
        sched.step_update()  # per-update calls must not move a per-epoch schedule
    assert opt.param_groups[0]["lr"] == 1.0, "plateau moved on update steps"
    for f1 in (0.5, 0.6, 0.6, 0.6):
        sched.step_epoch(f1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5), f"lr {opt.param_groups[0]['lr']} after 2 flat epochs"


def test_updates_per_epoch_counts_the_short_last_group():
    assert updates_per_epoch(10, 1) == 10
    assert updates_per_epoch(10, 3) == 4, "10 batches in groups of 3 is 3 full updates + 1 short one"
    assert updates_per_epoch(9, 3) == 3


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_reduces_a_quadratic(name):
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    model = torch.nn.Module()
    model.w = w
    opt = create_optimizer(model, OptimConfig(optimizer=name, lr=0.1, weight_decay=0.01))
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < 1.0, f"{name} did not descend: {w.tolist()}"


def test_weight_decay_skips_biases():
    opt = create_optimizer(torch.nn.Linear(3, 2), OptimConfig(weight_decay=0.05))
    decays = sorted((g["weight_decay"], sum(p.ndim for p in g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 1), (0.05, 2)], f"param groups {decays}"


def test_unknown_names_list_valid_ones():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; expected one of \['adam', 'adamw', 'sgd'\]"):
        create_optimizer(model, OptimConfig(optimizer="rmsprop"))
    opt = create_optimizer(model, OptimConfig())
    with pytest.raises(ValueError, match="unknown scheduler 'poly'; expected one of"):
        create_scheduler(opt, OptimConfig(scheduler="poly"), 2, 2)
    assert set(SCHEDULERS) >= {"step", "multistep", "cosine", "plateau", "onecycle"}, SCHEDULERS
