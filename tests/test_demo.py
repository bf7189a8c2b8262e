"""The demo model `make serve` installs: the shipped demo/model.onnx is what demo/model.json describes,
scores at least the demo's bar on synthetic people it never saw, lands in a fresh model store in one
command, and a model below the bar is refused before anything is stored."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.build import MIN_MACRO_F1, SHIPPED, SHIPPED_CARD, DemoConfig, install
from maskdata.io import sha256_file

REPO = Path(__file__).resolve().parents[1]


def test_shipped_model_is_the_one_its_card_describes():
    card = json.loads(SHIPPED_CARD.read_text())
    assert card["sha256"] == sha256_file(SHIPPED), "demo/model.onnx changed without demo/model.json: run make demo-model"
    assert card["check_set"]["macro_f1"] >= MIN_MACRO_F1, card["check_set"]
    assert card["check_set"]["images"] == 7 * DemoConfig().eval_people, card["check_set"]


@pytest.mark.slow
def test_first_run_checks_and_stores_the_shipped_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASK_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    cmd = [sys.executable, "-m", "demo", "--workdir", str(tmp_path / "demo")]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    score = json.loads(re.search(r"^\s+(\{\"images\".*\})$", first.stdout, re.M).group(1))
    recorded = json.loads(SHIPPED_CARD.read_text())["check_set"]
    assert score["images"] == recorded["images"] == 350, score
    # same images, same model: only a rare argmax flip between CPUs' float paths may differ
    assert abs(score["macro_f1"] - recorded["macro_f1"]) <= 0.01, (score, recorded)
    assert score["macro_f1"] >= MIN_MACRO_F1, score
    assert (tmp_path / "demo" / "data" / "eval" / "images").is_dir(), "the banner's curl needs the check images"
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "already has mask-classifier:" in second.stdout, second.stdout + second.stderr


def test_a_model_below_the_bar_is_refused_before_it_is_stored(onnx_model, tmp_path):
    from demo.build import stored_model

    before = stored_model()
    cfg = DemoConfig(workdir=tmp_path, eval_people=8, model_file=Path(onnx_model))
    with pytest.raises(RuntimeError, match=r"below the demo's 0\.9; rebuild it with `make demo-model`"):
        install(cfg)
    assert stored_model() == before, "a refused model must not reach the store"
    with pytest.raises(FileNotFoundError, match="make demo-model"):
        install(DemoConfig(workdir=tmp_path, model_file=tmp_path / "missing.onnx"))


@pytest.mark.slow
def test_storing_a_model_under_the_demo_s_name_says_so_and_the_demo_comes_back(onnx_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASK_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")

    def run(*args):
        done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    demo = ("demo", "--workdir", str(tmp_path / "demo"))
    assert "(the demo model model.onnx); serving it" in run(*demo) + run(*demo)
    stored = run("export", "--import-onnx", str(onnx_model), "--bento-tag", "mask-classifier")
    assert "`make serve` and `bentoml serve` serve it (not the demo model)" in stored, stored
    assert "`python -m demo --force` stores the demo model again" in stored, stored
    mine = run(*demo)
    assert "which is not the demo model" in mine and "`python -m demo --force`" in mine, mine
    run(*demo, "--force")
    assert "(the demo model model.onnx); serving it" in run(*demo)
