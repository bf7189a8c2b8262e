"""Console-script entry points of ``mask-train``, ``mask-tune`` and ``python -m training``; ``mask-export``'s
is ``export/entry.py``, which calls :func:`prepare_process` from here.

They set process-wide settings *before* torch is first imported, then import the real CLI:

- ``OMP_WAIT_POLICY=PASSIVE`` (unless already set). libgomp's default is to spin-wait between
  parallel regions; on a shared or oversubscribed CPU (2 cores, several jobs) the spinning thread
  steals the core from the one doing the work: small_cnn training ran at 22 img/s with spinning and
  100 img/s with PASSIVE on the same loaded 2-core machine. libgomp reads it once, when torch loads,
  so setting it inside ``training.cli.main`` (which imports torch at module level) would be too late.

Without the ``train`` (or ``tune``) extra they stop with one line naming it (:mod:`maskdata.extras`).
This module must not import torch or ``training.cli`` at module level, nor anything from ``export``.
"""
from __future__ import annotations

import os

from maskdata.extras import exit_unless_installed


def prepare_process() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def train(argv: list[str] | None = None) -> int:
    prepare_process()   # before anything looks torch up, the extras check included
    exit_unless_installed("train", "mask-train")
    from training.cli import main

    return main(argv)


def tune(argv: list[str] | None = None) -> int:
    prepare_process()
    exit_unless_installed("tune", "mask-tune")
    from training.tuning.cli import main

    return main(argv)
