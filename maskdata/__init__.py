"""Torch-free core shared by every stage: label schema, data layout reader, splits, metrics,
image preprocessing, the model-artifact metadata schema, and the synthetic data generator.

Nothing here imports torch, so serving can use it on its torch-free path.
"""
