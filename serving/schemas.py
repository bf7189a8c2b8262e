"""Pydantic models of every REST response (docs/serving.md), with examples so the Swagger UI (``/``) shows real bodies.

Examples use OpenAPI 3.0's singular ``example``: BentoML 1.4's OpenAPI generator rejects ``examples``.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from maskdata import labels
from serving.settings import Settings

# the demo model's answer for the image `make serve` suggests (the README and docs/serving.md show it too;
# tests/test_readme.py holds the three equal)
_EXAMPLE_PREDICTION = {
    "class": 3,
    "label": "wear/female/<30",
    "mask": "wear",
    "gender": "female",
    "age": "<30",
    "confidence": 0.999701,
    "uncertain": False,
    "probabilities": {
        "mask": {"wear": 0.999998, "incorrect": 1e-06, "not_wear": 0.0},
        "gender": {"male": 0.000297, "female": 0.999703},
        "age": {"<30": 1.0, "30-59": 0.0, ">=60": 0.0},
    },
}


class HeadProbabilities(BaseModel):
    """Each head's probabilities, marginalised from the 18 class probabilities (each sums to 1)."""

    mask: dict[str, float] = Field(json_schema_extra={"example": _EXAMPLE_PREDICTION["probabilities"]["mask"]})
    gender: dict[str, float] = Field(json_schema_extra={"example": _EXAMPLE_PREDICTION["probabilities"]["gender"]})
    age: dict[str, float] = Field(json_schema_extra={"example": _EXAMPLE_PREDICTION["probabilities"]["age"]})


class Prediction(BaseModel):
    """One image's answer: the most likely of the 18 classes and what it means."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True,
                              json_schema_extra={"example": _EXAMPLE_PREDICTION})

    class_: int = Field(alias="class", ge=0, le=labels.NUM_CLASSES - 1, description="class = mask*6 + gender*3 + age")
    label: str = Field(description="mask/gender/age names of the class")
    mask: str = Field(description="wear | incorrect | not_wear")
    gender: str = Field(description="male | female")
    age: str = Field(description="<30 | 30-59 | >=60: the age group's name (docs/data.md); a model trained "
                     "with other age_bins keeps these names, GET /model reports its bins")
    confidence: float = Field(ge=0.0, le=1.0, description="probability of the predicted class")
    uncertain: bool = Field(default=False, description="calibrated confidence below the artifact's threshold "
                                                       "(MASK_UNCERTAIN_BELOW overrides)")
    probabilities: HeadProbabilities


class ErrorBody(BaseModel):
    """Every 4xx answer: what was wrong with the request, in words safe to show a user."""

    model_config = ConfigDict(json_schema_extra={"example":
        {"error": "image: not a recognised image (expected JPEG, PNG, WebP, BMP, ...)", "status": 400}})

    error: str
    status: int


# the limits GET /model's documented example shows, at their defaults (serving/settings.py)
EXAMPLE_LIMITS = ("max_upload_bytes", "max_pixels", "max_files", "batching", "max_batch_size", "batch_wait_ms",
                  "max_queue", "max_archive_bytes")


class ModelInfo(BaseModel):
    """``GET /model``: what is being served and where it runs."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "source": "mask-classifier:latest",
        "model_file": "model.onnx", "backend": "onnx",
        "provider": "CPUExecutionProvider",
        "providers": ["CPUExecutionProvider"], "ready": True, "arch": "tiny_cnn", "head": "single",
        "precision": "fp32",
        "input": {"name": "image", "shape": ["N", 128, 96, 3], "dtype": "uint8", "layout": "NHWC"},
        "preprocess": {"height": 128, "width": 96, "resize_filter": "bilinear", "jpeg_draft": True,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "layout": "NHWC", "dtype": "uint8"},
        "labels": [{"index": 0, "mask": "wear", "gender": "male", "age": "<30"}],
        "age_bins": [30, 60], "metrics": {"f1": 0.81, "acc": 0.9}, "sources": [], "tta": [],
        "exported_at": "2026-11-27T10:00:00Z", "producer_version": "0.1.0", "format_version": 2,
        "limits": {k: Settings.model_fields[k].default for k in EXAMPLE_LIMITS},
    }})

    source: str = Field(description="model tag, or name of the file, the service loaded")
    model_file: str = Field(description="name of the model file in use (model.fp16.onnx on a GPU with "
                            "MASK_PRECISION=auto when exported); never the server's path")
    backend: str = Field(description="onnx (default) or torch")
    provider: str = Field(description="execution provider actually active, e.g. CUDAExecutionProvider")
    providers: list[str]
    ready: bool = Field(description="true once the warm-up inference has run")
    arch: str
    head: str
    precision: str
    input: dict
    preprocess: dict
    labels: list[dict]
    age_bins: list[int]
    metrics: dict
    sources: list[dict]
    tta: list[str]
    exported_at: str
    producer_version: str
    format_version: int
    limits: dict = Field(description="request limits in force (set by MASK_* environment variables)")
    quantization: dict = Field(default_factory=dict, description="INT8 models: how the weights are stored, "
                               "the agreement with FP32 measured at export and on which CPU, and `on_this_cpu` "
                               "(whether that agreement holds on the serving CPU); {} otherwise")
    explain: dict = Field(default_factory=dict, description="whether POST /explain can answer "
                          "({\"available\": true, \"maps\": ...} or {\"available\": false, \"reason\": ...})")
