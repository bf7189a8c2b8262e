"""Training engine: accumulation, outputs, resume equivalence, person-level splits, k-fold, bad input.

Uses the shared ``synth_root`` (24 people) and ``trained_run`` fixtures; every extra run is a
tiny_cnn at 32×24 pixels so the file stays fast on a shared 2-core machine.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from training import data

from training.loop import engine
from training.checkpoint import load_checkpoint
from training.cli import main
from training.optim import Schedule

TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "32", "24", "--workers", "0", "--no-progress"]


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- accumulation -------------------------------------------------------------------------------

class _Counting(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


def _batches(sizes: list[int], seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 18, (n,), generator=g), torch.arange(n)) for n in sizes]


@pytest.mark.parametrize("accum,n_batches,want_updates", [(1, 7, 7), (3, 7, 3), (3, 6, 2), (4, 3, 1)])
def test_accumulation_updates_per_epoch_include_short_last_group(accum, n_batches, want_updates):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 18)
    _Counting.steps = 0
    opt = _Counting(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = engine.train_one_epoch(model, _batches([5] * n_batches), torch.nn.CrossEntropyLoss(), opt,
                                 Schedule(None, False), scaler, device=torch.device("cpu"), accum_steps=accum,
                                 progress=False)
    assert _Counting.steps == want_updates == out["updates"], \
        f"{n_batches} batches, accum {accum}: {_Counting.steps} optimizer steps, expected {want_updates}"


def test_accumulated_update_is_mean_gradient_of_its_group():
    """Groups [3, 3, 1] of 7 batches: each SGD update must apply the mean of its micro-batch gradients."""
    batches = _batches([4, 4, 4, 4, 4, 4, 2], seed=1)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 18)
    ref = torch.nn.Linear(4, 18)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    engine.train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt, Schedule(None, False),
                           torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), accum_steps=3,
                           progress=False)
    for group in (batches[0:3], batches[3:6], batches[6:7]):
        grads = [torch.zeros_like(p) for p in ref.parameters()]
        for x, y, _ in group:
            ref.zero_grad()
            torch.nn.functional.cross_entropy(ref(x), y).backward()
            for g, p in zip(grads, ref.parameters()):
                g += p.grad / len(group)
        with torch.no_grad():
            for g, p in zip(grads, ref.parameters()):
                p -= 0.5 * g
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), f"{name}: accumulated update differs by {(p - q).abs().max():.2e}"


# --- data ---------------------------------------------------------------------------------------

def test_sampler_is_deterministic_and_shards_cover_everything():
    s = data.EpochSampler(10, seed=3)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first, "same (seed, epoch) must give the same order and augmentation seeds"
    s.set_epoch(3)
    assert [k[0] for k in s] != [k[0] for k in first], "a new epoch must reshuffle"
    shards = [data.EpochSampler(10, shuffle=False, rank=r, world=3, pad=False, augment=False) for r in range(3)]
    assert sorted(i for sh in shards for i in sh) == list(range(10)), "eval shards must cover each item once"
    train = [data.EpochSampler(10, seed=0, rank=r, world=3) for r in range(3)]
    assert {len(list(t)) for t in train} == {4}, "training shards must be padded to equal length"


def test_augmentation_is_a_function_of_its_seed_and_keeps_shape():
    img = torch.randint(0, 256, (3, 32, 24), dtype=torch.uint8)
    aug = data.create_augment("strong")
    a = aug(img, torch.Generator().manual_seed(5))
    b = aug(img, torch.Generator().manual_seed(5))
    c = aug(img, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == img.shape, (a.dtype, a.shape)
    assert torch.equal(a, b) and not torch.equal(a, c), "augmentation must depend only on its seed"
    assert torch.equal(data.create_augment("none")(img, torch.Generator()), img), "'none' must be the identity"
    with pytest.raises(ValueError, match="unknown augmentation 'wild'; expected one of"):
        data.create_augment("wild")


def test_oversample_repeats_only_rare_classes():
    targets = [0] * 6 + [1] * 6 + [2] * 2
    idx = data.oversample(list(range(14)), targets, 3)
    counts = np.bincount([targets[i] for i in idx])
    assert counts.tolist() == [6, 6, 6], f"rare class 2 should be tripled: {counts.tolist()}"


# --- a full run ---------------------------------------------------------------------------------

def test_trained_run_outputs(trained_run, synth_root):
    for name in ("best.pt", "last.pt", "config.json", "metrics.csv", "curves.png", "confusion.png", "split.json",
                 "val_predictions.csv"):
        assert (trained_run / name).is_file(), f"{name} missing from the run folder"
    rows = _rows(trained_run / "metrics.csv")
    assert len(rows) == 1 and list(rows[0]) == ["epoch", "lr", "train_loss", "val_loss", "val_acc", "val_f1",
                                                 "val_f1_mask", "val_f1_gender", "val_f1_age", "train_img_s",
                                                 "seconds", "val_roc_auc", "ece_before", "ece_after"], rows
    best = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    assert best["metrics"]["f1"] == pytest.approx(float(rows[0]["val_f1"]), abs=1e-5), "best.pt metrics != csv"
    assert set(best["metrics"]) == {"f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss", "temperature",
                                    "ece_before", "ece_after"}, best["metrics"]
    assert best["data_fingerprint"] and 0 < len(best["val_images"]) <= 64, "fingerprint/val_images missing"
    assert all(p.startswith("/") for p in best["val_images"]), "val_images must be absolute paths"
    assert "optimizer" in load_checkpoint(trained_run / "last.pt"), "last.pt must carry resume state"
    split = json.loads((trained_run / "split.json").read_text())
    assert not set(split["train_people"]) & set(split["val_people"]), "a person is on both sides of the split"
    preds = _rows(trained_run / "val_predictions.csv")
    assert {r["person"] for r in preds} == set(split["val_people"]), "val predictions cover other people"
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "tiny_cnn" and cfg["data"]["height"] == 64, cfg


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(synth_root, tmp_path, monkeypatch, capsys):
    """2 epochs straight == 1 epoch, Ctrl-C during the 2nd, then --resume last.pt."""
    args = ["--data-dir", str(synth_root / "train"), *TINY, "--epochs", "2", "--seed", "1", "--augment", "strong"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    real, calls = engine.train_one_epoch, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during epoch 2
        return real(*a, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    assert main([*args, "--out", str(tmp_path / "split")]) == 130
    assert "continue with --resume" in capsys.readouterr().err
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1, "last.pt must hold the finished epoch"
    assert not list((tmp_path / "split").glob(".*")), "an interrupted run left temporary files"
    assert main(["--resume", str(tmp_path / "split" / "last.pt"), "--workers", "0", "--no-progress"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2, (a["epoch"], b["epoch"])
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6, rtol=0), \
            f"{k}: resumed weights differ by {(v.float() - b['state_dict'][k].float()).abs().max():.2e}"
    ra, rb = _rows(tmp_path / "straight" / "metrics.csv"), _rows(tmp_path / "split" / "metrics.csv")
    for x, y in zip(ra, rb):
        for col in ("lr", "train_loss", "val_loss", "val_f1"):
            assert float(x[col]) == pytest.approx(float(y[col]), rel=1e-5, abs=1e-6), f"epoch {x['epoch']} {col}"


@pytest.mark.slow
def test_kfold_with_accumulation_and_mixed_loss(synth_root, tmp_path):
    out = tmp_path / "cv"
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--epochs", "1", "--folds", "2",
               "--accum-steps", "3", "--criterion", "focal:0.6,f1:0.4", "--sampler", "weighted",
               "--age-bins", "30,58", "--head", "single", "--scheduler", "onecycle", "--clip-grad", "1.0"])
    assert rc == 0, f"k-fold run failed with {rc}"
    splits = [json.loads((out / f"fold{k}" / "split.json").read_text()) for k in range(2)]
    for k, s in enumerate(splits):
        assert not set(s["train_people"]) & set(s["val_people"]), f"fold {k}: person leak"
    assert not set(splits[0]["val_people"]) & set(splits[1]["val_people"]), "folds' val people overlap"
    everyone = set(splits[0]["val_people"]) | set(splits[1]["val_people"])
    assert len(everyone) == 24, f"folds' val sets must cover all 24 people, got {len(everyone)}"
    oof = _rows(out / "oof_predictions.csv")
    assert len(oof) == 168 and len({r["path"] for r in oof}) == 168, f"OOF has {len(oof)} rows for 168 images"
    summary = json.loads((out / "summary.json").read_text())
    f1s = [load_checkpoint(out / f"fold{k}" / "best.pt")["metrics"]["f1"] for k in range(2)]
    assert summary["fold_f1"] == pytest.approx(f1s, abs=1e-6), (summary["fold_f1"], f1s)
    assert summary["f1_mean"] == pytest.approx(np.mean(f1s)) and summary["f1_std"] == pytest.approx(np.std(f1s, ddof=1))
    ck = load_checkpoint(out / "fold0" / "best.pt")
    assert ck["age_bins"] == [30, 58] and ck["head"] == "single", (ck["age_bins"], ck["head"])


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,needle", [
    (["--model", "resnet9"], "unknown model 'resnet9'; expected one of"),
    (["--criterion", "focal:zero"], "bad criterion spec"),
    (["--criterion", "dice"], "unknown loss 'dice'"),
    (["--optimizer", "lamb"], "unknown optimizer 'lamb'; expected one of ['adam', 'adamw', 'sgd']"),
    (["--scheduler", "poly"], "unknown scheduler 'poly'; expected one of"),
    (["--accum-steps", "0"], "--accum-steps must be >= 1"),
    (["--age-bins", "60,30"], "age bins"),
    (["--weights", "/nonexistent/w.pth"], "weights file not found"),
])
def test_bad_options_fail_before_training(extra, needle, tmp_path, capsys):
    rc = main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"{extra}: exit code {rc}"
    assert err.startswith("error: ") and needle in err and "\n" not in err, f"{extra}: stderr {err!r}"
    assert not (tmp_path / "run").exists(), "nothing may be written before the options are valid"


def test_data_dir_without_usable_images_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "train.csv").write_text("id,gender,race,age,path\n1,male,Asian,20,1_male_Asian_20\n")
    rc = main(["--data-dir", str(tmp_path / "train"), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "no usable images" in err and "\n" not in err, (rc, err)
    assert not (tmp_path / "run" / "last.pt").exists()
