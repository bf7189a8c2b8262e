"""The competition baseline's inference loop, written the way that baseline writes it.

The baseline (the competition's starter ``inference.py`` + ``dataset.TestDataset``) does:

* a ``torch.utils.data.Dataset`` whose ``__getitem__`` runs ``PIL.Image.open(path)`` and a torchvision
  ``Compose([Resize(size, Image.BILINEAR), ToTensor(), Normalize(mean, std)])`` — a full-size decode
  (no JPEG draft), a PIL resize, then conversion to a float tensor and normalization on it;
* a ``DataLoader(dataset, batch_size=args.batch_size, num_workers=multiprocessing.cpu_count() // 2,
  shuffle=False, pin_memory=use_cuda, drop_last=False)`` — the starter's own arguments: batch 1000 by
  default and half the CPUs as worker processes decoding in parallel with the model (on a 2-core
  machine: one worker beside the main process); the default collate;
* the model in ``eval()`` mode under ``torch.no_grad()``, ``argmax`` per batch, predictions
  collected in a Python list and written with ``info.to_csv`` (here the ``csv`` module: pandas is
  not a dependency of this project).

The network is the checkpoint's own ``MaskNet`` with its uint8 front end bypassed, so both sides of
the comparison run the same weights; the baseline feeds it normalized float NCHW like the original.
``timed_run`` repeats the loop with each stage timed in series, for the stage breakdown.

    python -m bench.baseline --checkpoint best.pt --info eval/info.csv --images eval/images --out base.csv

prints one JSON line: ``{"images", "load_s", "loop_s"}`` (``bench.batch_job`` times it as a command);
with ``--stages N`` it prints the serial per-stage seconds over the first N images instead.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from maskdata.io import atomic_path, cpu_workers, read_csv

BATCH_SIZE = 1000   # the starter inference.py's --batch_size default


class TestDataset(Dataset):
    def __init__(self, img_paths: list[str], resize: tuple[int, int], mean, std):
        self.img_paths = img_paths
        self.transform = transforms.Compose([
            transforms.Resize(resize, Image.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(mean=mean, std=std),
        ])

    def __getitem__(self, index):
        image = Image.open(self.img_paths[index])
        if self.transform:
            image = self.transform(image)
        return image

    def __len__(self):
        return len(self.img_paths)


def float_input_net(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of a ``MaskNet`` that takes normalized float NCHW (what the baseline's loader yields).

    ``MaskNet.forward`` calls ``self.normalize`` on uint8 NHWC first; an instance attribute shadows
    that method, so everything after it — backbone, heads, the multi-head joint — is the same code.
    """
    net = copy.deepcopy(net).eval()
    net.normalize = lambda x: x
    return net


def _paths(info_csv: Path, images_dir: Path) -> tuple[list[dict], list[str]]:
    _, rows = read_csv(info_csv, required=("ImageID", "ans"))
    return rows, [str(images_dir / r["ImageID"]) for r in rows]


def _write(rows: list[dict], preds: list[int], out_csv: Path) -> None:
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "ans"])
        for r, p in zip(rows, preds):
            w.writerow([r["ImageID"], int(p)])


@torch.no_grad()
def inference(model: torch.nn.Module, info_csv: Path, images_dir: Path, out_csv: Path, preprocess,
              batch_size: int = BATCH_SIZE, num_workers: int | None = None) -> list[int]:
    """The baseline loop: returns the predicted class per row of ``info_csv`` and writes ``out_csv``."""
    rows, img_paths = _paths(info_csv, images_dir)
    dataset = TestDataset(img_paths, (preprocess.height, preprocess.width), preprocess.mean, preprocess.std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                        num_workers=cpu_workers(share=0.5) if num_workers is None else num_workers,
                        pin_memory=torch.cuda.is_available())
    model.eval()
    preds: list[int] = []
    for images in loader:
        pred = model(images)
        pred = pred.argmax(dim=-1)
        preds.extend(pred.cpu().numpy().tolist())
    _write(rows, preds, out_csv)
    return preds


@torch.no_grad()
def timed_run(model: torch.nn.Module, info_csv: Path, images_dir: Path, out_csv: Path, preprocess,
              batch_size: int = BATCH_SIZE, limit: int | None = None) -> dict[str, float]:
    """The same work as :func:`inference`, one stage at a time, each timed: seconds per stage.

    read = file bytes; decode = PIL decode at full size; resize = PIL bilinear resize;
    to_tensor = ToTensor + Normalize + collate into a batch; infer = the model; write = the CSV.
    """
    rows, img_paths = _paths(info_csv, images_dir)
    rows, img_paths = rows[:limit], img_paths[:limit]
    resize = transforms.Resize((preprocess.height, preprocess.width), Image.BILINEAR)
    tail = transforms.Compose([transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std)])
    t: dict[str, float] = defaultdict(float)
    preds: list[int] = []
    model.eval()
    for start in range(0, len(img_paths), batch_size):
        tensors = []
        for p in img_paths[start:start + batch_size]:
            t0 = time.perf_counter()
            data = Path(p).read_bytes()
            t1 = time.perf_counter()
            img = Image.open(io.BytesIO(data))
            img.load()
            t2 = time.perf_counter()
            img = resize(img)
            t3 = time.perf_counter()
            tensors.append(tail(img))
            t["read"] += t1 - t0
            t["decode"] += t2 - t1
            t["resize"] += t3 - t2
            t["to_tensor"] += time.perf_counter() - t3
        t0 = time.perf_counter()
        batch = torch.stack(tensors)
        t["to_tensor"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        preds.extend(model(batch).argmax(dim=-1).numpy().tolist())
        t["infer"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    _write(rows, preds, out_csv)
    t["write"] += time.perf_counter() - t0
    return dict(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baseline",
                                description="The competition baseline's inference loop on a mask-train checkpoint.")
    p.add_argument("--checkpoint", help="mask-train checkpoint (best.pt; required)")
    p.add_argument("--info", type=Path, help="info.csv with ImageID, ans (required)")
    p.add_argument("--images", type=Path, help="folder of the ImageID files (required)")
    p.add_argument("--out", type=Path, help="submission CSV to write (required)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"DataLoader batch size (default: {BATCH_SIZE}, the starter's)")
    p.add_argument("--num-workers", type=int, default=None,
                   help=f"DataLoader worker processes (default: cpu_count() // 2 = {cpu_workers(share=0.5)}, the starter's)")
    p.add_argument("--stages", type=int, metavar="N",
                   help="instead: time each stage serially over the first N images and print them")
    p.add_argument("--self-check", action="store_true",
                   help="instead: check on a random tiny network and image that this loop feeds the product's "
                        "network the product's pixels (no checkpoint needed); exit 1 if not")
    args = p.parse_args(argv)
    if args.self_check:
        return self_check()
    missing = [f"--{k}" for k in ("checkpoint", "info", "images", "out") if getattr(args, k) is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        from training.checkpoint import load_checkpoint, model_from_checkpoint
        from maskdata.preprocess import Preprocess

        t0 = time.perf_counter()
        ckpt = load_checkpoint(args.checkpoint)
        model = float_input_net(model_from_checkpoint(ckpt))
        t1 = time.perf_counter()
        if args.stages:
            stages = timed_run(model, args.info, args.images, args.out, Preprocess.from_dict(ckpt["preprocess"]),
                               batch_size=args.batch_size, limit=args.stages)
            print(json.dumps({"images": args.stages, "stages": stages}))
            return 0
        preds = inference(model, args.info, args.images, args.out, Preprocess.from_dict(ckpt["preprocess"]),
                          batch_size=args.batch_size, num_workers=args.num_workers)
        t2 = time.perf_counter()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"images": len(preds), "load_s": t1 - t0, "loop_s": t2 - t1}))
    return 0


def self_check() -> int:
    """The two facts the comparison rests on: :func:`float_input_net` on normalized floats answers what
    the product's network answers on the uint8 pixels, and :class:`TestDataset` yields the normalized
    pixels of a PIL bilinear resize (a lossless PNG, so a decode difference cannot hide a mistake)."""
    import tempfile

    import numpy as np

    from maskdata.preprocess import Preprocess
    from training.models import create_model

    torch.manual_seed(0)
    pre = Preprocess(32, 24)
    net = create_model("tiny_cnn", "multi", preprocess=pre).eval()
    x = torch.randint(0, 256, (3, 32, 24, 3), dtype=torch.uint8)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want, got = net(x), float_input_net(net)((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    failures = []
    if not torch.allclose(want, got, atol=1e-4):
        failures.append(f"float_input_net differs from the network by {float((want - got).abs().max()):.2g}")
    if net.normalize(x).shape != (3, 3, 32, 24):
        failures.append("float_input_net changed the original network's uint8 front end")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(path)
        item = TestDataset([str(path)], (32, 24), pre.mean, pre.std)[0]
        pixels = np.asarray(Image.open(path).resize((24, 32), Image.BILINEAR), dtype=np.float32) / 255
    expect = (pixels - np.array(pre.mean, dtype=np.float32)) / np.array(pre.std, dtype=np.float32)
    if tuple(item.shape) != (3, 32, 24):
        failures.append(f"TestDataset gave shape {tuple(item.shape)}, expected (3, 32, 24)")
    elif not np.allclose(item.numpy().transpose(1, 2, 0), expect, atol=1e-5):
        failures.append("TestDataset's pixels are not the normalized PIL bilinear resize")
    for f in failures:
        print(f"error: self-check: {f}", file=sys.stderr)
    print("self-check: " + ("FAILED" if failures else "ok: float_input_net and TestDataset match the product"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
