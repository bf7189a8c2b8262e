"""GPU checks, run the way ``make gpu-check`` runs them on the lent GPU machine (which has no pytest):
``python -m bench.gpu_check`` as a command, judged by the JSON it writes and its exit code. With a
CUDA device every check passes or skips with its reason (no CUDA provider in onnxruntime, say) and
the bench rows that ran carry a figure; without one, every check skips with a reason and no bench
row claims a figure."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_passes_or_skips_with_reasons(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    out = tmp_path / "gpu_check.json"
    assert out.is_file(), f"no gpu_check.json (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(out.read_text())
    checks, rows = result["checks"], result["bench"]
    assert checks and rows, f"no checks or no bench rows: {result}"
    failed = {n: c.get("traceback") or c.get("error") for n, c in checks.items() if c["status"] == "fail"}
    assert failed == {} and proc.returncode == 0, f"checks failed (exit {proc.returncode}): {failed}"
    assert all(c["reason"] for c in checks.values() if c["status"] == "skip"), checks
    assert all(("img_s" in r) == bool(r["measured"]) for r in rows), f"a figure without a measurement: {rows}"
    if result["environment"]["cuda_device"] is None:   # here: nothing may claim to have run
        assert {c["status"] for c in checks.values()} == {"skip"}, checks
        assert not any(r["measured"] for r in rows), rows
    else:
        assert any(c["status"] == "pass" for c in checks.values()), f"a CUDA device, yet no check ran: {checks}"


@pytest.mark.slow
def test_gpu_check_needs_neither_bentoml_nor_pytest():
    """The lent GPU machine has neither: import everything the checks use with both blocked."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('bentoml', 'pytest'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import bench.gpu_check, serving.torch_backend, export.parity, export.variants, export.cli, training.cli\n"
            "import maskdata.synth\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
