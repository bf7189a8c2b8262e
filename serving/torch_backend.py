"""Optional PyTorch backend for the predictor: serve a ``best.pt`` checkpoint without exporting it.

    MASK_BACKEND=torch MASK_CHECKPOINT=runs/x/best.pt bentoml serve
    Predictor("runs/x/best.pt", backend="torch")

Imported only when asked for (``serving.predictor`` loads it lazily), so the default ONNX path
never imports torch. The model runs in eval mode under ``torch.inference_mode()``; on CUDA it uses
channels_last memory and FP16 autocast. Answers match the ONNX backend's within float tolerance
(tests/test_predictor.py checks it), because both take the same uint8 NHWC batch.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from maskdata.artifact import ModelMetadata
from maskdata.preprocess import Preprocess
from training.calibration import calibration_metadata
from training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


def metadata_from_checkpoint(ckpt: dict, path: str) -> ModelMetadata:
    """The same description an exported ONNX model would carry, read from the checkpoint."""
    return ModelMetadata(
        preprocess=Preprocess.from_dict(ckpt["preprocess"]), arch=ckpt["arch"], head=ckpt["head"],
        labels=list(ckpt["labels"]), age_bins=tuple(ckpt["age_bins"]),
        sources=[{"path": path, "metrics": ckpt["metrics"], "fingerprint": ckpt["data_fingerprint"]}],
        metrics=dict(ckpt["metrics"]), precision="fp32", calibration=calibration_metadata([ckpt]),
    )


class TorchBackend:
    """A MaskNet from a checkpoint: uint8 NHWC numpy batch in, (N, 18) probabilities out."""

    name = "torch"

    def __init__(self, checkpoint: Any, device: str | None = None):
        path = str(checkpoint)
        ckpt = load_checkpoint(path)  # FileNotFoundError / ValueError with a one-line reason
        self.metadata = metadata_from_checkpoint(ckpt, path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model_from_checkpoint(ckpt).eval().to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.providers = [f"torch:{self.device.type}"]

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                    enabled=self.device.type == "cuda"):
            logits = self.model(x)
        # softmax in float32 even under autocast, so probabilities sum to 1 within float error
        return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32)
