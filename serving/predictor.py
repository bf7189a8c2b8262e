"""The framework-free inference core: load artifact → preprocess → infer → decode (no HTTP, no torch).

The REST service, the ``/submission`` task and ``mask-submit`` are thin layers over
:class:`Predictor`, so one image gets one answer everywhere::

    from serving.predictor import Predictor
    p = Predictor("mask-classifier:latest")          # or "path/to/model.onnx", or a model folder
    p.predict(["photo.jpg"])                          # -> [{"class": 4, "mask": "wear", ...}]
    python -m serving.predictor MODEL IMAGE...        # same, from the shell

Everything the predictor needs (input size, resize filter, label table) comes from the ONNX file's
metadata. ONNX Runtime providers are tried in the order TensorRT (opt-in) → CUDA → CPU, CUDA ones
only when a CUDA device is actually present: the GPU wheel *lists* CUDA on machines without one and
would log a loud load failure on every start. The provider that ended up active is read back from
``session.get_providers()`` and reported, never assumed.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from maskdata import labels
from maskdata.extras import install_hint
from maskdata.artifact import MODEL_FILE, STORE_NAME, ModelMetadata, portable_paths, variant_path
from maskdata.cpu import int8_on_this_cpu
from maskdata.preprocess import ImageError, ImageTooLarge, Preprocess  # noqa: F401  (errors re-exported for callers)
from serving.settings import JOB_DEFAULTS, Settings

log = logging.getLogger(__name__)

SPINNING_KEY = "session.intra_op.allow_spinning"   # ORT's documented session config key
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def cuda_device_count() -> int:
    """Number of CUDA devices the driver sees (0 without a driver), without importing torch."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def choose_providers(available: Sequence[str], *, gpu: bool, tensorrt: bool = False,
                     trt_cache: str = "") -> list:
    """Provider list for ``InferenceSession``: TensorRT (opt-in) → CUDA → CPU, GPU ones only with a GPU."""
    chosen: list = []
    if gpu and tensorrt and TENSORRT in available:
        Path(trt_cache).mkdir(parents=True, exist_ok=True)
        chosen.append((TENSORRT, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": trt_cache}))
    if gpu and CUDA in available:
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


def resolve_model_path(model: Any) -> Path:
    """A ``.onnx`` path, a model folder holding ``model.onnx``, a BentoML ``Model`` or a store tag → file."""
    if hasattr(model, "path_of"):  # bentoml.Model / BentoModel resolved in a service
        return Path(model.path_of(MODEL_FILE))
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        raise FileNotFoundError(f"model folder {path} has no {MODEL_FILE}")
    text = str(model)
    if text.endswith(".onnx") or os.sep in text:
        raise FileNotFoundError(f"ONNX model not found: {text}")
    import bentoml  # only tags need the model store; bentoml is a serving dependency

    try:
        stored = bentoml.models.get(text)
    except bentoml.exceptions.NotFound:
        raise FileNotFoundError(
            f"model {text!r} is not in the BentoML model store (see `bentoml models list`); import one "
            f"with `mask-export ... --bento-tag {STORE_NAME}` or build the demo model with "
            f"`make demo-model`") from None
    except ValueError as e:  # malformed tag
        raise ValueError(f"not a model path or BentoML tag: {text!r} ({e})") from None
    return Path(stored.path_of(MODEL_FILE))


def choose_variant(path: Path, precision: str, gpu: bool) -> Path:
    """``model.onnx`` or an exported sibling ``model.fp16.onnx`` / ``model.int8.onnx``.

    ``auto`` takes FP16 on a GPU when the export wrote it (half the memory traffic; export checked
    its agreement) and FP32 otherwise: INT8 is a CPU speed/accuracy trade a user opts into.
    """
    if precision == "bf16":
        raise ValueError("precision bf16 runs on the PyTorch backend: pass the .pt checkpoint as the model "
                         "(ONNX Runtime's CPU provider has no bf16 path here)")
    if precision in ("auto", "fp32"):
        sibling = variant_path(path, "fp16")
        return sibling if precision == "auto" and gpu and sibling.is_file() else path
    sibling = variant_path(path, precision)
    if not sibling.is_file():
        raise FileNotFoundError(f"no {precision} variant beside {path} (expected {sibling.name}; "
                                f"export it with mask-export --{precision})")
    return sibling


class OnnxBackend:
    """An ONNX Runtime session over an exported model: uint8 NHWC in, (N, 18) probabilities out."""

    name = "onnx"

    def __init__(self, model: Any, settings: Settings):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if settings.providers:
            unknown = [p for p in settings.providers if p not in available]
            if unknown:
                raise ValueError(f"unknown execution provider(s) {unknown}; expected some of {sorted(available)}")
            requested: list = list(settings.providers)
            gpu = requested[0] in (CUDA, TENSORRT)
        else:
            gpu = (CUDA in available or TENSORRT in available) and cuda_device_count() > 0
            if gpu and hasattr(ort, "preload_dlls"):
                # the pip CUDA wheels are found only after this when torch was not imported first
                ort.preload_dlls()
            requested = choose_providers(available, gpu=gpu, tensorrt=settings.tensorrt,
                                         trt_cache=settings.trt_cache)
        self.path = choose_variant(resolve_model_path(model), settings.precision, gpu)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = settings.threads
        opts.inter_op_num_threads = 1
        # spinning intra-op threads busy-wait between ops; beside decode workers on few cores that
        # steals the CPU they need (measured: docs/benchmarks.md, thread budget)
        opts.add_session_config_entry(SPINNING_KEY, "1" if settings.ort_spinning else "0")
        self.session = self._session(ort, opts, requested)
        self.providers = list(self.session.get_providers())
        if self.providers[0] == CPU and settings.precision == "auto" and self.path.stem.endswith(".fp16"):
            # the GPU did not come up after all: FP16 graphs are slow on CPU, take the FP32 one
            self.path = resolve_model_path(model)
            self.session = self._session(ort, opts, requested)
            self.providers = list(self.session.get_providers())
        wanted = [p if isinstance(p, str) else p[0] for p in requested]
        if wanted[0] != self.providers[0]:
            log.warning("asked for %s but ONNX Runtime runs on %s", wanted[0], self.providers[0])
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        self.quantization = quantization_here(self.metadata)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.metadata.input_name not in inputs:
            raise ValueError(f"{self.path}: no input named {self.metadata.input_name!r}; found {sorted(inputs)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if "probs" not in outputs:
            raise ValueError(f"{self.path}: no output named 'probs'; found {outputs}")

    def _session(self, ort, opts, requested):
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=requested)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the model: {e}") from None

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run(["probs"], {self.metadata.input_name: batch})
        return np.asarray(probs, dtype=np.float32)


def quantization_here(meta: ModelMetadata) -> dict:
    """An INT8 model's ``quantization`` record with ``on_this_cpu`` (does its measured agreement hold
    on this CPU's kernel?), warned about when it may not; {} for other precisions."""
    if meta.precision != "int8":
        return {}
    here = int8_on_this_cpu(meta.quantization)
    (log.info if here["holds"] else log.warning)("INT8 model: %s", here["note"])
    return {**meta.quantization, "on_this_cpu": here}


def _torch_backend(model: Any, settings: Settings):
    try:
        from serving.torch_backend import TorchBackend  # imports torch and training: only when asked for
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("serving"):   # the bento and the Docker image leave torch_backend.py out
            raise ValueError("this install is ONNX-only (no PyTorch backend): export the checkpoint with "
                             "mask-export and serve the .onnx file") from None
        raise ValueError(install_hint("train", "the PyTorch backend (a .pt model)", [e.name or "torch"])
                         + ", or export the checkpoint with mask-export and use the .onnx file") from None

    return TorchBackend(model, precision=settings.precision)


def effective_preprocess(recorded: Preprocess, settings: Settings) -> Preprocess:
    """The model's recorded preprocessing with this deployment's aspect override (``MASK_ASPECT``,
    ``mask-submit --aspect``) applied, so REST and the batch job decode identically."""
    if settings.aspect and settings.aspect != recorded.aspect:
        log.info("aspect policy %s (deployment override of the recorded %s)", settings.aspect, recorded.aspect)
        return dataclasses.replace(recorded, aspect=settings.aspect)
    return recorded


# how each of serving.settings.BACKENDS is loaded (tests/test_predictor.py holds the two in step)
BACKEND_LOADERS: dict[str, Callable[[Any, Settings], Any]] = {"onnx": OnnxBackend, "torch": _torch_backend}


def create_backend(name: str, model: Any, settings: Settings):
    if name not in BACKEND_LOADERS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKEND_LOADERS)}")
    return BACKEND_LOADERS[name](model, settings)


def backend_for(model: Any) -> str:
    """The backend a model argument needs: a ``.pt`` checkpoint runs on PyTorch, anything else (store
    tag, ``.onnx`` file, model folder) on ONNX Runtime. Decided here only."""
    return "torch" if str(model).endswith(".pt") else "onnx"


def load_predictor(model: Any, precision: str | None = None, *, settings: Settings | None = None,
                   **changes) -> "Predictor":
    """The Predictor for a model argument (``mask-submit --model``, a Ray actor's model).

    ``settings`` default to :meth:`Settings.defaults` (``mask-submit`` passes the environment's); ``precision``
    and ``changes`` (Settings field names: ``threads``, ``ort_spinning``, ``aspect``, ``providers``)
    override them where not None, e.g. ``load_predictor("model.onnx", "int8", threads=2)``.
    """
    settings = settings or Settings.defaults()
    changes = {"precision": precision, **changes}
    settings = settings.replace(**{k: v for k, v in changes.items() if v is not None})
    return Predictor(model, backend=backend_for(model), settings=settings)


class Predictor:
    """Load a model once; turn image files/bytes into the /predict JSON body.

    ``settings`` (providers, threads, TensorRT, pixel limit) default to :meth:`Settings.defaults`.
    """

    def __init__(self, model: Any = None, *, backend: str | None = None, settings: Settings | None = None,
                 warmup: bool = True, name: str | None = None):
        """``name``: what ``info()["source"]`` calls the model (default: ``model`` itself), e.g. the
        store tag a model file was resolved from."""
        self.settings = settings or Settings.defaults()
        self.backend_name = backend or self.settings.backend
        if model is None:
            model = self.settings.model_source
        self.source = name or str(model)
        started = time.perf_counter()
        self.backend = create_backend(self.backend_name, model, self.settings)
        self.metadata: ModelMetadata = self.backend.metadata
        self.preprocess: Preprocess = effective_preprocess(self.metadata.preprocess, self.settings)
        self._heads = _head_names(self.metadata.labels)
        # calibrated top probability below this -> "uncertain": MASK_UNCERTAIN_BELOW, else the artifact's
        self.uncertain_below = (self.settings.uncertain_below if self.settings.uncertain_below is not None
                                else self.metadata.calibration.get("uncertain_below"))
        self.ready = False
        if warmup:
            self.warmup()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) on %s in %.2fs", self.source, self.metadata.arch, self.provider,
                 self.load_seconds)

    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocess.height, self.preprocess.width, 3

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run zeros through the model so the first request does not pay for lazy initialisation."""
        for n in batch_sizes:
            self.infer(np.zeros((n, *self.input_shape), dtype=np.uint8))
        self.ready = True

    def load(self, source, max_pixels: int | None = None) -> np.ndarray:
        """bytes | path | PIL image → (H, W, 3) uint8, or :class:`ImageError` with a client-safe reason."""
        try:
            return self.preprocess(source, max_pixels=max_pixels or self.settings.max_pixels)
        except (ImageError, FileNotFoundError):
            raise
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"image rejected as a decompression bomb: {e}") from None
        except Exception as e:  # corrupt files reach decoder paths that raise struct.error, IndexError, ...
            raise ImageError(f"cannot decode image ({type(e).__name__}: {e})") from None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) → float32 (N, 18) class probabilities."""
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"expected a uint8 batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {batch.dtype} {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, len(self.metadata.labels)), dtype=np.float32)
        return self.backend.run(np.ascontiguousarray(batch))

    def decode(self, probs: np.ndarray) -> dict:
        """One row of 18 probabilities → class, head labels, confidence and per-head probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        cls = int(np.argmax(probs))
        row = self.metadata.labels[cls]
        # class = mask*6 + gender*3 + age, so a (mask, gender, age)-shaped view has one axis per head
        cube = probs.reshape(tuple(labels.HEAD_SIZES.values()))
        marginals = {"mask": cube.sum(axis=(1, 2)), "gender": cube.sum(axis=(0, 2)), "age": cube.sum(axis=(0, 1))}
        return {
            "class": cls,
            "label": f"{row['mask']}/{row['gender']}/{row['age']}",
            "mask": row["mask"],
            "gender": row["gender"],
            "age": row["age"],
            "confidence": round(float(probs[cls]), 6),
            "uncertain": bool(self.uncertain_below is not None and probs[cls] < self.uncertain_below),
            "probabilities": {head: {name: round(float(p), 6) for name, p in zip(self._heads[head], values)}
                              for head, values in marginals.items()},
        }

    def predict(self, sources: Sequence, batch_size: int = JOB_DEFAULTS.batch_size) -> list[dict]:
        """Files/bytes/PIL images → one decoded dict each, in order. Bad images raise ImageError."""
        results: list[dict] = []
        for start in range(0, len(sources), batch_size):
            batch = np.stack([self.load(s) for s in sources[start:start + batch_size]])
            results.extend(self.decode(row) for row in self.infer(batch))
        return results

    def info(self) -> dict:
        """Artifact metadata plus the runtime facts (/model's body)."""
        m = self.metadata
        return {
            # a store tag as it is; a file by its name (a client learns nothing from the server's paths)
            "source": Path(self.source).name if os.sep in self.source else self.source,
            "model_file": Path(str(getattr(self.backend, "path", self.source))).name,
            "backend": self.backend_name,
            "provider": self.provider,
            "providers": list(getattr(self.backend, "providers", [self.provider])),
            "ready": self.ready,
            "arch": m.arch,
            "head": m.head,
            "precision": m.precision,
            "input": {"name": m.input_name, "shape": ["N", *self.input_shape], "dtype": "uint8", "layout": "NHWC"},
            "preprocess": self.preprocess.to_dict(),   # as applied: MASK_ASPECT may override the recorded policy
            "labels": m.labels,
            "age_bins": list(m.age_bins),
            "metrics": m.metrics,
            # artifacts exported before paths were recorded portably carry the build machine's absolute paths
            "sources": portable_paths(m.sources),
            "tta": list(m.tta),
            "calibration": m.calibration,
            "quantization": getattr(self.backend, "quantization", {}),
            "uncertain_below": self.uncertain_below,
            "exported_at": m.exported_at,
            "producer_version": m.producer_version,
            "format_version": m.format_version,
        }


def _head_names(table: list[dict]) -> dict[str, list[str]]:
    """Per-head value names in index order, from the artifact's label table."""
    names = {head: [""] * n for head, n in labels.HEAD_SIZES.items()}
    for row in table:
        for head, i in zip(names, labels.decode(row["index"])):
            names[head][i] = row[head]
    return names


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.predictor MODEL IMAGE...``: print one JSON line per image."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m serving.predictor",
                                     description="Classify images with an exported model (no server).")
    parser.add_argument("model", help="BentoML tag (mask-classifier:latest), .onnx file or model folder")
    parser.add_argument("images", nargs="+", help="image files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        predictor = Predictor(args.model)
        for path, result in zip(args.images, predictor.predict(args.images)):
            print(json.dumps({"image": path, **result}))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
