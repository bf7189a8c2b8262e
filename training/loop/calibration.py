"""Calibrated confidence: one temperature fitted on validation logits, ECE, a reliability diagram.

    t = fit_temperature(logits, y)              # minimises the NLL of softmax(logits / t)
    result = calibrate_run(out_dir, logits, y)  # after training: fit, ECE before/after, reliability.png

The temperature is stored in ``best.pt`` (``temperature``, ``metrics.ece_before/ece_after``,
``uncertain_below``); :class:`training.models.MaskNet` divides its logits by it, so the exported
ONNX graph and the PyTorch parity reference both give calibrated probabilities. Ensembles: every
member carries the temperature fitted on *its own* validation split (for k-fold, its held-out
fold); the averaged output is then checked on labelled images given to ``mask-export``
(ECE in the export report), never on data a member was calibrated on. The ECE itself (NumPy, no torch)
is ``maskdata.metrics.ece``, shared with ``mask-export``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskdata.metrics import ECE_BINS, ece, reliability

log = logging.getLogger(__name__)

# Serving answers ``uncertain: true`` below this calibrated top probability (MASK_UNCERTAIN_BELOW overrides).
DEFAULT_UNCERTAIN_BELOW = 0.5
_T_RANGE = (0.05, 20.0)


def fit_temperature(logits, y, iters: int = 200) -> float:
    """The T > 0 minimising mean cross-entropy of ``logits / T`` (L-BFGS on log T, float64)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(z) == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.detach().exp())
    if not math.isfinite(value):
        return 1.0
    return float(min(max(value, _T_RANGE[0]), _T_RANGE[1]))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def save_reliability_png(probs_before, probs_after, y, path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskdata.io import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    centers = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for probs, name, color in ((probs_before, "before", "tab:red"), (probs_after, "after", "tab:blue")):
        _, acc, count = reliability(probs, y)
        keep = count > 0
        ax.plot(centers[keep], acc[keep], "o-", color=color, label=f"{name} (ECE {ece(probs, y):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=title or "reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def calibrate_run(out_dir: Path, logits, y) -> dict:
    """Fit T on the best epoch's validation logits; update best.pt; write reliability.png."""
    from training.checkpoint import load_checkpoint, save_checkpoint

    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
    t = fit_temperature(logits, y)
    before, after = softmax(logits), softmax(logits, t)
    result = {"temperature": t, "ece_before": ece(before, y), "ece_after": ece(after, y),
              "uncertain_below": DEFAULT_UNCERTAIN_BELOW}
    best = out_dir / "best.pt"
    ckpt = load_checkpoint(best)
    ckpt["temperature"], ckpt["uncertain_below"] = t, DEFAULT_UNCERTAIN_BELOW
    ckpt["metrics"] = dict(ckpt["metrics"], temperature=t, ece_before=result["ece_before"],
                           ece_after=result["ece_after"])
    save_checkpoint(best, ckpt)
    save_reliability_png(before, after, y, out_dir / "reliability.png",
                         f"epoch {ckpt['epoch']}: T = {t:.3f}")
    log.info("calibration: temperature %.4f, val ECE %.4f -> %.4f", t, result["ece_before"], result["ece_after"])
    return result


def calibrate_best(model, loader, y_val, out_dir: Path, env) -> dict:
    """The trainer's end-of-run step: best.pt's weights on the validation loader (every rank takes
    part under DDP), then :func:`calibrate_run` on rank 0. Returns {} on other ranks or without best.pt."""
    from training.loop import engine
    from training.checkpoint import load_checkpoint, unwrap

    best = out_dir / "best.pt"
    if not best.is_file():
        return {}
    net = unwrap(model)
    net.load_state_dict(load_checkpoint(best)["state_dict"])
    # FP32 even when the run trained under autocast: the temperature is applied to the FP32 model that
    # export writes, so it is fitted on that model's logits
    _, probs = engine.evaluate(net, loader, y_val, device=env.device, amp_dtype=None, d=env.ranks, progress=False)
    if not env.ranks.main:
        return {}
    # log of the softmax differs from the logits by a per-row constant, which softmax(z / T) ignores
    logits = np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    return calibrate_run(out_dir, logits, y_val)


def calibration_metadata(ckpts: list[dict]) -> dict:
    """What an exported artifact records: each member's temperature (applied inside the graph), the
    members' validation ECE before/after, and the ``uncertain`` threshold serving applies."""
    temps = [float(c.get("temperature", 1.0)) for c in ckpts]
    out = {"temperatures": temps, "calibrated": all("temperature" in c for c in ckpts),
           "uncertain_below": float(max(c.get("uncertain_below", DEFAULT_UNCERTAIN_BELOW) for c in ckpts))}
    for k in ("ece_before", "ece_after"):
        values = [c["metrics"][k] for c in ckpts if k in (c.get("metrics") or {})]
        if len(values) == len(ckpts):
            out[f"member_{k}"] = [float(v) for v in values]
    return out
