"""The BentoML gallery pattern, for ``bench.rest`` to compare against: the service shape
BentoML's examples use (bentoml/BentoResnet and friends) — a ``batchable=True`` API on PIL images,
so BentoML's adaptive dispatcher forms the batches, and the model in torch eager. Same checkpoint
and the same artifact preprocessing as the real service; not part of the product.

    GALLERY_CHECKPOINT=runs/x/best.pt bentoml serve bench.gallery_service:Gallery --port 3001
    curl -F images=@photo.jpg http://127.0.0.1:3001/predict
"""
from __future__ import annotations

import os

import bentoml
import numpy as np
from PIL import Image


@bentoml.service(name="gallery", traffic={"timeout": 60})
class Gallery:
    def __init__(self) -> None:
        import torch

        from maskdata.preprocess import Preprocess
        from training.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(os.environ["GALLERY_CHECKPOINT"])
        self.torch = torch
        self.model = model_from_checkpoint(ckpt).eval()
        self.preprocess = Preprocess.from_dict(ckpt["preprocess"])

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def predict(self, images: list[Image.Image]) -> list[dict]:
        batch = np.stack([self.preprocess(im) for im in images])
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(self.torch.from_numpy(batch)), dim=1).numpy()
        return [{"class": int(p.argmax()), "confidence": float(p.max())} for p in probs]
