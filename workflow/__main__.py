"""``python -m workflow ...``: same as ``mask-run``."""
import sys

from workflow.cli import main

sys.exit(main())
