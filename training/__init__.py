"""PyTorch training engine for the mask/gender/age classifier (``mask-train``, ``python -m training``).

Public API: ``training.models.create_model`` / ``MaskNet``, ``training.checkpoint.load_checkpoint`` /
``model_from_checkpoint`` / ``save_checkpoint``, ``training.cli.main``. See docs/training.md.
Importing it has no side effects; the console scripts' process settings are in ``training.entry``.
"""
