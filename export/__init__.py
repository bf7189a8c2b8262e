"""Export stage: mask-train checkpoints → parity-checked, self-describing ONNX (+ FP16/INT8) → BentoML store.

Command line: ``mask-export --help`` (``export/entry.py`` → ``export/cli.py``; the run itself is
``export.pipeline.run_export(ExportConfig)``, the config in ``export/config.py``). Library use::

    from export import EnsembleNet, export_onnx, check_parity, read_metadata

Modules: ``graph`` (ensemble/TTA wrapper, metadata, ONNX export), ``parity`` (PyTorch vs ONNX
Runtime on real images), ``variants`` (FP16, INT8 and their agreement/speed), ``store`` (BentoML
model store). Importing this package is cheap; torch/onnx load when a function needs them.
"""
from __future__ import annotations

from maskdata.artifact import ModelMetadata, read_metadata

__all__ = ["ModelMetadata", "read_metadata", "EnsembleNet", "export_onnx", "build_metadata", "load_members",
           "check_parity", "ParityReport", "ParityError", "to_fp16", "to_int8", "compare_variant",
           "import_to_store", "model_file"]

_LAZY = {"EnsembleNet": "graph", "export_onnx": "graph", "build_metadata": "graph", "load_members": "graph",
         "check_parity": "parity", "ParityReport": "parity", "ParityError": "parity",
         "to_fp16": "variants", "to_int8": "variants", "compare_variant": "variants",
         "import_to_store": "store", "model_file": "store"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
