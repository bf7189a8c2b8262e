"""The competition's training loop, written the way its starter ``train.py`` writes it, beside ``mask-train``.

The starter loop does, every epoch:

* a ``torch.utils.data.Dataset`` whose ``__getitem__`` opens the file with PIL and runs a torchvision
  ``Compose([Resize(size, Image.BILINEAR), ToTensor(), Normalize(mean, std)])`` (its
  ``BaseAugmentation``; the competition's mean/std), so every image is decoded again each epoch;
* ``DataLoader(train_set, batch_size=64, num_workers=multiprocessing.cpu_count() // 2, shuffle=True,
  pin_memory=use_cuda, drop_last=True)``; the validation loader the same with ``shuffle=False`` and
  batch 1000 (the starter also sets ``drop_last=True`` there, which on a validation set smaller than
  one batch would validate nothing; here the last partial batch is kept);
* eager FP32: ``model.train()``, ``optimizer.zero_grad()``, ``criterion(model(x), y).backward()``,
  ``optimizer.step()``; validation each epoch under ``torch.no_grad()``.

Same data, split and model on both sides: torchvision ``resnet18`` (random init, 18-way head) at
128×96, batch 64, Adam 1e-3, cross-entropy, no augmentation, the person-level split ``mask-train``
uses for the same seed. ``mask-train`` runs as its own command, in FP32 and in bf16 (``--amp bf16``).
Every run is a separate command with its own peak RSS (``bench.common.run_measured``); the runs are
interleaved seed by seed so background load falls on all of them alike::

    python -m bench.train_baseline --data-dir data/bench/synth120/train --seeds 0 1 --epochs 4

Writes ``bench/results/train_baseline.json`` (rendered into docs/benchmarks.md).
``--one SEED`` runs a single baseline training in this process and prints its JSON line (what the
driver runs as a command).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)
SIZE = (128, 96)
BATCH = 64
LR = 1e-3
# the competition starter's normalization (its BaseAugmentation defaults)
MEAN, STD = (0.548, 0.504, 0.479), (0.237, 0.247, 0.246)


def _split(data_dir: Path, seed: int):
    from maskdata import labels
    from maskdata.layout import read_train_dir
    from maskdata.splits import train_val_split

    samples, _ = read_train_dir(data_dir)
    train_idx, val_idx = train_val_split(samples, 0.2, seed)
    pick = lambda idx: [(samples[i].path, samples[i].label(labels.DEFAULT_AGE_BINS)) for i in idx]  # noqa: E731
    return pick(train_idx), pick(val_idx)


def one_run(data_dir: Path, seed: int, epochs: int) -> dict:
    """One baseline training run; per-epoch train/val seconds, img/s and val macro F1."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from maskdata import metrics

    class MaskDataset(Dataset):
        def __init__(self, items):
            self.items = items
            self.transform = transforms.Compose([transforms.Resize(SIZE, Image.BILINEAR), transforms.ToTensor(),
                                                 transforms.Normalize(mean=MEAN, std=STD)])

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, label = self.items[i]
            return self.transform(Image.open(path)), label

    train_items, val_items = _split(data_dir, seed)
    if len(train_items) < BATCH:
        raise ValueError(f"{len(train_items)} training images: fewer than one batch of {BATCH} (drop_last)")
    torch.manual_seed(seed)
    workers = multiprocessing.cpu_count() // 2
    train_loader = DataLoader(MaskDataset(train_items), batch_size=BATCH, num_workers=workers, shuffle=True,
                              pin_memory=False, drop_last=True)
    val_loader = DataLoader(MaskDataset(val_items), batch_size=1000, num_workers=workers, shuffle=False,
                            pin_memory=False, drop_last=False)
    model = torchvision.models.resnet18(num_classes=18)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    rows = []
    for epoch in range(epochs):
        model.train()
        n, t0 = 0, time.perf_counter()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            n += len(y)
        train_s = time.perf_counter() - t0
        model.eval()
        preds, t1 = [], time.perf_counter()
        with torch.no_grad():
            for x, _ in val_loader:
                preds.append(model(x).argmax(1).numpy())
        val_s = time.perf_counter() - t1
        y_val = np.array([label for _, label in val_items])
        rows.append({"epoch": epoch + 1, "train_images": n, "train_s": train_s, "val_s": val_s,
                     "train_img_s": n / train_s, "val_f1": metrics.report(y_val, np.concatenate(preds))["f1"]})
    return {"epochs": rows, "workers": workers, "torch_threads": torch.get_num_threads()}


def mask_train_argv(data_dir: Path, out: Path, seed: int, epochs: int, amp: str) -> list[str]:
    return ["-m", "training", "--data-dir", str(data_dir), "--out", str(out), "--model", "resnet18", "--head",
            "single", "--resize", str(SIZE[0]), str(SIZE[1]), "--batch-size", str(BATCH), "--optimizer", "adam",
            "--lr", str(LR), "--weight-decay", "0", "--scheduler", "constant", "--warmup-epochs", "0",
            "--augment", "none", "--epochs", str(epochs), "--seed", str(seed), "--amp", amp, "--device", "cpu",
            "--no-progress", "--no-tensorboard"]


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _measured(cmd: list[str]) -> tuple[str, dict]:
    c0 = _children_cpu_s()
    stdout, _, wall, rss = common.run_measured(cmd)
    return stdout, {"wall_s": round(wall, 2), "max_rss_mb": round(rss), "cpu_s": round(_children_cpu_s() - c0, 1)}


def _summary(rows: list[dict], best_f1: float) -> dict:
    images = sum(r["train_images"] for r in rows)
    seconds = sum(r["train_s"] for r in rows)
    return {"train_img_s": images / seconds, "train_s_per_epoch": seconds / len(rows),
            "best_val_f1": best_f1, "last_val_f1": rows[-1]["val_f1"], "epochs": rows}


def run_baseline(data_dir: Path, seed: int, epochs: int) -> dict:
    stdout, res = _measured([sys.executable, "-m", "bench.train_baseline", "--one", str(seed), "--data-dir",
                             str(data_dir), "--epochs", str(epochs)])
    out = json.loads(stdout.strip().splitlines()[-1])
    rows = out["epochs"]
    return {"variant": "competition baseline (FP32)", "seed": seed, **res, "workers": out["workers"],
            **_summary(rows, max(r["val_f1"] for r in rows))}


def run_mask_train(data_dir: Path, seed: int, epochs: int, amp: str, work: Path) -> dict:
    from training.checkpoint import load_checkpoint

    out = work / f"mask-train-{amp}-{seed}"
    _, res = _measured([sys.executable, *mask_train_argv(data_dir, out, seed, epochs, amp)])
    with open(out / "metrics.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    rows = [{"epoch": int(r["epoch"]), "train_images": round(float(r["train_img_s"]) * float(r["seconds"])),
             "train_s": float(r["seconds"]), "train_img_s": float(r["train_img_s"]), "val_f1": float(r["val_f1"])}
            for r in history]
    ck = load_checkpoint(out / "best.pt")
    return {"variant": f"mask-train --amp {amp}", "seed": seed, "precision": ck.get("precision"), **res,
            **_summary(rows, ck["metrics"]["f1"])}


def compare(data_dir: Path, seeds: list[int], epochs: int, amps: list[str]) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="train_baseline_") as tmp:
        for seed in seeds:
            runs.append(run_baseline(data_dir, seed, epochs))
            log.info("baseline seed %d: %.1f img/s, F1 %.4f", seed, runs[-1]["train_img_s"],
                            runs[-1]["best_val_f1"])
            for amp in amps:
                runs.append(run_mask_train(data_dir, seed, epochs, amp, Path(tmp)))
                log.info("mask-train --amp %s seed %d: %.1f img/s, F1 %.4f", amp, seed,
                                runs[-1]["train_img_s"], runs[-1]["best_val_f1"])
    return {"runs": runs, **_ratios_and_f1(runs),
            "commands": {"mask-train": "mask-train " + " ".join(mask_train_argv(data_dir, Path("RUN"), 0, epochs,
                                                                                 "AMP")[2:])}}


def _ratios_and_f1(runs: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r for r in by["competition baseline (FP32)"]}
    return {"speed_vs_baseline": {v: [r["train_img_s"] / base[r["seed"]]["train_img_s"] for r in rs]
                                  for v, rs in by.items()},
            "best_val_f1": {v: [r["best_val_f1"] for r in rs] for v, rs in by.items()}}


def merge(paths: list[Path]) -> dict:
    """One result from invocations that ran different seeds (each compares its own runs within itself)."""
    parts = [json.loads(p.read_text()) for p in paths]
    runs = [r for part in parts for r in part["runs"]]
    first = parts[0]
    return {**first, **_ratios_and_f1(runs), "runs": runs, "command": " ; ".join(p["command"] for p in parts),
            "started": min(p["started"] for p in parts), "finished": max(p["finished"] for p in parts),
            "config": {**first["config"], "seeds": [s for p in parts for s in p["config"]["seeds"]]},
            "parts": [{k: p[k] for k in ("command", "started", "finished", "cpu_monitor")} for p in parts]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="DIR/train (train.csv and images/); required unless --merge")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default %(default)s")
    p.add_argument("--epochs", type=int, default=4, help="default %(default)s")
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], help="mask-train --amp modes to run (default %(default)s)")
    p.add_argument("--one", type=int, metavar="SEED", help="run one baseline training here and print its JSON")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="combine result files of invocations that ran different --seeds into --out, and stop")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "train_baseline.json")
    args = p.parse_args(argv)
    if args.merge:
        common.write_result(args.out, merge(args.merge))
        return 0
    if args.one is not None:
        print(json.dumps(one_run(args.data_dir, args.one, args.epochs)))
        return 0
    common.setup_logging()
    # mask-train sets this before torch loads (training.entry); the baseline's commands get it too, so the
    # comparison is of the loops, not of libgomp's spin-waiting on a shared machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def body() -> None:
        if args.data_dir is None or not (args.data_dir / "train.csv").is_file():
            raise FileNotFoundError(f"no train.csv in {args.data_dir} (--data-dir DIR/train)")
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = compare(args.data_dir, args.seeds, args.epochs, args.amp)
        config = {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "seeds": args.seeds, "epochs": args.epochs, "amp": args.amp, "data_dir": str(args.data_dir),
                  "model": "torchvision resnet18, random init, 18-way head", "input": list(SIZE), "batch": BATCH}
        common.save_run("train_baseline", argv, started, monitor, False, config, result, args.out)

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
