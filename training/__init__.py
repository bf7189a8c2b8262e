"""PyTorch training engine for the mask/gender/age classifier (``mask-train``, ``python -m training``).

Public API: ``training.models.create_model`` / ``MaskNet``, ``training.checkpoint.load_checkpoint`` /
``model_from_checkpoint`` / ``save_checkpoint``, ``training.cli.main``. See docs/training.md.
"""
import os

# libgomp's default is to spin-wait between parallel regions. On a shared or oversubscribed CPU
# (2 cores, several jobs) the spinning thread steals the core from the one doing the work: we
# measured small_cnn training at 22 img/s with spinning and 100 img/s with PASSIVE on the same
# loaded 2-core machine. It only takes effect if set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
