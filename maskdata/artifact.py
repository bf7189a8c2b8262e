"""Schema of the model artifact's metadata (docs/ARCHITECTURE.md): written by export, read by serving.

Stored in the ONNX file's ``metadata_props`` as one JSON value per ``mask.<field>`` key, so
``onnx``, ONNX Runtime (``get_modelmeta().custom_metadata_map``) and Netron all show it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from maskdata import labels
from maskdata.labels import DEFAULT_AGE_BINS, label_table_dicts
from maskdata.preprocess import Preprocess

# 1: resize only. 2: preprocessing gains crop, aspect and pad_fill (a reader of format 1 would have
# dropped them and answered wrongly, so it refuses format 2). Format-1 models still load: the keys they
# lack mean "no crop, stretch", which is what they did.
FORMAT_VERSION = 2
PREFIX = "mask."
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probs")
# The BentoML model-store name, defined once here (torch-free, so export, serving and demo share it)
STORE_NAME = "mask-classifier"
# The ONNX file inside a model folder / store model; its precision variants sit beside it
# (model.fp16.onnx, model.int8.onnx: variant_path). Export writes these names, serving reads them.
MODEL_FILE = "model.onnx"


def variant_path(path: str | Path, precision: str) -> Path:
    """``model.onnx`` → ``model.fp16.onnx`` / ``model.int8.onnx`` (``fp32``: the file itself)."""
    path = Path(path)
    if precision == "fp32":
        return path
    return path.with_name(f"{path.stem}.{precision}{path.suffix or '.onnx'}")


@dataclass(frozen=True)
class ModelMetadata:
    preprocess: Preprocess
    arch: str
    head: str                                   # "single" (one 18-way head) or "multi" (mask/gender/age heads)
    # the field ``labels`` shadows the module inside this class body, hence the direct imports
    labels: list[dict] = field(default_factory=label_table_dicts)
    age_bins: tuple[int, int] = DEFAULT_AGE_BINS   # bins the model was *trained* on
    sources: list[dict] = field(default_factory=list)     # [{"path", "metrics", "fingerprint"}] per checkpoint
    metrics: dict = field(default_factory=dict)           # mean of the sources' best validation metrics
    tta: tuple[str, ...] = ()
    # {"temperatures": [per member, applied in the graph], "uncertain_below": serving's threshold, ...}
    calibration: dict = field(default_factory=dict)
    precision: str = "fp32"                               # fp32 | fp16 | int8
    exported_at: str = ""
    producer_version: str = ""
    format_version: int = FORMAT_VERSION
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    # class-activation maps in the graph (export/cam.py): {"available": bool, "output", "maps", "bias", ...}
    # or {"available": False, "reason": ...}; {} for models exported before it existed
    explain: dict = field(default_factory=dict)
    # INT8 only (export/int8_choice.py): {"format", "weights", "exact_on", "float_convs", "agreement",
    # "check_images", "measured_on": {"cpu", "simd", "int8_kernel"}, "why", "candidates": [...]}; {} otherwise
    quantization: dict = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return {PREFIX + k: json.dumps(v, sort_keys=True) for k, v in d.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        d = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "format_version" not in d:
            raise ValueError("model has no mask.* metadata; was it exported with mask-export?")
        try:
            values = {k: json.loads(v) for k, v in d.items() if k in cls.__dataclass_fields__}
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt model metadata: {e}") from None
        if not isinstance(values["format_version"], int) or values["format_version"] > FORMAT_VERSION:
            raise ValueError(f"model metadata format {values['format_version']} is newer than this reader "
                             f"({FORMAT_VERSION}); upgrade the package")
        values["preprocess"] = Preprocess.from_dict(values["preprocess"])
        for k in ("age_bins", "tta", "output_names"):
            if k in values:
                values[k] = tuple(values[k])
        if len(values.get("labels", [])) != labels.NUM_CLASSES:
            raise ValueError(f"model label table has {len(values.get('labels', []))} rows; expected {labels.NUM_CLASSES}")
        return cls(**values)


def portable_path(path: str | Path) -> str:
    """A source file as an artifact records it: relative to the working directory when it lies below it
    (``runs/r1/best.pt``), else its folder and name (``r1/best.pt``); never a machine's absolute path,
    which says nothing on another machine and tells a client how the build machine is laid out."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix()


def portable_paths(value):
    """``value`` (JSON-shaped: dicts, lists, strings) with every absolute path string made
    :func:`portable_path`: what an artifact's sources may record (the checkpoint, a distillation
    teacher, a pseudo-label file) and what ``GET /model`` may show."""
    if isinstance(value, str):
        return portable_path(value) if os.path.isabs(value) else value
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    return value


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata of an ONNX file: read by the ``onnx`` package where it is installed (no inference
    session), else from an ONNX Runtime session's model metadata (the base install has no ``onnx``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        import onnx  # the 'train' extra (export) has it
    except ImportError:
        return ModelMetadata.from_props(_session_props(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model: {e}") from None
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def _session_props(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... classes
        raise ValueError(f"{path}: not a readable ONNX model: {str(e).strip().splitlines()[0]}") from None
    return dict(session.get_modelmeta().custom_metadata_map)
