"""Serving knobs (docs/serving.md): a pydantic-settings ``BaseSettings`` with ``env_prefix="MASK_"``,
the one place every serving default is written, and :data:`JOB_DEFAULTS`, ``mask-submit``'s own.

Every limit the REST service enforces and every choice the predictor makes at load time can be
changed without touching code, e.g. ``MASK_MAX_UPLOAD_BYTES=2000000 bentoml serve``.
Nothing is read at import time. :func:`get_settings` is the one reader of ``MASK_*``, called once
per process where it starts — the service's declaration (:mod:`serving.service`), ``mask-submit``'s
``main`` — and the :class:`Settings` it builds is handed down to everything else (the guard, the
predictor, the task queue, both submission engines, the job processes and Ray actors, which get it
as field values); a consumer given none uses :meth:`Settings.defaults`, never the environment. ``Settings.from_env(mapping)`` reads only the mapping;
both turn a bad value into a one-line ``ValueError`` naming the variable (an empty value means the
default). The table below is checked against the fields by tests/test_settings.py.

| variable | default | meaning |
| --- | --- | --- |
| ``MASK_MODEL`` | ``mask-classifier:latest`` | BentoML store tag, ``.onnx`` file, or model folder |
| ``MASK_BACKEND`` | ``onnx`` | ``onnx`` or ``torch`` (then ``MASK_CHECKPOINT`` is the model) |
| ``MASK_CHECKPOINT`` | – | ``best.pt`` for the PyTorch backend |
| ``MASK_PROVIDERS`` | auto | comma list of ONNX Runtime providers, e.g. ``CPUExecutionProvider`` |
| ``MASK_PRECISION`` | ``auto`` | ``auto`` (the FP16 sibling ``model.fp16.onnx`` on a GPU when exported, else FP32), ``fp32``, ``fp16``, ``int8``, ``bf16`` (PyTorch backend on a ``.pt`` checkpoint: CPU bf16 autocast) |
| ``MASK_TENSORRT`` | ``0`` | ``1`` puts TensorRT (FP16, engine cache) before CUDA when a GPU is present |
| ``MASK_TRT_CACHE`` | ``~/.cache/mask-classifier/trt`` | TensorRT engine cache folder |
| ``MASK_THREADS`` | ``0`` | ONNX Runtime intra-op threads on CPU (0: one per physical core) |
| ``MASK_ORT_SPINNING`` | ``0`` | ``1`` lets ONNX Runtime's intra-op threads spin between ops (``session.intra_op.allow_spinning``); off by default: spinning threads take the cores decode workers need (docs/benchmarks.md) |
| ``MASK_DECODE_NICE`` | ``10`` | ``mask-submit``'s decode workers run this much nicer than the model (0–19; 0: same priority), so ONNX Runtime's threads are not preempted by decoding and decoding fills their idle gaps (Linux; docs/benchmarks.md, thread budget) |
| ``MASK_MAX_UPLOAD_BYTES`` | ``10485760`` | largest accepted file, and largest image inside a ``/submission`` archive (larger: HTTP 413) |
| ``MASK_MAX_PIXELS`` | ``40000000`` | largest accepted width × height (decompression bombs) |
| ``MASK_MAX_ARCHIVE_BYTES`` | ``2147483648`` | largest ``/submission`` archive upload |
| ``MASK_MAX_ARCHIVE_TOTAL_BYTES`` | ``4294967296`` | most uncompressed bytes read from one archive (zip bombs) |
| ``MASK_MAX_ARCHIVE_MEMBERS`` | ``200000`` | most members in one archive |
| ``MASK_MAX_FILES`` | ``64`` | most images in one ``/predict_batch`` request |
| ``MASK_MAX_INFER_BYTES`` | ``16777216`` | largest ``POST /infer`` JSON body |
| ``MASK_MAX_BODY_BYTES`` | ``1048576`` | largest body of any other POST/PUT route (``/model``, ``/submission/cancel``, ...) |
| ``MASK_API_KEY`` | – | when set, every route but ``/readyz``, ``/livez``, ``/metrics`` needs ``Authorization: Bearer <key>`` |
| ``MASK_BATCHING`` | ``1`` | ``0``: every request is its own model call (no dynamic batching) |
| ``MASK_MAX_BATCH_SIZE`` | ``32`` | dynamic batching: most images per model call (at least 2); a full batch goes at once |
| ``MASK_BATCH_WAIT_MS`` | ``2`` | dynamic batching: a batch goes when its oldest request has waited this long |
| ``MASK_MAX_QUEUE`` | ``256`` | dynamic batching: most images waiting per worker (more: HTTP 503 + Retry-After) |
| ``MASK_UNCERTAIN_BELOW`` | the artifact's | answer ``uncertain: true`` below this calibrated top probability (0..1) |
| ``MASK_WORKERS`` | ``1`` | BentoML worker processes |
| ``MASK_TASKS_DIR`` | – (a temp folder) | where ``/submission`` tasks keep their uploads, status and results (default ``<temp dir>/mask-classifier-tasks-<uid>``); every worker of a service must see the same folder (serving/tasks.py) |
| ``MASK_TASK_RETENTION_S`` | ``86400`` | seconds a finished ``/submission`` task (its result, or a failed one's inputs) is kept |
| ``MASK_TASK_JOBS`` | ``1`` | ``/submission`` job processes one worker runs at once (more tasks wait their turn) |
| ``MASK_TASK_ATTEMPTS`` | ``3`` | job processes one ``/submission`` task may start; one more interruption (a restart, a stopped worker) fails it with the reason |
| ``MASK_ASPECT`` | – (as recorded) | ``stretch``, ``crop`` or ``pad``: override the model's recorded aspect policy (docs/serving.md) |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Mapping

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from maskdata.artifact import STORE_NAME
from maskdata.io import cpu_workers
from maskdata.preprocess import DEFAULT_MAX_PIXELS
from serving.archive import ArchiveLimits

DEFAULT_MODEL = f"{STORE_NAME}:latest"
BACKENDS = ("onnx", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "bf16")   # bf16: PyTorch backend, CPU autocast
MAX_NICE = 19   # the largest nice value on Linux (and POSIX systems generally)
ENV_PREFIX = "MASK_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
ASPECTS = ("", "stretch", "crop", "pad")       # "" = the policy recorded in the model


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def check_nice(value: int, name: str = "decode nice") -> int:
    """A nice increment 0..MAX_NICE, or a one-line ValueError naming ``name``."""
    if not 0 <= value <= MAX_NICE:
        raise ValueError(f"{name} must be 0..{MAX_NICE}, got {value}")
    return value


@dataclass(frozen=True)
class JobDefaults:
    """``mask-submit``'s defaults (command-line flags, not environment variables): the local and the
    Ray engine, :class:`serving.local_engine.SubmitOptions` and the argparse parser all read these."""

    batch_size: int = 64          # images per model call, the grid of the job
    worker_kind: str = "thread"   # decode in threads (PIL releases the GIL) or processes
    on_error: str = "fail"        # fail | skip
    max_workers: int = 8          # beyond that the model, not decoding, is the bottleneck

    def workers(self) -> int:
        """One decode worker per core, up to ``max_workers``."""
        return cpu_workers(at_least=1, at_most=self.max_workers)


JOB_DEFAULTS = JobDefaults()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True,
                                      extra="forbid")

    model: str = DEFAULT_MODEL
    backend: str = "onnx"
    checkpoint: str = ""
    providers: Annotated[tuple[str, ...], NoDecode] = ()   # empty: choose by availability
    precision: str = "auto"
    tensorrt: bool = False
    trt_cache: str = str(Path.home() / ".cache" / "mask-classifier" / "trt")
    threads: int = Field(0, ge=0)
    ort_spinning: bool = False
    decode_nice: int = Field(10, ge=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)   # maskdata's decoder has the same default
    max_archive_bytes: int = Field(2 * 1024 ** 3, ge=1)
    max_archive_total_bytes: int = Field(4 * 1024 ** 3, ge=1)
    max_archive_members: int = Field(200_000, ge=1)
    max_files: int = Field(64, ge=1)
    max_infer_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    api_key: str = Field("", repr=False)
    batching: bool = True
    max_batch_size: int = Field(32, ge=2)
    batch_wait_ms: int = Field(2, ge=0)
    max_queue: int = Field(256, ge=1)
    uncertain_below: float | None = Field(None, ge=0.0, le=1.0)   # None: the threshold recorded in the artifact
    workers: int = Field(1, ge=1)
    aspect: str = ""   # MASK_ASPECT: override the recorded aspect policy
    tasks_dir: str = ""   # empty: serving.tasks.default_root()
    task_retention_s: int = Field(86_400, ge=1)
    task_jobs: int = Field(1, ge=1)
    task_attempts: int = Field(3, ge=1)

    @field_validator("model", "checkpoint", "trt_cache", "api_key", "tasks_dir", mode="before")
    @classmethod
    def _strip(cls, value):
        return value.strip() if isinstance(value, str) else value

    @field_validator("backend", "precision", "aspect", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("providers", mode="before")
    @classmethod
    def _comma_list(cls, value):
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("tensorrt", "batching", "ort_spinning", mode="before")
    @classmethod
    def _bool(cls, value, info: ValidationInfo):
        if not isinstance(value, str):
            return value
        raw = value.strip().lower()
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise ValueError(f"{env_name(info.field_name)}={raw!r} is not a boolean; "
                         f"expected 1/0, true/false, yes/no, on/off")

    @field_validator("threads", "decode_nice", "max_upload_bytes", "max_pixels", "max_archive_bytes",
                     "max_archive_total_bytes", "max_archive_members", "max_files", "max_infer_bytes", "max_body_bytes", "max_batch_size",
                     "batch_wait_ms", "max_queue", "workers", "task_retention_s", "task_jobs", "task_attempts", mode="before")
    @classmethod
    def _int(cls, value, info: ValidationInfo):
        name = env_name(info.field_name)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"{name}={value.strip()!r} is not an integer") from None
        minimum = next((m.ge for m in cls.model_fields[info.field_name].metadata if hasattr(m, "ge")), None)
        if isinstance(value, int) and minimum is not None and value < minimum:
            raise ValueError(f"{name}={value} must be at least {minimum}")
        return value

    @model_validator(mode="after")
    def _choices(self):
        if self.decode_nice > MAX_NICE:
            raise ValueError(f"{env_name('decode_nice')}={self.decode_nice} must be at most {MAX_NICE} "
                             "(the largest nice value)")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {sorted(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {sorted(PRECISIONS)}")
        if self.max_queue < self.max_batch_size:
            raise ValueError(f"MASK_MAX_QUEUE={self.max_queue} must be at least MASK_MAX_BATCH_SIZE="
                             f"{self.max_batch_size}")
        if self.aspect not in ASPECTS:
            raise ValueError(f"unknown aspect policy {self.aspect!r} (MASK_ASPECT); expected one of {list(ASPECTS[1:])}")
        return self

    @field_validator("uncertain_below", mode="before")
    @classmethod
    def _fraction(cls, value, info: ValidationInfo):
        if not isinstance(value, str):
            return value
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{env_name(info.field_name)}={value.strip()!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{env_name(info.field_name)}={value} must be between 0 and 1")
        return value

    @property
    def model_source(self) -> str:
        """What the predictor loads: the checkpoint for the torch backend, else the ONNX model."""
        if self.backend == "torch":
            if not self.checkpoint:
                raise ValueError("MASK_BACKEND=torch needs MASK_CHECKPOINT=path/to/best.pt")
            return self.checkpoint
        return self.model

    @property
    def archive_limits(self) -> ArchiveLimits:
        """The ``/submission`` archive limits: one image at most ``max_upload_bytes``, like an upload."""
        return ArchiveLimits(max_members=self.max_archive_members, max_total_bytes=self.max_archive_total_bytes,
                             max_member_bytes=self.max_upload_bytes)

    def replace(self, **changes) -> "Settings":
        """A validated copy with ``changes`` (field names) applied."""
        return _one_line(lambda: type(self).model_validate({**self.model_dump(), **changes}))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``env`` (default: ``os.environ``); a bad value is one ``ValueError`` line."""
        import os

        if (env if env is not None else os.environ).get("MASK_MAX_LATENCY_MS", "").strip():
            raise ValueError("MASK_MAX_LATENCY_MS is retired (it tuned BentoML's adaptive dispatcher, no longer "
                             "used); set MASK_BATCH_WAIT_MS (batching window) and MASK_MAX_QUEUE (queue bound)")
        if env is None:
            return _one_line(cls)
        values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                  if k.upper().startswith(ENV_PREFIX) and v.strip() and k[len(ENV_PREFIX):].lower() in cls.model_fields}
        return _one_line(lambda: _FromMapping.model_validate(values))


    @classmethod
    def defaults(cls) -> "Settings":
        """The documented defaults, whatever the environment holds."""
        return cls.from_fields({})

    @classmethod
    def from_fields(cls, values: Mapping[str, object]) -> "Settings":
        """Settings from field values (``model_dump()``'s keys) only, never the environment: how a
        ``/submission`` job process gets exactly the settings of the service that queued it."""
        return _one_line(lambda: _FromMapping.model_validate(dict(values)))

    def to_fields(self) -> dict:
        """These settings as JSON field values for another process (:meth:`from_fields` reads them
        back): a job's ``task.json``, a Ray actor's constructor. Never the API key."""
        return self.model_dump(mode="json", exclude={"api_key"})


class _FromMapping(Settings):
    """Settings from a given mapping only. pydantic-settings fills every field a mapping lacks from
    ``os.environ``, so ``Settings.from_env({})`` would see the process's ``MASK_*``, not the defaults."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def get_settings() -> Settings:
    """The settings of this process: ``MASK_*`` read from the environment at this call. Only a
    process's entry point calls it (see the module docstring); tests/test_settings.py holds that."""
    return Settings.from_env()


def _one_line(build):
    try:
        return build()
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(str(first["msg"]).removeprefix("Value error, ")) from None
