"""Optimizer and LR-scheduler registries.

Schedulers step once per *optimizer update* (not per micro-batch): with ``accum_steps = K`` an
epoch of ``B`` batches is ``ceil(B / K)`` updates, and the schedule is laid out over
``epochs * ceil(B / K)`` updates. ``plateau`` is the exception: it steps once per epoch on val
macro F1.

    opt = create_optimizer(model, cfg)                       # cfg: training.config.OptimConfig
    sched = create_scheduler(opt, cfg, updates_per_epoch=U, epochs=E)
    sched.step_update(); sched.step_epoch(val_f1)

Extending a run (``--resume ... --epochs N``, :func:`extend_restarts`): ``step``, ``multistep``,
``constant`` and ``plateau`` do not depend on the total and simply continue; ``cosine`` re-anneals
from the LR it had reached to its floor over the new remaining updates (a *restart* ``(u0, f0)``
recorded in last.pt, so the first LR after resume is the last one before it and the new last update
ends at the floor); ``onecycle``'s shape is fixed by its total, so extending it is refused.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler

from training.config import OptimConfig


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # biases and norm scales are not decayed: decaying them only hurts (timm's param_groups_weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr),
}


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    if cfg.optimizer == "sgd" and cfg.nesterov and cfg.momentum <= 0:
        raise ValueError("--nesterov needs --momentum > 0")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    return OPTIMIZERS[cfg.optimizer](_param_groups(model, cfg.weight_decay), cfg)


class Schedule:
    """One interface over per-update LambdaLR/OneCycle schedules and the per-epoch plateau one."""

    def __init__(self, sched, per_epoch: bool):
        self.sched, self.per_epoch = sched, per_epoch

    def step_update(self) -> None:
        if self.sched is not None and not self.per_epoch:
            self.sched.step()

    def step_epoch(self, metric: float) -> None:
        if self.sched is not None and self.per_epoch:
            self.sched.step(metric)

    def state_dict(self) -> dict:
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sched is not None:
            self.sched.load_state_dict(state)


def _warmup(factor: Callable[[int], float], warmup: int) -> Callable[[int], float]:
    def f(u: int) -> float:
        if u < warmup:
            return (u + 1) / (warmup + 1)
        return factor(u)
    return f


def _constant(cfg, upe, total, warm):
    return _warmup(lambda u: 1.0, warm)


def _step(cfg, upe, total, warm):
    if cfg.step_size < 1:
        raise ValueError(f"--step-size must be >= 1 epoch, got {cfg.step_size}")
    return _warmup(lambda u: cfg.gamma ** (u // (cfg.step_size * upe)), warm)


def _multistep(cfg, upe, total, warm):
    if not cfg.milestones:
        raise ValueError("--scheduler multistep needs --milestones E1,E2,...")
    marks = sorted(m * upe for m in cfg.milestones)
    return _warmup(lambda u: cfg.gamma ** sum(u >= m for m in marks), warm)


def _cosine(cfg, upe, total, warm, restarts=()):
    floor = cfg.min_lr_ratio
    # a restart (u0, f0): from update u0 anneal from factor f0 down to the floor at ``total``
    segments = [(warm, 1.0), *[(int(u0), float(f0)) for u0, f0 in restarts]]

    def f(u: int) -> float:
        u0, f0 = segments[0]
        for seg in segments[1:]:
            if seg[0] <= u:
                u0, f0 = seg
        t = min(1.0, (u - u0) / max(1, total - u0))
        return floor + (f0 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return _warmup(f, warm)


LAMBDA_SCHEDULES = {"constant": _constant, "step": _step, "multistep": _multistep, "cosine": _cosine}
SCHEDULERS = sorted([*LAMBDA_SCHEDULES, "onecycle", "plateau"])


def lr_factor(cfg: OptimConfig, updates_per_epoch: int, epochs: int, restarts=()) -> Callable[[int], float]:
    """The LR multiplier of a per-update lambda schedule at update ``u`` (not onecycle/plateau)."""
    total = updates_per_epoch * epochs
    warm = int(round(cfg.warmup_epochs * updates_per_epoch))
    if cfg.scheduler == "cosine":
        return _cosine(cfg, updates_per_epoch, total, warm, restarts)
    return LAMBDA_SCHEDULES[cfg.scheduler](cfg, updates_per_epoch, total, warm)


def extend_restarts(cfg: OptimConfig, updates_per_epoch: int, old_epochs: int, new_epochs: int,
                    done_updates: int, restarts=()) -> list:
    """The restarts that continue a schedule laid out for ``old_epochs`` over ``new_epochs`` instead,
    ``done_updates`` into it; ValueError where the schedule cannot be extended (onecycle)."""
    restarts = [list(r) for r in restarts]
    if new_epochs == old_epochs or cfg.scheduler != "cosine" and cfg.scheduler != "onecycle":
        return restarts
    if cfg.scheduler == "onecycle":
        raise ValueError(f"--scheduler onecycle cannot be extended from {old_epochs} to {new_epochs} epochs: its "
                         "whole shape is fixed by the total; resume without --epochs or start a new run")
    warm = int(round(cfg.warmup_epochs * updates_per_epoch))
    if done_updates > warm:   # during warmup the factor does not depend on the total yet
        f0 = lr_factor(cfg, updates_per_epoch, old_epochs, restarts)(done_updates)
        restarts.append([int(done_updates), float(f0)])
    return restarts


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, updates_per_epoch: int,
                     epochs: int, restarts=()) -> Schedule:
    name = cfg.scheduler
    total = updates_per_epoch * epochs
    if name in LAMBDA_SCHEDULES:
        fn = lr_factor(cfg, updates_per_epoch, epochs, restarts)
        return Schedule(lr_scheduler.LambdaLR(optimizer, fn), per_epoch=False)
    if name == "onecycle":
        return Schedule(lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total, 2)), per_epoch=False)
    if name == "plateau":
        return Schedule(lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma,
                                                       patience=cfg.patience), per_epoch=True)
    raise ValueError(f"unknown scheduler {name!r}; expected one of {SCHEDULERS}")


def updates_per_epoch(num_batches: int, accum_steps: int) -> int:
    """Optimizer updates in an epoch: the short last group still updates."""
    return math.ceil(num_batches / accum_steps)
