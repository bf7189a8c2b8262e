"""A real 2-process DDP run: ``torchrun --nproc-per-node 2 -m training`` with gloo on CPU."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow   # see pyproject's `slow` marker: make test-fast leaves it out

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run(synth_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training",
           "--data-dir", str(synth_root / "train"), "--out", str(out), "--model", "tiny_cnn", "--epochs", "2",
           "--batch-size", "8", "--resize", "32", "24", "--workers", "0", "--no-progress", "--device", "cpu",
           "--accum-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "world size 2" in proc.stderr, "the run did not start as a 2-process group"

    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"], f"rank 0 must write one row per epoch, got {rows}"
    split = json.loads((out / "split.json").read_text())
    with open(out / "val_predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    # both ranks' shards are gathered: every validation image is scored exactly once
    assert len(preds) == 7 * len(split["val_people"]) and len({p["path"] for p in preds}) == len(preds), len(preds)
    ck = load_checkpoint(out / "last.pt")
    assert not any(k.startswith("module.") for k in ck["state_dict"]), "checkpoint must hold the unwrapped model"
    assert ck["epoch"] == 2 and all(torch.isfinite(v.float()).all() for v in ck["state_dict"].values())
    f1 = float(rows[-1]["val_f1"])
    assert abs(ck["history"][-1]["val_f1"] - f1) < 1e-5, "last.pt history and metrics.csv disagree"
