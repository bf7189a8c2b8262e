"""Optional PyTorch backend for the predictor: serve a ``best.pt`` checkpoint without exporting it.

    MASK_BACKEND=torch MASK_CHECKPOINT=runs/x/best.pt bentoml serve
    Predictor("runs/x/best.pt", backend="torch")

Imported only when asked for (``serving.predictor`` loads it lazily), so the default ONNX path
never imports torch. The model runs in eval mode under ``torch.inference_mode()``; on CUDA it uses
channels_last memory and FP16 autocast; with ``precision="bf16"`` on the CPU it runs under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (fast with avx512_bf16 / amx_bf16: docs/benchmarks.md,
"bf16"; 99.90 % of FP32's answers on a trained resnet18). Answers match the ONNX backend's within float tolerance
(tests/test_predictor.py checks it), because both take the same uint8 NHWC batch.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from maskdata.artifact import ModelMetadata, portable_path
from maskdata.preprocess import Preprocess
from training.loop.calibration import calibration_metadata
from training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


def metadata_from_checkpoint(ckpt: dict, path: str) -> ModelMetadata:
    """The same description an exported ONNX model would carry, read from the checkpoint."""
    return ModelMetadata(
        preprocess=Preprocess.from_dict(ckpt["preprocess"]), arch=ckpt["arch"], head=ckpt["head"],
        labels=list(ckpt["labels"]), age_bins=tuple(ckpt["age_bins"]),
        sources=[{"path": portable_path(path), "metrics": ckpt["metrics"], "fingerprint": ckpt["data_fingerprint"]}],
        metrics=dict(ckpt["metrics"]), precision="fp32", calibration=calibration_metadata([ckpt]),
    )


def bf16_fast() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


class TorchBackend:
    """A MaskNet from a checkpoint: uint8 NHWC numpy batch in, (N, 18) probabilities out."""

    name = "torch"

    def __init__(self, checkpoint: Any, device: str | None = None, precision: str = "auto"):
        path = str(checkpoint)
        ckpt = load_checkpoint(path)  # FileNotFoundError / ValueError with a one-line reason
        self.metadata = metadata_from_checkpoint(ckpt, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model_from_checkpoint(ckpt).eval().to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.bf16 = precision == "bf16" and self.device.type == "cpu"
        if self.bf16 and not bf16_fast():
            log.warning("bf16 on a CPU without avx512_bf16/amx_bf16 is emulated and slower than FP32")
        self.providers = [f"torch:{self.device.type}" + (":bf16" if self.bf16 else "")]

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        dtype = torch.bfloat16 if self.bf16 else torch.float16
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype,
                                                    enabled=self.device.type == "cuda" or self.bf16):
            logits = self.model(x)
        # softmax in float32 even under autocast, so probabilities sum to 1 within float error
        return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32)
