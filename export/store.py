"""BentoML model store: import an exported ONNX file so a service can declare
``bentoml.models.BentoModel("mask-classifier:latest")`` and ``bentoml build`` packages it.

    tag = import_to_store("model.onnx", "mask-classifier")      # -> "mask-classifier:<version>"
    path = model_file("mask-classifier:latest")                 # .../models/mask-classifier/<version>/model.onnx

The store lives under ``$BENTOML_HOME/models`` (default ``~/bentoml``); BentoML resolves that
once per process, when it is first imported, so a tool or test that needs another store sets
``BENTOML_HOME`` before that (tests/conftest.py does, for the whole test session). Only BentoML's
public API is used here.
Inside the model folder the file is always ``model.onnx``; FP16/INT8 variants sit beside it as
``model.fp16.onnx`` / ``model.int8.onnx``. Store labels and metadata repeat the essentials
(arch, head, metrics, input size) so ``bentoml models list`` / ``get`` show them.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from maskdata.artifact import MODEL_FILE, STORE_NAME, ModelMetadata, read_metadata, variant_path

log = logging.getLogger(__name__)

DEFAULT_NAME = STORE_NAME


def store_labels(meta: ModelMetadata) -> dict[str, str]:
    """Short string labels for filtering (``bentoml models list``)."""
    return {"arch": meta.arch, "head": meta.head, "precision": meta.precision,
            "members": str(len(meta.sources) or 1), "tta": "+".join(meta.tta) or "none",
            "input": f"{meta.preprocess.height}x{meta.preprocess.width}"}


def store_metadata(meta: ModelMetadata, variants: dict[str, str] | None = None) -> dict:
    pre = meta.preprocess
    return {"arch": meta.arch, "head": meta.head, "metrics": dict(meta.metrics),
            "input_size": [pre.height, pre.width], "input_layout": pre.layout, "input_dtype": pre.dtype,
            "resize_filter": pre.resize_filter, "age_bins": list(meta.age_bins), "tta": list(meta.tta),
            "precision": meta.precision, "sources": [s.get("path", "") for s in meta.sources],
            "exported_at": meta.exported_at, "format_version": meta.format_version,
            "model_file": MODEL_FILE, "variants": dict(variants or {})}


def import_to_store(onnx_path: str | os.PathLike, tag: str = DEFAULT_NAME,
                    variants: dict[str, str | os.PathLike] | None = None) -> str:
    """Copy ``onnx_path`` (and ``variants``: precision → file) into a new store model; returns its tag.

    ``tag`` is a name (a version is generated) or ``name:version``. The file must carry mask-export
    metadata: the store never holds a model that serving cannot describe.
    """
    import bentoml
    from bentoml.exceptions import BentoMLException

    onnx_path = Path(onnx_path)
    meta = read_metadata(onnx_path)  # FileNotFoundError / ValueError with the reason
    variants = {k: Path(v) for k, v in (variants or {}).items()}
    for precision, path in variants.items():
        if not path.is_file():
            raise FileNotFoundError(f"{precision} variant not found: {path}")
    files = {precision: variant_path(MODEL_FILE, precision).name for precision in variants}
    try:
        with bentoml.models.create(tag, labels=store_labels(meta), metadata=store_metadata(meta, files)) as model:
            shutil.copyfile(onnx_path, Path(model.path) / MODEL_FILE)
            for precision, path in variants.items():
                shutil.copyfile(path, Path(model.path) / files[precision])
    except (BentoMLException, ValueError) as e:
        # BentoML reports a bad tag as ValueError/BentoMLException; one line either way
        raise ValueError(f"cannot import into the BentoML model store as {tag!r}: "
                         f"{str(e).strip().splitlines()[0]}") from None
    log.info("imported %s into the BentoML model store as %s", onnx_path, model.tag)
    return str(model.tag)


def served_name_note(tag: str) -> str | None:
    """What storing under ``tag`` changes for ``bentoml serve`` / ``make serve``, or None.

    Both serve the newest ``STORE_NAME`` model, which is the demo model until a user stores one of
    their own under that name; the note says so and how to get the demo back."""
    if tag.split(":", 1)[0] != DEFAULT_NAME:
        return None
    return (f"note: {tag} is now the newest {DEFAULT_NAME}, so `make serve` and `bentoml serve` serve it "
            "(not the demo model); `python -m demo --force` stores the demo model again, and "
            f"MASK_MODEL={tag} serves this one whatever is newest")


def model_file(tag: str = f"{DEFAULT_NAME}:latest", precision: str = "fp32") -> Path:
    """Path of ``model.onnx`` (or a variant) inside a store model."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as e:
        raise FileNotFoundError(f"no model {tag!r} in the BentoML model store: {str(e).splitlines()[0]}") from None
    name = variant_path(MODEL_FILE, precision).name
    path = Path(model.path_of(name))
    if not path.is_file():
        raise FileNotFoundError(f"store model {model.tag} has no {name}")
    return path
