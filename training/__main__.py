"""``python -m training ...`` and ``torchrun --nproc-per-node N -m training ...``: same as ``mask-train``."""
import sys

from training.cli import main

sys.exit(main())
