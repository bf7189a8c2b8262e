"""The run folder's TensorBoard event file, read back with tensorboard's EventAccumulator."""
from __future__ import annotations

import csv

import pytest

from training.cli import main as train_main

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def _events(folder):
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_confusion_and_hparams_match_metrics_csv(synth_root, tmp_path):
    out = tmp_path / "run"
    assert train_main(["--data-dir", str(synth_root / "train"), "--out", str(out), "--model", "tiny_cnn",
                       "--epochs", "2", "--batch-size", "32", "--resize", "64", "48", "--workers", "0",
                       "--no-progress"]) == 0
    acc = _events(out)
    tags = acc.Tags()
    want = {"train/loss", "train/lr", "train/img_s", "val/loss", "val/f1", "val/acc", "val/f1_mask", "val/f1_gender",
            "val/f1_age", "val/roc_auc", "calibration/ece_before", "calibration/ece_after"}
    assert want <= set(tags["scalars"]), f"missing scalars {want - set(tags['scalars'])}"
    assert "val/confusion" in tags["images"], tags["images"]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    for tag, col in (("train/loss", "train_loss"), ("val/f1", "val_f1"), ("val/acc", "val_acc"), ("train/lr", "lr")):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [1, 2], f"{tag} steps {got}"
        for (_, v), r in zip(got, rows):
            assert v == pytest.approx(float(r[col]), rel=1e-4, abs=1e-6), f"{tag} {v} != metrics.csv {r[col]}"
    best = next(r for r in rows if r["ece_before"])
    assert acc.Scalars("calibration/ece_after")[0].value == pytest.approx(float(best["ece_after"]), abs=1e-5)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["model.arch"].string_value == "tiny_cnn" and hp["train.epochs"].number_value == 2, dict(hp)
    best_f1 = max(float(r["val_f1"]) for r in rows)
    assert acc.Scalars("hparam/best_f1")[0].value == pytest.approx(best_f1, abs=1e-5), "best metric in hparams"
    assert (out / "reliability.png").is_file() and (out / "val_report.csv").is_file()


@pytest.mark.slow
def test_no_tensorboard_and_kfold_names_each_fold(synth_root, tmp_path):
    off = tmp_path / "off"
    assert train_main(["--data-dir", str(synth_root / "train"), "--out", str(off), "--model", "tiny_cnn",
                       "--epochs", "1", "--resize", "64", "48", "--workers", "0", "--no-progress",
                       "--no-tensorboard"]) == 0
    assert not list(off.glob("**/events.out.tfevents.*")), "--no-tensorboard must write no event file"
    cv = tmp_path / "cv"
    assert train_main(["--data-dir", str(synth_root / "train"), "--out", str(cv), "--model", "tiny_cnn",
                       "--epochs", "1", "--resize", "64", "48", "--workers", "0", "--no-progress",
                       "--folds", "2"]) == 0
    for f in (0, 1):
        assert _events(cv / f"fold{f}").Scalars("val/f1"), f"fold{f} has no val/f1 of its own"
