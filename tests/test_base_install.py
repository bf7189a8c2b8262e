"""What `pip install .` (the base: the serving runtime, no extras) can and cannot do, in a venv that holds
exactly the base dependencies' closure (test_serve_subprocess's ``serving_venv``; it proves torch is
not there and serves a model from it): mask-submit and the `make serve` demo check run, and every
command that needs an extra stops with one line naming it."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from servers import serve_env as _env
from test_serve_subprocess import serving_venv  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow   # builds a venv and runs commands in it

REPO = Path(__file__).resolve().parents[1]


def _run(python, *args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_mask_submit_runs_and_scores_without_the_training_stack(serving_venv, onnx_model, synth_root, tmp_path):
    python, _ = serving_venv
    ev = synth_root / "eval"
    out = tmp_path / "sub.csv"
    done = _run(python, "-m", "serving.submit_cli", "--info", str(ev / "info.csv"), "--images", str(ev / "images"),
                "--out", str(out), "--model", str(onnx_model), "--labels", str(ev / "answers.csv"), "--no-progress",
                env=_env(BENTOML_HOME=str(tmp_path / "home")))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(list((ev / "images").iterdir())), "one row per eval image"
    assert "score: macro F1" in done.stdout, done.stdout
    assert "no confusion PNG" in done.stdout and "pip install 'mask-classifier[train]'" in done.stdout, done.stdout
    assert not out.with_suffix(".confusion.png").exists()


def test_the_make_serve_demo_check_needs_neither_torch_nor_onnx(serving_venv, tmp_path):
    python, dists = serving_venv
    assert "onnx" not in dists and "torch" not in dists, dists
    env = _env(BENTOML_HOME=str(tmp_path / "home"))
    done = _run(python, "-m", "demo", "--workdir", str(tmp_path / "demo"), env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ready in" in done.stdout and "mask-classifier:" in done.stdout, done.stdout[-2000:]
    again = _run(python, "-m", "demo", "--workdir", str(tmp_path / "demo"), env=env)
    assert again.returncode == 0 and "(the demo model model.onnx); serving it" in again.stdout, again.stdout


@pytest.mark.parametrize("args,command,extra", [
    (("-m", "training", "--data-dir", "d", "--out", "o"), "mask-train", "train"),
    (("-m", "export", "--checkpoint", "best.pt", "--out", "m.onnx"), "mask-export", "train"),
    (("-c", "import sys; from training.entry import tune; sys.exit(tune())"), "mask-tune", "tune"),
    (("-m", "workflow", "--data-dir", "d", "--out", "o"), "mask-run", "train"),
])
def test_a_command_without_its_extra_is_one_line_naming_it(serving_venv, tmp_path, args, command, extra):
    python, _ = serving_venv
    done = _run(python, *args, env=_env(BENTOML_HOME=str(tmp_path / "home")), timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-2000:])
    assert lines[0].startswith(f"error: {command} needs the '{extra}' extra (") and \
        lines[0].endswith(f"pip install 'mask-classifier[{extra}]'"), lines[0]
