"""Serving knobs, read from the environment once at start-up (SPEC §5).

Every limit the REST service enforces and every choice the predictor makes at load time can be
changed without touching code, e.g. ``MASK_MAX_UPLOAD_BYTES=2000000 bentoml serve``.

| variable | default | meaning |
| --- | --- | --- |
| ``MASK_MODEL`` | ``mask-classifier:latest`` | BentoML store tag, ``.onnx`` file, or model folder |
| ``MASK_BACKEND`` | ``onnx`` | ``onnx`` or ``torch`` (then ``MASK_CHECKPOINT`` is the model) |
| ``MASK_CHECKPOINT`` | – | ``best.pt`` for the PyTorch backend |
| ``MASK_PROVIDERS`` | auto | comma list of ONNX Runtime providers, e.g. ``CPUExecutionProvider`` |
| ``MASK_PRECISION`` | ``auto`` | ``auto`` (the FP16 sibling ``model.fp16.onnx`` on a GPU when exported, else FP32), ``fp32``, ``fp16``, ``int8`` |
| ``MASK_TENSORRT`` | ``0`` | ``1`` puts TensorRT (FP16, engine cache) before CUDA when a GPU is present |
| ``MASK_TRT_CACHE`` | ``~/.cache/mask-classifier/trt`` | TensorRT engine cache folder |
| ``MASK_THREADS`` | ``0`` | ONNX Runtime intra-op threads on CPU (0: one per physical core) |
| ``MASK_MAX_UPLOAD_BYTES`` | ``10485760`` | largest accepted file (larger: HTTP 413) |
| ``MASK_MAX_PIXELS`` | ``40000000`` | largest accepted width × height (decompression bombs) |
| ``MASK_MAX_ARCHIVE_BYTES`` | ``2147483648`` | largest ``/submission`` archive |
| ``MASK_MAX_FILES`` | ``64`` | most images in one ``/predict_batch`` request |
| ``MASK_BATCHING`` | ``1`` | ``0``: every request is its own model call (no adaptive batching) |
| ``MASK_MAX_BATCH_SIZE`` | ``32`` | adaptive batching: most images per model call (at least 2) |
| ``MASK_MAX_LATENCY_MS`` | ``1000`` | adaptive batching: latency budget; requests that cannot meet it get 503 |
| ``MASK_WORKERS`` | ``1`` | BentoML worker processes |
| ``MASK_ASPECT`` | – (as recorded) | ``stretch``, ``crop`` or ``pad``: override the model's recorded aspect policy (docs/serving.md) |
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "mask-classifier:latest"
BACKENDS = ("onnx", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
ASPECTS = ("", "stretch", "crop", "pad")       # "" = the policy recorded in the model


def _int(env: dict, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _bool(env: dict, name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; expected 1/0, true/false, yes/no, on/off")


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    backend: str = "onnx"
    checkpoint: str = ""
    providers: tuple[str, ...] = ()            # empty: choose by availability
    precision: str = "auto"
    tensorrt: bool = False
    trt_cache: str = str(Path.home() / ".cache" / "mask-classifier" / "trt")
    threads: int = 0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_archive_bytes: int = 2 * 1024 ** 3
    max_files: int = 64
    batching: bool = True
    max_batch_size: int = 32
    max_latency_ms: int = 1000
    workers: int = 1
    aspect: str = ""

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {sorted(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {sorted(PRECISIONS)}")
        if self.aspect not in ASPECTS:
            raise ValueError(f"unknown aspect policy {self.aspect!r} (MASK_ASPECT); expected one of {list(ASPECTS[1:])}")

    @property
    def model_source(self) -> str:
        """What the predictor loads: the checkpoint for the torch backend, else the ONNX model."""
        if self.backend == "torch":
            if not self.checkpoint:
                raise ValueError("MASK_BACKEND=torch needs MASK_CHECKPOINT=path/to/best.pt")
            return self.checkpoint
        return self.model

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        d = cls()
        providers = tuple(p.strip() for p in env.get("MASK_PROVIDERS", "").split(",") if p.strip())
        return cls(
            model=env.get("MASK_MODEL", "").strip() or d.model,
            backend=env.get("MASK_BACKEND", "").strip().lower() or d.backend,
            checkpoint=env.get("MASK_CHECKPOINT", "").strip(),
            providers=providers,
            precision=env.get("MASK_PRECISION", "").strip().lower() or d.precision,
            tensorrt=_bool(env, "MASK_TENSORRT"),
            trt_cache=env.get("MASK_TRT_CACHE", "").strip() or d.trt_cache,
            threads=_int(env, "MASK_THREADS", d.threads),
            max_upload_bytes=_int(env, "MASK_MAX_UPLOAD_BYTES", d.max_upload_bytes, 1),
            max_pixels=_int(env, "MASK_MAX_PIXELS", d.max_pixels, 1),
            max_archive_bytes=_int(env, "MASK_MAX_ARCHIVE_BYTES", d.max_archive_bytes, 1),
            max_files=_int(env, "MASK_MAX_FILES", d.max_files, 1),
            batching=_bool(env, "MASK_BATCHING", d.batching),
            max_batch_size=_int(env, "MASK_MAX_BATCH_SIZE", d.max_batch_size, 2),
            max_latency_ms=_int(env, "MASK_MAX_LATENCY_MS", d.max_latency_ms, 1),
            workers=_int(env, "MASK_WORKERS", d.workers, 1),
            aspect=env.get("MASK_ASPECT", "").strip().lower(),
        )
