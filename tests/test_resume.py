"""Exact resume: finished and early-stopped runs stay finished, --epochs N extends
every schedule without an LR jump (or refuses: onecycle), last.pt holds the last epoch's metrics and
the best ones apart, the recorded split is the one resumed, and no unused RNG state is saved.

Tiny runs (tiny_cnn, 32x24, the shared 24-person ``synth_root``); a fake val F1 sequence where the
test needs a given best/early-stop pattern (the rest of the epoch is real)."""
from __future__ import annotations

import json
import logging
import math

import pytest

from export.graph import mean_metrics
from training.loop import engine
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import main

TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "32", "24", "--workers", "0", "--no-progress"]


def _args(synth_root, out, *extra):
    return ["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, *extra]


@pytest.fixture
def fake_f1(monkeypatch):
    """Make epoch n's val macro F1 ``seq[n]`` (everything else about evaluation stays real)."""
    real = engine.evaluate
    seq: list[float] = []

    def evaluate(*a, **kw):
        out, probs = real(*a, **kw)
        if seq:   # the end-of-run calibration pass evaluates once more, with the real F1
            out["f1"] = seq.pop(0)
        return out, probs
    monkeypatch.setattr(engine, "evaluate", evaluate)
    return seq


def _resume(path, *extra):
    return main(["--resume", str(path), "--workers", "0", "--no-progress", *extra])


def test_early_stopped_run_resumes_to_nothing(synth_root, tmp_path, fake_f1, caplog):
    fake_f1.extend([0.5, 0.4, 0.3, 0.2, 0.1])
    assert main(_args(synth_root, tmp_path, "--epochs", "5", "--early-stop", "1")) == 0
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2, "early stop after 1 epoch without gain"
    with caplog.at_level(logging.INFO):
        assert _resume(tmp_path / "last.pt") == 0
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 2 and len(ck["history"]) == 2, f"a resumed early-stopped run trained on: {ck['epoch']}"
    assert "nothing to train" in caplog.text and "early-stopped" in caplog.text, caplog.text[-2000:]


@pytest.mark.slow
def test_finished_kfold_fold_resumes_to_nothing(synth_root, tmp_path, caplog):
    assert main(_args(synth_root, tmp_path, "--epochs", "1", "--folds", "2")) == 0
    before = [(tmp_path / f"fold{f}" / "last.pt").stat().st_mtime_ns for f in range(2)]
    with caplog.at_level(logging.INFO):
        assert _resume(tmp_path) == 0
    after = [(tmp_path / f"fold{f}" / "last.pt").stat().st_mtime_ns for f in range(2)]
    assert before == after, "a finished fold was trained (its last.pt rewritten) on resume"
    assert caplog.text.count("all 1 epochs are done") == 2, caplog.text[-2000:]


def test_last_pt_records_last_epoch_metrics_and_best_apart(synth_root, tmp_path, fake_f1):
    fake_f1.extend([0.5, 0.3])
    assert main(_args(synth_root, tmp_path, "--epochs", "2")) == 0
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["metrics"]["f1"] == pytest.approx(0.3), f"last.pt metrics are not epoch 2's: {last['metrics']}"
    assert last["best"]["f1"] == pytest.approx(0.5) and last["best"]["epoch"] == 1, last["best"]
    assert best["metrics"]["f1"] == pytest.approx(0.5) and best["epoch"] == 1, best["metrics"]
    assert last["metrics"]["acc"] == pytest.approx(last["history"][-1]["val_acc"]), "last.pt acc != epoch 2's"
    assert mean_metrics([last])["f1"] == pytest.approx(0.3), "exporting last.pt must write its own metrics"
    assert "rng" not in last, "last.pt saves an RNG state that resume never uses"


def _lrs(path):
    ck = load_checkpoint(path)
    return [row["lr"] for row in ck["history"]], ck["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.parametrize("sched,extra", [
    ("cosine", []),
    ("cosine", ["--warmup-epochs", "0"]),
    ("step", ["--step-size", "1", "--gamma", "0.5", "--warmup-epochs", "0"]),
    ("plateau", ["--patience", "0", "--gamma", "0.5"]),
    ("constant", []),
])
@pytest.mark.slow
def test_extending_a_run_continues_its_schedule(synth_root, tmp_path, sched, extra):
    lr = 3e-3
    # stopped mid-schedule (2 of 3 epochs), then extended to 5: the new tail starts where the old one was
    assert main(_args(synth_root, tmp_path, "--epochs", "3", "--stop-after", "2", "--scheduler", sched,
                      "--lr", str(lr), *extra)) == 0
    _, lr_before = _lrs(tmp_path / "last.pt")
    assert _resume(tmp_path / "last.pt", "--epochs", "5") == 0
    starts, lr_end = _lrs(tmp_path / "last.pt")
    assert len(starts) == 5, f"extended to 5 epochs, history has {len(starts)}"
    assert starts[2] == pytest.approx(lr_before, rel=1e-9), \
        f"{sched}: LR jumped on resume: {lr_before:.6g} before, {starts[2]:.6g} after"
    if sched == "cosine":
        assert lr_end == pytest.approx(lr * 0.01, rel=1e-6), f"cosine must end at its floor, ends at {lr_end:.6g}"
        # restart at update u0 = 2 epochs, new end 5 epochs: one epoch (a third) in, the cosine has
        # covered 1/4 of the way from the resumed LR to the floor (re-laying the old cosine over the
        # new total instead, as before, lands elsewhere)
        mid = lr * 0.01 + (lr_before - lr * 0.01) * 0.5 * (1 + math.cos(math.pi / 3))
        assert starts[3] == pytest.approx(mid, rel=1e-6), f"cosine after resume is not re-annealed: {starts}"
    if sched == "step":
        assert lr_end == pytest.approx(lr * 0.5 ** 5, rel=1e-6), f"step after 5 epochs: {lr_end:.6g}"


@pytest.mark.slow
def test_extending_a_finished_cosine_run_continues_at_its_floor(synth_root, tmp_path):
    assert main(_args(synth_root, tmp_path, "--epochs", "2")) == 0
    assert _resume(tmp_path / "last.pt", "--epochs", "3") == 0
    starts, lr_end = _lrs(tmp_path / "last.pt")
    assert starts[2] == pytest.approx(3e-5) and lr_end == pytest.approx(3e-5), f"no jump off the floor: {starts}"


@pytest.mark.slow
def test_extending_a_cosine_run_twice_and_resuming_in_between(synth_root, tmp_path):
    assert main(_args(synth_root, tmp_path, "--epochs", "2", "--warmup-epochs", "0")) == 0
    assert _resume(tmp_path / "last.pt", "--epochs", "4", "--stop-after", "1") == 0
    _, lr_mid = _lrs(tmp_path / "last.pt")
    assert _resume(tmp_path / "last.pt") == 0          # keeps the recorded 4 epochs and its restart
    starts, _ = _lrs(tmp_path / "last.pt")
    assert starts[3] == pytest.approx(lr_mid, rel=1e-9), f"LR jumped on the second resume: {starts}"
    assert _resume(tmp_path / "last.pt", "--epochs", "5") == 0
    starts, lr_end = _lrs(tmp_path / "last.pt")
    assert len(starts) == 5 and lr_end == pytest.approx(3e-5, rel=1e-6), (starts, lr_end)


def test_extending_onecycle_is_refused_with_the_reason(synth_root, tmp_path, capsys):
    assert main(_args(synth_root, tmp_path, "--epochs", "1", "--scheduler", "onecycle")) == 0
    assert _resume(tmp_path / "last.pt", "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onecycle cannot be extended" in err[0], err


def test_resume_uses_the_recorded_split(synth_root, tmp_path):
    assert main(_args(synth_root, tmp_path, "--epochs", "2", "--stop-after", "1")) == 0
    ck = load_checkpoint(tmp_path / "last.pt")
    people = sorted(set(ck["split"]["train_people"]) | set(ck["split"]["val_people"]))
    moved = {"train_people": people[4:], "val_people": people[:4]}   # a split the code would not derive
    assert moved["val_people"] != ck["split"]["val_people"]
    del ck["split"]                                                  # as a run written before it was recorded
    save_checkpoint(tmp_path / "last.pt", ck)
    (tmp_path / "split.json").write_text(json.dumps(moved))
    assert _resume(tmp_path / "last.pt") == 0
    assert load_checkpoint(tmp_path / "last.pt")["split"]["val_people"] == moved["val_people"], \
        "resume re-derived the split instead of using the recorded one"
    (tmp_path / "split.json").unlink()
    ck = load_checkpoint(tmp_path / "last.pt")
    del ck["split"]
    ck["epoch"] = 1
    save_checkpoint(tmp_path / "last.pt", ck)
    assert _resume(tmp_path / "last.pt") == 2, "no recorded split: resume must refuse"
