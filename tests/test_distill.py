"""Distillation and pseudo-labels: the loss against hand-computed values, teacher files (OOF, ONNX,
cached), pseudo-labelled images never in validation (single run and k-fold), and every bad-input error."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdata import labels
from training.distillation import distill, teacher
from training.augment import BatchMix
from training.cli import main
from training.losses import create_criterion
from training.soft_targets import SoftAware

ROOT = Path(__file__).resolve().parents[1]
C = labels.NUM_CLASSES
TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "64", "48", "--workers", "0", "--no-progress",
        "--no-tensorboard", "--epochs", "1"]


def _packed(y: torch.Tensor, teacher_logp: torch.Tensor, T: float) -> torch.Tensor:
    return distill.pack(torch.nn.functional.one_hot(y, C), distill.tempered(teacher_logp, T))


def _batch(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g) * 2
    y = torch.randint(0, C, (n,), generator=g)
    t_logp = torch.log_softmax(torch.randn(n, C, generator=g) * 3, dim=1)
    return logits, y, t_logp


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("spec", ["cross_entropy", "focal", "label_smoothing", "f1", "focal:0.6,f1:0.4"])
def test_weight_zero_is_exactly_the_plain_loss(spec):
    logits, y, t_logp = _batch(1)
    plain = create_criterion(spec)
    got = distill.DistillLoss(create_criterion(spec), weight=0.0, temperature=3.0)(logits, _packed(y, t_logp, 3.0))
    assert torch.equal(got, plain(logits, y)), f"{spec}: W=0 gave {got} instead of the plain {plain(logits, y)}"


def _hand_kl(student_logits: np.ndarray, teacher_logp: np.ndarray, T: float) -> float:
    """KL(teacher_T || student_T) per image, batch mean, written out with numpy in float64."""
    def softmax(z):
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    q, p = softmax(teacher_logp / T), softmax(student_logits / T)
    return float(np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1)))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_loss_matches_hand_computed_value(T):
    logits, y, t_logp = _batch(2)
    w = 0.3
    ce = float(torch.nn.functional.cross_entropy(logits, y))
    want = (1 - w) * ce + w * T * T * _hand_kl(logits.double().numpy(), t_logp.double().numpy(), T)
    got = float(distill.DistillLoss(create_criterion("cross_entropy"), w, T)(logits, _packed(y, t_logp, T)))
    assert math.isclose(got, want, rel_tol=1e-5), f"T={T}: loss {got} != hand-computed {want}"


def test_temperature_scales_the_soft_term_by_t_squared():
    """Teacher = student at every T gives KL 0 (the task term only); scaling both sets of logits by T
    leaves the tempered KL unchanged, so the soft term grows exactly by T^2."""
    logits, y, t_logp = _batch(3)
    task = float(torch.nn.functional.cross_entropy(logits, y))
    same = distill.DistillLoss(create_criterion("cross_entropy"), 0.5, 3.0)(
        logits, _packed(y, torch.log_softmax(logits, 1), 3.0))
    assert math.isclose(float(same), 0.5 * task, rel_tol=1e-5), f"KL of a teacher equal to the student: {same}"
    soft = {}
    for T in (1.0, 3.0):
        scaled, t_scaled = logits * T, torch.log_softmax(t_logp * T, 1)
        full = float(distill.DistillLoss(create_criterion("cross_entropy"), 1.0, T)(scaled, _packed(y, t_scaled, T)))
        soft[T] = full
    assert math.isclose(soft[3.0], 9.0 * soft[1.0], rel_tol=1e-4), f"soft term at T=3 is not 9x T=1: {soft}"


def test_multi_head_kl_is_on_the_derived_18_class_distribution():
    from training.models import create_model

    net = create_model("tiny_cnn", "multi").eval()
    x = torch.randint(0, 256, (4, 128, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        heads = net.forward_heads(x)
    joint = heads["logits"]
    # the 18 logits are log p_mask + log p_gender + log p_age: a distribution already
    assert torch.allclose(joint.exp().sum(1), torch.ones(4), atol=1e-5)
    _, y, t_logp = _batch(4, n=4)
    got = float(distill.DistillLoss(create_criterion("cross_entropy"), 1.0, 2.0)(joint, _packed(y, t_logp, 2.0)))
    want = 4.0 * _hand_kl(joint.double().numpy(), t_logp.double().numpy(), 2.0)
    assert math.isclose(got, want, rel_tol=1e-5), f"multi-head KL {got} != hand-computed {want}"


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixing_blends_teacher_targets_exactly_like_labels(mixup, cutmix):
    x = torch.randint(0, 256, (5, 16, 12, 3), dtype=torch.uint8)
    _, y, t_logp = _batch(5, n=5)
    mix = BatchMix(mixup, cutmix, 1.0, seed=7)
    packed = _packed(y, t_logp, 2.0)
    x_mix, p_mix = distill.PackedMix(mix)(x, packed, epoch=1, step=3)
    x_ref, y_ref = mix(x, y, 1, 3)
    assert torch.equal(x_mix, x_ref), "packed mixing must mix the images exactly as BatchMix does"
    assert torch.allclose(p_mix[:, :C], y_ref, atol=1e-6), "task half != BatchMix's soft labels"
    # the same per-image blend weights for the teacher half: image i holds lam of itself, 1 - lam of another
    lam = y_ref[torch.arange(5), y].max() if not (y == y.roll(1)).any() else None
    q = packed[:, C:]
    assert torch.allclose(p_mix[:, C:].sum(1), torch.ones(5), atol=1e-6), "mixed teacher rows are not distributions"
    if lam is not None and float(lam) < 1:
        want = float(lam) * q + (1 - float(lam)) * q.roll(1, 0)
        assert torch.allclose(p_mix[:, C:], want, atol=1e-5), "teacher half is not lam * q_i + (1 - lam) * q_j"


def test_soft_task_target_goes_to_the_soft_form():
    logits, y, t_logp = _batch(6)
    soft = torch.softmax(torch.randn(6, C), 1)
    got = distill.DistillLoss(create_criterion("focal"), 0.0, 1.0)(logits, distill.pack(soft, soft))
    want = SoftAware(create_criterion("focal"))(logits, soft)
    assert torch.equal(got, want), "a soft task target must use the criterion's soft form"


# ---------------------------------------------------------------- teacher files


@pytest.fixture(scope="module")
def kfold_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfold-teacher")
    assert main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--folds", "2"]) == 0
    return out


def _rewrite(src: Path, dst: Path, change) -> Path:
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    header, rows = change(list(rows[0]), rows)
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return dst


def test_oof_file_carries_log_probabilities_matching_its_probabilities(kfold_run):
    table = teacher.read_teacher(kfold_run / "oof_predictions.csv")
    with open(kfold_run / "oof_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(C)] for r in rows])
    assert table.exact and table.logp.shape == (len(rows), C), "oof_predictions.csv must carry logp_0..17"
    assert np.abs(np.exp(table.logp) - probs).max() < 1e-5, "logp columns disagree with the prob columns"
    assert table.preprocess is not None and table.preprocess["height"] == 64, "the run's config.json is its record"


def test_oof_teacher_trains_with_mixup_and_is_recorded(kfold_run, synth_root, tmp_path):
    out = tmp_path / "student"
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--teacher",
               str(kfold_run / "oof_predictions.csv"), "--distill-weight", "0.7", "--distill-temperature", "3",
               "--mixup", "0.4", "--cutmix", "1.0", "--head", "single"])
    assert rc == 0
    rec = json.loads((out / "config.json").read_text())["distill"]
    assert rec["distill_weight"] == 0.7 and rec["distill_temperature"] == 3.0 and rec["teacher_log_probs"], rec
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["distill"]["teacher"] == str(kfold_run / "oof_predictions.csv"), ck.get("distill")
    assert ck["config"]["loss"]["teacher"] == str(kfold_run / "oof_predictions.csv")


def test_probabilities_only_file_works_at_t1_and_is_refused_at_t2(kfold_run, synth_root, tmp_path, capsys, caplog):
    src = _rewrite(kfold_run / "oof_predictions.csv", tmp_path / "probs_only.csv",
                   lambda h, rows: ([c for c in h if not c.startswith("logp_")], rows))
    base = ["--data-dir", str(synth_root / "train"), *TINY, "--teacher", str(src)]
    assert main([*base, "--out", str(tmp_path / "t2"), "--distill-temperature", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "probabilities only" in err and "\n" not in err, err
    caplog.set_level("INFO", logger="training")
    assert main([*base, "--out", str(tmp_path / "t1"), "--distill-temperature", "1"]) == 0
    assert "has probabilities only" in caplog.text and "T = 1" in caplog.text, "T=1 use must say so"


def test_onnx_teacher_runs_once_and_is_cached(onnx_model, synth_root, tmp_path):
    from training.cli import build_parser, config_from_args
    from serving.predictor import Predictor

    args = build_parser().parse_args(["--data-dir", str(synth_root / "train"), "--out", str(tmp_path), *TINY,
                                      "--teacher", str(onnx_model)])
    cfg = config_from_args(args)
    from maskdata.layout import read_train_dir
    samples, _ = read_train_dir(synth_root / "train")
    path = teacher.prepare_onnx_teacher(cfg, samples, progress=False)
    assert path == tmp_path / teacher.CACHE_NAME and path.is_file(), path
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["images"] == len(samples) and meta["preprocess"]["height"] == 64, meta
    stamp = path.stat().st_mtime_ns
    assert teacher.prepare_onnx_teacher(cfg, samples, progress=False) == path
    assert path.stat().st_mtime_ns == stamp, "a current cache must be reused, not rewritten"
    table = teacher.read_teacher(path)
    assert table.exact, "the ONNX teacher file carries log-probabilities"
    pred = Predictor(str(onnx_model))
    few = samples[:5]
    direct = pred.infer(np.stack([pred.load(s.path) for s in few]))
    got = np.exp(table.rows_for([teacher.image_key(s.path) for s in few]))
    assert np.abs(got - direct).max() < 1e-4, "teacher file != the model's probabilities on the same images"


# ---------------------------------------------------------------- pseudo-labels


@pytest.fixture(scope="module")
def eval_probs(onnx_model, synth_root, tmp_path_factory):
    from serving.submit_cli import main as submit

    out = tmp_path_factory.mktemp("pseudo")
    ev = synth_root / "eval"
    assert submit(["--info", str(ev / "info.csv"), "--images", str(ev / "images"), "--out", str(out / "sub.csv"),
                   "--model", str(onnx_model), "--probs", str(out / "probs.csv"), "--no-progress", "-q"]) == 0
    return out / "probs.csv"


def test_submit_probs_carry_log_probabilities(eval_probs):
    table = teacher.read_teacher(eval_probs)
    with open(eval_probs, newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = np.array([[float(r[f"prob_{c}"]) for c in range(C)] for r in rows])
    assert table.exact and np.allclose(np.exp(table.logp), p, rtol=1e-6, atol=1e-9), "logp != log(p)"


def test_older_probs_spellings_are_still_read(eval_probs, tmp_path):
    """mask-submit --probs wrote p0../logp0.. before every file used prob_/logp_: such a file is the
    same teacher."""
    text = eval_probs.read_text()
    header, rest = text.split("\n", 1)
    old = tmp_path / "old_probs.csv"
    old.write_text(header.replace("prob_", "p").replace("logp_", "logp") + "\n" + rest)
    assert "prob_" not in old.read_text().split("\n", 1)[0], "the old file must not carry the new names"
    new_table, old_table = teacher.read_teacher(eval_probs), teacher.read_teacher(old)
    assert old_table.exact and list(old_table.keys) == list(new_table.keys), "log-probabilities of the same rows"
    assert np.array_equal(old_table.logp, new_table.logp), "old and new spellings must read the same values"


def _eval_paths(synth_root) -> set[str]:
    return {str(p.resolve()) for p in (synth_root / "eval" / "images").iterdir()}


@pytest.mark.slow
def test_pseudo_labels_train_but_never_validate_single_run(onnx_model, eval_probs, synth_root, tmp_path):
    out = tmp_path / "pseudo"
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--teacher", str(onnx_model),
               "--pseudo-label", str(eval_probs), "--pseudo-threshold", "0"])
    assert rc == 0
    rec = json.loads((out / "config.json").read_text())["distill"]
    n_eval = len(_eval_paths(synth_root))
    assert rec["pseudo_taken"] == rec["pseudo_candidates"] == n_eval, f"threshold 0 takes every eval image: {rec}"
    with open(out / "val_predictions.csv", newline="") as fh:
        val = {str(Path(r["path"]).resolve()) for r in csv.DictReader(fh)}
    assert not val & _eval_paths(synth_root), "a pseudo-labelled image entered validation"
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["distill"]["pseudo_taken"] == n_eval, ck["distill"]

    from export.cli import main as export
    from maskdata.artifact import read_metadata
    assert export(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--no-explain", "-q"]) == 0
    src = read_metadata(tmp_path / "m.onnx").sources[0]
    assert src["distill"]["pseudo_taken"] == n_eval, f"export metadata must show the pseudo-label count: {src}"
    recorded = [v for v in ck["distill"].values() if isinstance(v, str) and os.path.isabs(v)]
    assert recorded, f"the checkpoint records its pseudo-label file by absolute path: {ck['distill']}"
    shown = [v for v in src["distill"].values() if isinstance(v, str) and os.path.isabs(v)]
    assert shown == [], f"the exported artifact records machine paths: {src['distill']}"


@pytest.mark.slow
def test_pseudo_labels_never_validate_in_any_fold(eval_probs, synth_root, tmp_path):
    out = tmp_path / "kf"
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--folds", "2",
               "--pseudo-label", str(eval_probs), "--pseudo-threshold", "0.0"])
    assert rc == 0
    eval_paths = _eval_paths(synth_root)
    for fold in (out / "fold0", out / "fold1"):
        with open(fold / "val_predictions.csv", newline="") as fh:
            val = {str(Path(r["path"]).resolve()) for r in csv.DictReader(fh)}
        assert val and not val & eval_paths, f"{fold.name}: a pseudo-labelled image entered validation"
        assert json.loads((fold / "config.json").read_text())["distill"]["pseudo_taken"] == len(eval_paths)


def test_threshold_selects_by_teacher_confidence(eval_probs, synth_root):
    from training.cli import build_parser, config_from_args
    from training.distillation.pseudo import select_pseudo
    from maskdata.layout import read_train_dir
    from maskdata.preprocess import Preprocess

    table = teacher.read_teacher(eval_probs)
    conf = np.exp(table.logp).max(1)
    cut = float(np.median(conf))
    cfg = config_from_args(build_parser().parse_args(
        ["--data-dir", str(synth_root / "train"), "--out", "x", *TINY, "--pseudo-label", str(eval_probs),
         "--pseudo-threshold", str(cut)]))
    samples, _ = read_train_dir(synth_root / "train")
    taken, logp, rec = select_pseudo(cfg, samples, Preprocess(64, 48, aspect="crop"))
    assert len(taken) == int((conf >= cut).sum()) == rec["pseudo_taken"] and len(logp) == len(taken), rec


# ---------------------------------------------------------------- bad input: one line, exit 2


def _fails(argv: list[str], capsys, *words: str) -> str:
    assert main(argv) == 2, f"expected exit 2 for {argv}"
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, f"not a one-line error: {err!r}"
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    return err


def test_bad_teacher_files_are_one_line_errors(kfold_run, synth_root, tmp_path, capsys):
    oof = kfold_run / "oof_predictions.csv"
    base = ["--data-dir", str(synth_root / "train"), "--out", str(tmp_path / "r"), *TINY]
    missing = _rewrite(oof, tmp_path / "missing.csv", lambda h, rows: (h, rows[5:]))
    _fails([*base, "--teacher", str(missing)], capsys, "no row for", "training images")
    wrong = _rewrite(oof, tmp_path / "wrong.csv",
                     lambda h, rows: ([c for c in h if c not in ("prob_17", "logp_17")], rows))
    _fails([*base, "--teacher", str(wrong)], capsys, "17 classes", "18")

    def doubled(h, rows):
        rows[3] = {**rows[3], **{f"logp_{c}": str(float(rows[3][f"logp_{c}"]) + 0.7) for c in range(C)}}
        return h, rows
    notdist = _rewrite(oof, tmp_path / "notdist.csv", doubled)
    _fails([*base, "--teacher", str(notdist)], capsys, "not probability distributions")
    _fails([*base, "--teacher", str(tmp_path / "nope.csv")], capsys, "not found")


@pytest.mark.slow
def test_teacher_seeing_another_view_is_refused(onnx_model, synth_root, tmp_path, capsys):
    base = ["--data-dir", str(synth_root / "train"), *TINY, "--teacher", str(onnx_model)]
    # the tiny ONNX model was trained with the default aspect policy (crop) at 64x48
    _fails([*base, "--out", str(tmp_path / "a"), "--aspect", "pad"], capsys, "aspect policy crop (teacher) vs pad")
    _fails([*base, "--out", str(tmp_path / "b"), "--resize", "64", "64"], capsys, "64x48 (teacher) vs 64x64")
    _fails([*base, "--out", str(tmp_path / "c"), "--crop", "center:300,200"], capsys, "crop none (teacher)")


def test_view_differences_allow_resolution_only():
    from maskdata.preprocess import Preprocess

    t = {"height": 96, "width": 72, "crop": "", "aspect": "crop"}
    assert teacher.view_differences(t, Preprocess(64, 48, aspect="crop")) == [], "same view at lower resolution"
    assert teacher.view_differences({**t, "aspect": "stretch"}, Preprocess(64, 64, aspect="stretch")) == []


def test_option_checks(synth_root, tmp_path, capsys):
    base = ["--data-dir", str(synth_root / "train"), "--out", str(tmp_path / "r"), *TINY]
    some = next((synth_root / "train").glob("*.csv"))
    _fails([*base, "--teacher", str(some), "--distill-weight", "1.5"], capsys, "--distill-weight")
    _fails([*base, "--teacher", str(some), "--distill-temperature", "0"], capsys, "--distill-temperature")
    _fails([*base, "--pseudo-images", str(tmp_path)], capsys, "--pseudo-label")


@pytest.mark.slow
def test_ddp_distillation_with_onnx_teacher_and_pseudo_labels(onnx_model, eval_probs, synth_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training",
           "--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--device", "cpu",
           "--teacher", str(onnx_model), "--pseudo-label", str(eval_probs), "--pseudo-threshold", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "world size 2" in proc.stderr
    assert (out / teacher.CACHE_NAME).is_file(), "rank 0 must have written the teacher cache"
    rec = json.loads((out / "config.json").read_text())["distill"]
    assert rec["pseudo_taken"] == len(_eval_paths(synth_root)), rec
