"""``mask-run``: train → export → submit from a data folder, each step kept, an interrupted one resumed."""
from __future__ import annotations

import csv
import json
import os
import time

import pytest

from workflow.cli import Plan, checkpoints, export_argv, main, submit_argv, train_argv

TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "64", "48", "--workers", "0", "--seed", "0",
        "--no-progress"]


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_one_command_from_a_data_folder_to_a_scored_submission(synth_root, tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["--data-dir", str(synth_root), "--out", str(work), "--", *TINY, "--epochs", "2", "--stop-after", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "training stopped before its last epoch" in first, first[-2000:]
    assert (work / "run" / "last.pt").is_file() and not (work / "model.onnx").exists(), "stopped after training"

    assert main(argv) == 0   # the same command: training resumes for its last epoch, then export and submit
    second = capsys.readouterr().out
    assert f"mask-train --resume {work / 'run'}" in second, second[-3000:]
    from training.checkpoint import load_checkpoint

    assert load_checkpoint(work / "run" / "last.pt")["epoch"] == 2, "the resumed run trains its second epoch"
    info = _rows(synth_root / "eval" / "info.csv")
    sub = _rows(work / "submission.csv")
    assert [r["ImageID"] for r in sub] == [r["ImageID"] for r in info], "one row per info.csv row, in order"
    assert all(0 <= int(r["ans"]) < 18 for r in sub), sub[:3]
    assert "score: macro F1" in second, "the synthetic eval set's answers.csv is used to score it"

    written = {p: p.stat().st_mtime_ns for p in (work / "model.onnx", work / "submission.csv")}
    assert main(argv) == 0   # and again: nothing left to do
    third = capsys.readouterr().out
    assert third.count("is up to date, kept") == 3, third
    assert {p: p.stat().st_mtime_ns for p in written} == written, "kept files are not rewritten"


def _touch(path, when: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (when, when))


def test_each_step_runs_again_only_when_its_input_is_newer(tmp_path):
    plan = Plan(data=tmp_path / "data", work=tmp_path / "work", train_args=("--epochs", "3"))
    assert train_argv(plan) == ["--data-dir", str(plan.data / "train"), "--out", str(plan.run), "--epochs", "3"]
    now = time.time()
    for k in (1, 0, 2):
        _touch(plan.run / f"fold{k}" / "best.pt", now - 100)
    assert checkpoints(plan.run) == [plan.run / f"fold{k}" / "best.pt" for k in range(3)], "k-fold: every fold"
    assert export_argv(plan)[:4] == ["--checkpoint", *(str(plan.run / f"fold{k}" / "best.pt") for k in range(3))]
    _touch(plan.model, now - 50)
    assert export_argv(plan) is None, "a model newer than its checkpoints is kept"
    assert "--resume" not in submit_argv(plan)
    _touch(plan.work / "submission.csv.journal", now - 40)
    assert submit_argv(plan)[-1] == "--resume", "an interrupted submission resumes from its journal"
    _touch(plan.submission, now - 10)
    assert submit_argv(plan) is None
    _touch(plan.run / "fold1" / "best.pt", now)   # a resumed fold found a better epoch
    assert export_argv(plan) is not None, "a newer checkpoint is exported again"


def test_a_started_k_fold_run_resumes_from_its_folder(tmp_path):
    plan = Plan(data=tmp_path / "data", work=tmp_path / "work")
    plan.run.mkdir(parents=True)
    (plan.run / "config.json").write_text(json.dumps({"train": {"folds": 5}}))
    assert train_argv(plan) == ["--resume", str(plan.run)]
    (plan.run / "summary.json").write_text("{}")   # written once every fold is done
    assert train_argv(plan) is None


def test_a_folder_that_is_not_a_data_set_is_one_line(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a competition data folder" in err[0] and "mask-data synth" in err[0], err
