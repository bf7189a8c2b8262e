"""Parity proof: the PyTorch model(s) and the ONNX file give the same answers on real image files.

    report = check_parity(models, "model.onnx", image_paths, tta=("hflip",), atol=1e-4, min_agreement=1.0)
    print(report.summary())          # raises ParityError (a ValueError) beyond the tolerances

Both sides see the same pixels: each file goes once through the ONE eval preprocessing
(``maskdata.preprocess.Preprocess`` as recorded in the ONNX metadata). The PyTorch reference runs
every member in eval mode under ``torch.inference_mode()`` and averages softmax over members and
TTA views in plain code, independently of the exported wrapper module, so a wrong graph cannot
agree with itself.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from maskdata import labels
from maskdata.layout import is_hidden
from maskdata.preprocess import IMAGE_EXTENSIONS, Preprocess

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
DEFAULT_MIN_AGREEMENT = 1.0
DEFAULT_MAX_IMAGES = 64


class ParityError(ValueError):
    """ONNX Runtime and PyTorch disagree beyond the tolerances."""


def list_images(folder: str | os.PathLike, limit: int = DEFAULT_MAX_IMAGES) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files skipped), an evenly spaced sample of ``limit``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(is_hidden(part) for part in p.relative_to(folder).parts))
    if not found:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return sample_evenly(found, limit)


def sample_evenly(items: list, limit: int) -> list:
    if limit <= 0 or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def recorded_images(ckpts: list[dict], limit: int = DEFAULT_MAX_IMAGES) -> list[Path]:
    """The validation images the checkpoints recorded (``val_images``) that still exist here."""
    seen: dict[str, Path] = {}
    for ckpt in ckpts:
        for p in ckpt.get("val_images") or ():
            if p not in seen and Path(p).is_file():
                seen[p] = Path(p)
    return sample_evenly(list(seen.values()), limit)


def label_from_path(path: str | os.PathLike, age_bins=labels.DEFAULT_AGE_BINS) -> int | None:
    """Class of a training-layout image ``.../<id>_<gender>_<race>_<age>/<mask stem>.<ext>``, else None."""
    path = Path(path)
    mask = labels.mask_from_filename(path.name)
    parts = path.parent.name.rsplit("_", 3)
    if mask is None or len(parts) != 4:
        return None
    try:
        gender = labels.gender_index(parts[1])
        age = labels.age_group(int(parts[3]), age_bins)
    except ValueError:
        return None
    return labels.encode(mask, gender, age)


def labels_for(paths: list[Path], age_bins=labels.DEFAULT_AGE_BINS) -> np.ndarray | None:
    """True classes of ``paths`` when every one is in the training layout, else None."""
    ys = [label_from_path(p, age_bins) for p in paths]
    return None if any(y is None for y in ys) else np.asarray(ys, dtype=np.int64)


def labels_from_csv(paths: list[Path], csv_path: str | os.PathLike,
                    root: str | os.PathLike | None = None) -> np.ndarray:
    """True classes from an answers file (``ImageID,ans``, e.g. eval/answers.csv); ImageID is the path
    relative to ``root`` or the bare file name."""
    from maskdata.io import read_csv

    _, rows = read_csv(csv_path, ("ImageID", "ans"))
    answers = {r["ImageID"].strip(): r["ans"].strip() for r in rows}
    ys = []
    for p in paths:
        p = Path(p)
        keys = ([p.relative_to(root).as_posix()] if root is not None and p.is_relative_to(root) else []) + [p.name]
        key = next((k for k in keys if k in answers), None)
        if key is None:
            raise ValueError(f"{csv_path}: no row for image {keys[0]!r}")
        try:
            y = int(answers[key])
            labels.decode(y)
        except ValueError:
            raise ValueError(f"{csv_path}: ans for {key!r} is {answers[key]!r}; "
                             f"expected a class 0..{labels.NUM_CLASSES - 1}") from None
        ys.append(y)
    return np.asarray(ys, dtype=np.int64)


def load_batch(paths: list[Path], preprocess: Preprocess) -> np.ndarray:
    """Files → uint8 (N, H, W, 3) through the eval preprocessing."""
    if not paths:
        raise ValueError("no images to check parity on")
    from tqdm import tqdm

    return np.stack([preprocess(p) for p in tqdm(paths, desc="preprocess", unit="img", leave=False, disable=None)])


def torch_probs(models, batch: np.ndarray, tta: tuple[str, ...] = (), batch_size: int = 32) -> np.ndarray:
    """Reference probabilities: mean softmax over members × TTA views, eval mode, inference_mode."""
    import torch

    from export.graph import TTA

    out = []
    for m in models:
        m.eval()
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[i:i + batch_size]))
            views = [x] + [TTA[name](x) for name in tta]
            probs = [torch.softmax(m(v).float(), dim=1).double() for m in models for v in views]
            out.append((sum(probs) / len(probs)).numpy())
    return np.concatenate(out).astype(np.float32)


def onnx_session(path: str | os.PathLike, providers: list[str] | None = None):
    """ONNX Runtime session on the CPU unless ``providers`` says otherwise."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).strip().splitlines()[0]}") from None


def onnx_probs(session, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = [session.run(["probs"], {"image": np.ascontiguousarray(batch[i:i + batch_size])})[0]
           for i in range(0, len(batch), batch_size)]
    return np.concatenate(out).astype(np.float32)


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max abs diff of probabilities, fraction of rows with the same argmax)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"probability shapes differ: {reference.shape} vs {candidate.shape}")
    diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return diff, agree


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    argmax_agreement: float
    atol: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.argmax_agreement >= self.min_agreement

    def summary(self) -> str:
        return (f"parity on {self.images} images: max |Δprob| = {self.max_abs_diff:.3g} (tolerance {self.atol:g}), "
                f"argmax agreement {self.argmax_agreement:.2%} (required {self.min_agreement:.2%})")

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def check_tolerances(atol: float, min_agreement: float) -> None:
    if not atol >= 0:
        raise ValueError(f"parity tolerance must be >= 0, got {atol}")
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"required argmax agreement must be in [0, 1], got {min_agreement}")


def check_parity(models, onnx_path: str | os.PathLike, images: list[Path], *, tta: tuple[str, ...] = (),
                 preprocess: Preprocess | None = None, atol: float = DEFAULT_ATOL,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT, batch_size: int = 32) -> ParityReport:
    """Run PyTorch ``models`` (averaged, with ``tta``) and ONNX Runtime on ``images``; raise beyond tolerances.

    ``preprocess`` defaults to the one recorded in the ONNX file, i.e. what serving will use.
    """
    check_tolerances(atol, min_agreement)
    if preprocess is None:
        from maskdata.artifact import read_metadata

        preprocess = read_metadata(onnx_path).preprocess
    batch = load_batch(list(images), preprocess)
    ref = torch_probs(list(models), batch, tuple(tta), batch_size)
    got = onnx_probs(onnx_session(onnx_path), batch, batch_size)
    diff, agree = compare(ref, got)
    report = ParityReport(len(batch), diff, agree, atol, min_agreement)
    if not report.ok:
        raise ParityError(f"ONNX/PyTorch parity failed: {report.summary()}")
    log.debug(report.summary())
    return report
