"""Torch-free core shared by every stage: label schema, data layout reader, splits, metrics (the ECE
included), image preprocessing, the model-artifact metadata schema, the synthetic data generator, and
the ``--config FILE.yaml`` loader of ``mask-train`` and ``mask-export``.

Nothing here imports torch, so serving can use it on its torch-free path.
"""

__version__ = "0.2.0"   # the package version (pyproject reads it from here)
