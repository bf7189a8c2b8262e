"""``python -m export ...``: same as ``mask-export``."""
import sys

from export.entry import main

sys.exit(main())
