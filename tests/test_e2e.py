"""End to end through the real console commands, as a user runs them:
mask-data synth → mask-train (2 folds, gradient accumulation) → mask-export (2-fold ensemble, parity)
→ mask-submit (scored against the generator's answers.csv) — and the score must beat chance by a
wide margin, so a pipeline that runs but predicts nonsense fails here."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # see pyproject's `slow` marker: make test-fast leaves it out

BIN = Path(sys.executable).parent
SEED = os.environ.get("MASK_E2E_SEED", "3")   # the data seed; other values are for the numeric-path runs


def run(*argv: str, cwd: Path) -> str:
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_synth_train_export_submit_score(tmp_path):
    data, run_dir, model, sub = tmp_path / "data", tmp_path / "run", tmp_path / "model.onnx", tmp_path / "sub.csv"
    run("mask-data", "synth", "--out", str(data), "--people", "160", "--eval-people", "40", "--seed", SEED,
        cwd=tmp_path)
    run("mask-train", "--data-dir", str(data / "train"), "--out", str(run_dir), "--model", "plain_cnn",
        "--resize", "96", "72", "--epochs", "10", "--folds", "2", "--accum-steps", "2", "--batch-size", "16",
        "--workers", "0", "--seed", "0", "--no-progress", cwd=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["fold_f1"]) == 2, f"expected 2 folds in the summary, got {summary}"

    out = run("mask-export", "--checkpoint", str(run_dir / "fold0" / "best.pt"), str(run_dir / "fold1" / "best.pt"),
              "--out", str(model), cwd=tmp_path)
    assert "argmax agreement 100.00%" in out, f"the exporter must prove parity:\n{out}"

    out = run("mask-submit", "--info", str(data / "eval" / "info.csv"), "--images", str(data / "eval" / "images"),
              "--out", str(sub), "--model", str(model), "--labels", str(data / "eval" / "answers.csv"),
              "--no-progress", cwd=tmp_path)
    m = re.search(r"macro F1 ([\d.]+), accuracy ([\d.]+), F1 mask ([\d.]+)", out)
    assert m, f"mask-submit printed no score:\n{out}"
    f1, acc, f1_mask = map(float, m.groups())
    with open(data / "eval" / "answers.csv", newline="") as f:
        truth = [int(r["ans"]) for r in csv.DictReader(f)]
    majority = Counter(truth).most_common(1)[0][1] / len(truth)
    seen = f"macro F1 {f1}, accuracy {acc}, mask F1 {f1_mask}, majority-class rate {majority:.3f}"
    print(f"e2e figures: {seen}")
    # Two folds of 80 people at 96x72 for 10 epochs (80-250 s here, depending on load).
    # The old recipe (40 people a fold, 20 epochs of batch 8) reached only accuracy 0.238 on
    # an AVX2-only CPU. This one, run under six numeric paths (ATEN_CPU_CAPABILITY default/avx2/
    # avx512, OMP_NUM_THREADS 1/2, data seeds 3/5), was never closer to a bar than: accuracy +0.211
    # (0.561 vs majority 0.250 + 0.1; avx2, seed 5), macro F1 +0.259 (0.425 vs 0.167; default
    # capability, seed 3), mask F1 +0.237 (0.837 vs 0.6; default, 1 thread, seed 5).
    # The full recipe's 0.97 is measured in docs/training.md.
    assert acc > majority + 0.1, f"accuracy not far above always answering the commonest class: {seen}"
    assert f1 > 3 / 18, f"18-class macro F1 not far above chance (1/18 = {1 / 18:.3f}): {seen}"
    assert f1_mask > 0.6, f"mask-state F1 not far above chance (~1/3): {seen}"
    with open(sub, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(truth) and all(0 <= int(r["ans"]) < 18 for r in rows), "submission rows/classes"
