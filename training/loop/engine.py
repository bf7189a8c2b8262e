"""One training epoch and one evaluation pass; they return numbers and never print.

The update order (STYLE.md "Training loop"): ``loss / group_size`` → ``scaler.scale(loss).backward()``
→ on an update step ``scaler.unscale_`` → clip → ``scaler.step`` → ``scaler.update`` →
``zero_grad(set_to_none=True)`` → per-update scheduler step. The last, shorter group of an epoch
still updates, and its micro-batch losses are divided by *its* size, so every update applies the
mean gradient of the micro-batches it saw.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from maskdata import labels, metrics
from training import dist
from training.checkpoint import unwrap


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(model, loader, criterion, optimizer, schedule, scaler, *, device: torch.device,
                    accum_steps: int = 1, clip_grad: float = 0.0, amp_dtype: torch.dtype | None = None,
                    d: dist.Dist = dist.Dist(), desc: str = "train", progress: bool = True,
                    batch_transform=None) -> dict:
    """Train for one pass over ``loader``; returns ``{"loss", "images", "updates", "seconds", "img_s"}``.

    ``batch_transform(x, y, step) -> (x, y)`` (MixUp/CutMix) runs on the CPU batch before the model."""
    model.train()
    n = len(loader)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, images, updates = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not (progress and d.main))
    for i, (x, y, _) in enumerate(bar):
        group_size = min(accum_steps, n - (i // accum_steps) * accum_steps)
        need_update = (i + 1) % accum_steps == 0 or i + 1 == n
        if batch_transform is not None:
            x, y = batch_transform(x, y, i)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # gradients are only all-reduced on the micro-batch that completes a group
        sync = contextlib.nullcontext() if need_update or not isinstance(model, DDP) else model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                loss = criterion(model(x), y)
            scaler.scale(loss / group_size).backward()
        if need_update:
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step_update()
            updates += 1
        loss_sum += float(loss.detach()) * len(y)
        images += len(y)
        if progress and d.main:
            bar.set_postfix(loss=f"{loss_sum / images:.4f}", img_s=f"{images * d.world / (time.perf_counter() - t0):.0f}")
    loss_sum, images = dist.all_sum([loss_sum, float(images)], d)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / max(images, 1), "images": int(images), "updates": updates, "seconds": seconds,
            "img_s": images / max(seconds, 1e-9)}


def sync_buffers(model: torch.nn.Module, d: dist.Dist) -> None:
    """Give every rank rank 0's BatchNorm statistics, so all shards are evaluated by the same model."""
    if d.enabled:
        for b in unwrap(model).buffers():
            torch.distributed.broadcast(b, 0)


def evaluate(model, loader, y_true: np.ndarray, *, device: torch.device, amp_dtype: torch.dtype | None = None,
             d: dist.Dist = dist.Dist(), progress: bool = True) -> tuple[dict, np.ndarray]:
    """Metrics on the standard 18 classes plus the (N, 18) probabilities in dataset order.

    ``y_true`` are the validation labels on the standard 30/60 age bins. Under DDP each rank scores
    a disjoint shard and the logits are gathered, so the metrics cover every image exactly once.
    """
    net = unwrap(model)
    sync_buffers(net, d)
    net.eval()
    idx_parts, logit_parts = [], []
    with torch.inference_mode():
        for x, _, idx in tqdm(loader, desc="val", unit="batch", leave=False, disable=not (progress and d.main)):
            with autocast(device, amp_dtype):
                logits = net(x.to(device, non_blocking=True))
            idx_parts.append(idx.numpy())
            logit_parts.append(logits.float().cpu().numpy())
    local = (np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64),
             np.concatenate(logit_parts) if logit_parts else np.zeros((0, labels.NUM_CLASSES), np.float32))
    gathered = dist.all_gather(local, d)
    idx = np.concatenate([g[0] for g in gathered])
    logits = np.concatenate([g[1] for g in gathered])
    order = np.argsort(idx, kind="stable")
    logits = torch.from_numpy(logits[order])
    assert len(logits) == len(y_true), f"evaluated {len(logits)} of {len(y_true)} images"
    target = torch.as_tensor(y_true, dtype=torch.long)
    probs = torch.softmax(logits, dim=1).numpy()
    out = metrics.report(y_true, probs.argmax(1))
    out["loss"] = float(F.cross_entropy(logits, target)) if len(target) else 0.0
    out["confusion"] = metrics.confusion(y_true, probs.argmax(1))
    out["log_probs"] = torch.log_softmax(logits, dim=1).numpy()   # val_predictions.csv: what a teacher needs
    return out, probs
