"""mask-export --int8 --int8-min-agreement: agreement measured on held-out check images; below the
threshold the export refuses (exit 2, one line, no .onnx written); a reachable threshold writes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export.cli import build_parser, main
from export.config import ExportConfig
from export.pipeline import int8_image_sets


@pytest.fixture(scope="module")
def check_dir(synth_root):
    return synth_root / "eval" / "images"


def _export(trained_run, out, *extra):
    return main(["--checkpoint", str(trained_run / "best.pt"), "--out", str(out), "--int8", "-q",
                 "--int8-calibration-images", "16", "--int8-check-images", *extra])


def test_unreachable_threshold_refuses_and_writes_nothing(trained_run, check_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    rc = _export(trained_run, out, str(check_dir), "--int8-min-agreement", "1.01")
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"an unreachable threshold must exit 2, got {rc}"
    assert len(err.splitlines()) == 1 and "below --int8-min-agreement 1.01" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused export must leave no file behind"


def test_reachable_threshold_writes_and_reports(trained_run, check_dir, tmp_path):
    out, report = tmp_path / "model.onnx", tmp_path / "r.json"
    rc = _export(trained_run, out, str(check_dir), "--int8-min-agreement", "0.5", "--report", str(report))
    assert rc == 0, "a reachable threshold must export"
    assert out.with_name("model.int8.onnx").is_file(), "the INT8 file was not written"
    int8 = json.loads(report.read_text())["variants"]["int8"]
    n_eval = sum(1 for _ in check_dir.iterdir())
    assert int8["images"] == n_eval, f"agreement must be measured on all {n_eval} check images, got {int8['images']}"
    assert 0.5 <= int8["argmax_agreement"] <= 1.0, int8


def test_calibration_and_check_sets_are_disjoint(trained_run, synth_root, tmp_path):
    from training.checkpoint import load_checkpoint

    train = synth_root / "train" / "images"
    cfg = ExportConfig.from_args(build_parser().parse_args(
        ["--checkpoint", "x.pt", "--out", str(tmp_path / "m.onnx"), "--int8", "--int8-calibration-images", "20",
         "--int8-check-images", str(train)]))
    calib, check = int8_image_sets(cfg, [load_checkpoint(str(trained_run / "best.pt"))], [])
    assert len(calib) == 20, f"asked 20 calibration images, got {len(calib)}"
    assert all(str(p).startswith(str(train)) for p in calib), "default calibration must come from the training data"
    assert not set(calib) & set(check), "calibration images must not be counted in the agreement"
    from export.parity import list_images

    assert len(check) == len(list_images(train, 0)) - 20, "every other training image is a check image"


def test_min_agreement_needs_int8(trained_run, tmp_path, capsys):
    rc = main(["--checkpoint", str(trained_run / "best.pt"), "--out", str(tmp_path / "m.onnx"),
               "--int8-min-agreement", "0.9"])
    assert rc == 2 and "needs --int8" in capsys.readouterr().err, "the guard without --int8 must be an error"


def test_bad_int8_options_are_refused_before_any_checkpoint_is_read(tmp_path, capsys):
    rc = main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx"), "--int8",
               "--int8-calibration-images", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--int8-calibration-images must be >= 1, got 0" in err, err
    assert "missing.pt" not in err, "the options must be checked before the checkpoint is loaded"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calibration_methods_quantize(onnx_model, synth_root, tmp_path, method):
    import onnx

    from export.parity import list_images, load_batch
    from export.variants import compare_variant, to_int8
    from maskdata.artifact import read_metadata

    pre = read_metadata(onnx_model).preprocess
    batch = load_batch(list_images(synth_root / "eval" / "images", 24), pre)
    dst = to_int8(onnx_model, tmp_path / "m.int8.onnx", batch, method=method)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(dst)).graph.node), f"{method}: not quantized"
    report = compare_variant(onnx_model, dst, batch, timing=False)
    assert report.argmax_agreement > 0.5 and np.isfinite(report.max_abs_diff), report


def test_without_check_images_the_calibration_folders_other_images_are_checked(trained_run, synth_root, tmp_path):
    from export.parity import list_images
    from training.checkpoint import load_checkpoint

    train = synth_root / "train" / "images"
    cfg = ExportConfig.from_args(build_parser().parse_args(
        ["--checkpoint", "x.pt", "--out", str(tmp_path / "m.onnx"), "--int8", "--int8-calibration-images", "20"]))
    parity = list_images(train, 8)
    calib, check = int8_image_sets(cfg, [load_checkpoint(str(trained_run / "best.pt"))], parity)
    ckpt = load_checkpoint(str(trained_run / "best.pt"))
    held_out = set(ckpt["split"]["val_people"])
    assert check is not None, "with a training folder on this machine the check set must not fall back to 8 parity images"
    assert {p.parent.name for p in check} <= held_out, "only the people the model did not train on are checked"
    expected = [p for p in list_images(train, 0) if p.parent.name in held_out and p not in set(calib)]
    assert sorted(check) == sorted(expected) and not set(calib) & set(check), \
        f"every held-out image not calibrated on is a check image: {len(check)} vs {len(expected)}"
    every = ExportConfig.from_args(build_parser().parse_args(
        ["--checkpoint", "x.pt", "--out", str(tmp_path / "m.onnx"), "--int8", "--int8-calibration-images", "100000"]))
    calib_all, check_all = int8_image_sets(every, [ckpt], parity)
    assert not {p.parent.name for p in calib_all} & held_out, "calibration takes the people trained on first"
    assert sorted(check_all) == sorted(p for p in list_images(train, 0) if p.parent.name in held_out), \
        "however many calibration images are asked for, the held-out people stay for the check"
