"""``python -m training ...`` and ``torchrun --nproc-per-node N -m training ...``: same as ``mask-train``."""
import sys

from training.entry import train

sys.exit(train())
