"""mask-export is quiet by default: its own progress at INFO, the ONNX libraries' rewrite logs only with
--verbose (they log every constant fold and initializer merge at INFO)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY_LINE = ("INFO onnxscript", "INFO onnx_ir", "INFO torch")


def _export(trained_run, out: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENTOML_")}
    done = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(trained_run / "best.pt"),
                           "--out", str(out), *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_library_logs_only_with_verbose(trained_run, tmp_path):
    quiet = _export(trained_run, tmp_path / "a.onnx")
    assert "INFO export.pipeline: exporting" in quiet, quiet[-2000:]
    noisy = [ln for ln in quiet.splitlines() if ln.startswith(LIBRARY_LINE)]
    assert noisy == [], f"library INFO lines without --verbose: {noisy[:5]}"
    verbose = _export(trained_run, tmp_path / "b.onnx", "--verbose")
    assert any(ln.startswith(LIBRARY_LINE) for ln in verbose.splitlines()), \
        f"--verbose should show the ONNX libraries' logs:\n{verbose[-2000:]}"
