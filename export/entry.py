"""Console-script entry point of ``mask-export`` (and ``python -m export``).

It applies the same process-wide settings as ``mask-train`` (``training.entry.prepare_process``: libgomp's
``OMP_WAIT_POLICY=PASSIVE``, read once when torch loads) *before* torch is first imported, then imports
the real CLI. This module must not import torch or ``export.cli`` at module level.
"""
from __future__ import annotations

from maskdata.extras import exit_unless_installed
from training.entry import prepare_process


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    exit_unless_installed("train", "mask-export")
    from export.cli import main as cli_main

    return cli_main(argv)
