"""Deterministic synthetic data in the competition layout (docs/data.md), quirks included.

Draws cartoon portraits with PIL whose labels are visible but not trivial to read:

* mask state: a mask over nose and mouth (``wear``, mask1..mask5, varied colours and patterns),
  a mask pulled below the nose or onto the chin (``incorrect_mask``), or none (``normal``);
* gender: hair length/style first, then face width, jaw, eyebrows, stubble, earrings;
* age: forehead wrinkles (count and depth grow with age), greying hair, eye bags, crow's feet,
  nasolabial folds, balding, age spots, glasses.

Pose, position, scale, lighting, background, skin tone, noise, blur and JPEG quality vary, and the
seven images of one person share identity (face, hair, clothes) with small changes between shots.
The drawing lives in :mod:`maskdata.portrait`; this module writes the layout (tables, files, CSVs).

Every person has its own RNG seeded from ``(seed, split, index)``, so the output is byte-identical
for one seed whatever the number of worker processes. Run it as ``mask-data synth --out DIR`` or::

    from maskdata.synth import generate
    generate("data/synth", people=300, eval_people=100, seed=0)
"""
from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from maskdata import labels
from maskdata.io import atomic_write_text
from maskdata.layout import TRAIN_COLUMNS
from maskdata.portrait import SHOTS, appearance, render

log = logging.getLogger(__name__)

RACE = "Asian"
MASK_FILES = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASK_OF_FILE = {name: labels.mask_from_filename(name) for name in MASK_FILES}
# Extension mix of the real set: mostly .jpg, some .jpeg/.png, a few in upper or mixed case.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".Jpeg", ".PNG")
EXT_WEIGHTS = (0.78, 0.08, 0.08, 0.03, 0.01, 0.02)
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(56)
SERIAL_BELOW = 64  # fewer people than this: render in-process, a pool costs more than it saves

_SPLITS = {"train": 1, "eval": 2}


@dataclass(frozen=True)
class PersonSpec:
    """One person to draw: the true labels, and where/how its files go."""
    split: str
    index: int
    gender: int            # true gender (what is drawn)
    age: int               # true age (what is drawn)
    folder: str            # train: images/<folder>; eval: ""
    names: tuple[str, ...]  # 7 file names, in MASK_FILES order
    hidden: tuple[str, ...] = ()  # AppleDouble '._*' files planted beside the images
    swap: tuple[int, int] | None = None  # two files (indices into names) whose pictures trade places


# ----------------------------------------------------------------------------- person table

def _sample_age(rng: np.random.Generator) -> int:
    """Skewed like the real set: many students and 40-58 year olds, few people aged 60 and over
    (13 % here against about 7 % in the real set, so a 300-person set still has ~40 of them)."""
    group = rng.choice(3, p=(0.44, 0.43, 0.13))
    if group == 0:
        return int(rng.integers(18, 23) if rng.random() < 0.65 else rng.integers(23, 30))
    if group == 1:
        return int(rng.integers(30, 45) if rng.random() < 0.35 else rng.integers(45, 60))
    return 60 if rng.random() < 0.4 else int(rng.integers(61, 81))


def _noisy_label(rng: np.random.Generator, gender: int, age: int) -> tuple[int, int]:
    """A wrong recorded label: the gender flipped, or the age moved into a neighbouring group."""
    if rng.random() < 0.5:
        return 1 - gender, age
    group = labels.age_group(age)
    target = {0: 1, 2: 1}.get(group, int(rng.choice((0, 2))))
    lo, hi = {0: (18, 30), 1: (30, 60), 2: (60, 75)}[target]
    return gender, int(rng.integers(lo, hi))


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """Zero-padded ids with gaps; a few repeat the previous number as ``NNNNNN-1``."""
    out, number = [], 0
    odd = set(rng.choice(np.arange(1, n), size=max(1, n // 30), replace=False).tolist()) if n > 1 else set()
    for i in range(n):
        if i in odd and not out[-1].endswith("-1"):
            out.append(f"{number:06d}-1")
            continue
        number += int(rng.choice((1, 1, 1, 2, 3, 7)))
        out.append(f"{number:06d}")
    return out


def people_table(rng: np.random.Generator, n: int,
                 label_noise: float) -> tuple[list[PersonSpec], list[dict], list[str]]:
    """The training people before anything is drawn: (their true specs, the train.csv rows as recorded,
    the folders whose recorded gender/age is wrong — a ``label_noise`` share of the people), so the planted noise can be
    checked without drawing a photo."""
    ids = _ids(rng, n)
    slot_of = np.argsort(rng.permutation(n))  # person -> its place in a random order
    specs, rows, noisy = [], [], []
    for i in range(n):
        gender = int(rng.random() < 0.58)
        age = _sample_age(rng)
        rec_gender, rec_age = gender, age
        if rng.random() < label_noise:
            rec_gender, rec_age = _noisy_label(rng, gender, age)
        base = str(rng.choice(EXTENSIONS, p=EXT_WEIGHTS))
        exts = [base if rng.random() > 0.05 else str(rng.choice(EXTENSIONS)) for _ in MASK_FILES]
        n_hidden = int(rng.integers(1, 8)) if rng.random() < 0.3 else 0
        # Every data set of 8+ people shows each quirk at least once, so small test sets exercise them.
        if n >= 8:
            slot = int(slot_of[i])
            if slot in (0, 1, 2):
                exts = [(".jpeg", ".png", ".JPG")[slot]] * len(MASK_FILES)
            elif slot == 3:
                exts = [".jpg", ".jpeg", ".png", ".JPG", ".Jpeg", ".PNG", ".jpg"]
            elif slot == 4:
                n_hidden = max(n_hidden, 2)
        names = tuple(stem + ext for stem, ext in zip(MASK_FILES, exts))
        folder = f"{ids[i]}_{labels.GENDER_NAMES[rec_gender]}_{RACE}_{rec_age}"
        if (rec_gender, rec_age) != (gender, age):
            noisy.append(folder)
        hidden = tuple("._" + name for name in names[:n_hidden])
        specs.append(PersonSpec("train", i, gender, age, folder, names, hidden))
        rows.append({"id": ids[i], "gender": labels.GENDER_NAMES[rec_gender], "race": RACE,
                     "age": str(rec_age), "path": folder})
    return specs, rows, noisy


# A swap trades the pictures of two files whose names record different mask states.
_SWAP_PAIRS = ("wear/not_wear", "wear/incorrect", "incorrect/not_wear")


def _plan_swaps(seed: int, specs: list[PersonSpec], rate: float) -> list[PersonSpec]:
    """Pick the people whose mask files are swapped, from an RNG of their own: the rest of the set
    (and every byte of it at rate 0) is what it would be without swaps."""
    if rate <= 0:
        return specs
    rng = np.random.default_rng([seed, 3])
    out = []
    for spec in specs:
        swap = None
        if rng.random() < rate:
            kind = _SWAP_PAIRS[int(rng.integers(len(_SWAP_PAIRS)))]
            wear = int(rng.integers(5))   # which of mask1..mask5
            swap = {"wear/not_wear": (wear, 6), "wear/incorrect": (wear, 5), "incorrect/not_wear": (5, 6)}[kind]
        out.append(replace(spec, swap=swap))
    return out


def wrong_labels(specs: list[PersonSpec], rows: list[dict]) -> dict[str, list[dict]]:
    """Every wrong label written, per field: gender and age per person folder, mask per image file."""
    out: dict[str, list[dict]] = {"gender": [], "age": [], "mask": []}
    for spec, row in zip(specs, rows):
        rec_gender, rec_age = labels.gender_index(row["gender"]), int(row["age"])
        if rec_gender != spec.gender:
            out["gender"].append({"person": spec.folder, "recorded": labels.GENDER_NAMES[rec_gender],
                                  "true": labels.GENDER_NAMES[spec.gender]})
        if labels.age_group(rec_age) != labels.age_group(spec.age):
            out["age"].append({"person": spec.folder, "recorded": labels.AGE_NAMES[labels.age_group(rec_age)],
                               "true": labels.AGE_NAMES[labels.age_group(spec.age)],
                               "recorded_age": rec_age, "true_age": spec.age})
        if spec.swap is not None:
            for here, there in (spec.swap, spec.swap[::-1]):
                out["mask"].append({"person": spec.folder, "image": spec.names[here],
                                    "recorded": labels.MASK_NAMES[MASK_OF_FILE[MASK_FILES[here]]],
                                    "true": labels.MASK_NAMES[MASK_OF_FILE[MASK_FILES[there]]]})
    return out


def _eval_table(rng: np.random.Generator, n: int) -> tuple[list[PersonSpec], list[tuple[str, int]]]:
    """(specs, [(ImageID, true class)] in shuffled order, as the real info.csv is)."""
    specs, answers = [], []
    for i in range(n):
        gender = int(rng.random() < 0.58)
        age = _sample_age(rng)
        names = tuple(rng.bytes(20).hex() + ".jpg" for _ in MASK_FILES)
        specs.append(PersonSpec("eval", i, gender, age, "", names))
        for name, stem in zip(names, MASK_FILES):
            answers.append((name, labels.encode(MASK_OF_FILE[stem], gender, labels.age_group(age))))
    order = rng.permutation(len(answers))
    return specs, [answers[k] for k in order]


def _encode(img: Image.Image, name: str, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if name.lower().endswith(".png"):
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "JPEG", quality=int(rng.integers(65, 96)))
    return buf.getvalue()


def _render_person(job: tuple[int, PersonSpec, str]) -> int:
    """Write the seven images (and planted hidden files) of one person; returns the image count."""
    seed, spec, folder = job
    rng = np.random.default_rng([seed, _SPLITS[spec.split], spec.index])
    look = appearance(rng, spec.gender, spec.age)
    out = Path(folder)
    targets = list(spec.names)
    if spec.swap is not None:   # draw in the usual order, write each of the two pictures under the other's name
        a, b = spec.swap
        targets[a], targets[b] = targets[b], targets[a]
    for shot, (stem, name) in enumerate(zip(MASK_FILES, targets)):
        img = render(rng, look, MASK_OF_FILE[stem], min(shot, SHOTS - 1), seed)
        (out / name).write_bytes(_encode(img, name, rng))
    for name in spec.hidden:
        (out / name).write_bytes(APPLEDOUBLE)
    return len(spec.names)


# ----------------------------------------------------------------------------- orchestration

def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} is a file; expected a folder")
    for sub in ("train", "eval"):
        d = out_dir / sub
        if d.exists() and any(d.iterdir()) and not overwrite:
            raise ValueError(f"{d} already exists and is not empty; choose a new output folder or overwrite")


def _check_options(people: int, eval_people: int, label_noise: float, mask_swap: float, workers) -> None:
    """ValueError naming the first of :func:`generate`'s options that is out of range."""
    if people < 1 or eval_people < 0:
        raise ValueError(f"need people >= 1 and eval people >= 0, got {people} and {eval_people}")
    if not 0 <= label_noise < 0.5:
        raise ValueError(f"label noise must be in [0, 0.5), got {label_noise}")
    if not 0 <= mask_swap < 0.5:
        raise ValueError(f"mask swap rate must be in [0, 0.5), got {mask_swap}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def generate(out_dir: str | os.PathLike, people: int = 300, eval_people: int = 100, seed: int = 0,
             label_noise: float = 0.01, workers: int | None = None, overwrite: bool = False,
             progress: bool = False, mask_swap: float = 0.0) -> dict:
    """Write ``out_dir/train`` and ``out_dir/eval`` in the competition layout; return a summary dict.

    Everything is built in a temporary folder inside ``out_dir`` and moved into place at the end,
    so an interrupted run leaves no half-written data set. ``workers`` (default: all CPUs) only
    changes speed, never the bytes written. ``mask_swap``: share of train people two of whose files
    trade pictures (a ``mask1`` that shows no mask, ...). The summary's ``wrong_labels`` lists every
    wrong label written, per field; the summary file holds it when ``mask_swap > 0`` (at 0 the file
    keeps the bytes sets were made with before swaps existed; ``noisy_label_folders`` names the people).
    """
    _check_options(people, eval_people, label_noise, mask_swap, workers)
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table_rng = np.random.default_rng([seed, 0])
    train_specs, train_rows, noisy = people_table(table_rng, people, label_noise)
    train_specs = _plan_swaps(seed, train_specs, mask_swap)
    eval_specs, answers = _eval_table(table_rng, eval_people)

    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))
    try:
        train, ev = tmp / "train", tmp / "eval"
        (ev / "images").mkdir(parents=True)
        jobs = []
        for spec in train_specs:
            folder = train / "images" / spec.folder
            folder.mkdir(parents=True)
            jobs.append((seed, spec, str(folder)))
        jobs += [(seed, spec, str(ev / "images")) for spec in eval_specs]
        _run(jobs, workers, progress)
        # The real set has macOS litter at the top of images/ too.
        (train / "images" / ".DS_Store").write_bytes(bytes(64))
        (train / "images" / f"._{train_specs[0].folder}").write_bytes(APPLEDOUBLE)
        atomic_write_text(train / "train.csv", _csv_text(list(TRAIN_COLUMNS),
                                                          [[r[k] for k in TRAIN_COLUMNS] for r in train_rows]))
        atomic_write_text(ev / "info.csv", _csv_text(["ImageID", "ans"], [[name, 0] for name, _ in answers]))
        atomic_write_text(ev / "answers.csv", _csv_text(["ImageID", "ans"], [[n, c] for n, c in answers]))
        for sub in ("train", "eval"):
            if (out_dir / sub).exists():
                shutil.rmtree(out_dir / sub)
            os.replace(tmp / sub, out_dir / sub)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = _summary(out_dir, seed, label_noise, train_specs, eval_specs, noisy, time.perf_counter() - t0)
    summary.update(mask_swap=mask_swap, wrong_labels=wrong_labels(train_specs, train_rows))
    # Without timing and location, so the file is as reproducible as the images.
    hidden = ("seconds", "out_dir") + (("mask_swap", "wrong_labels") if mask_swap == 0 else ())
    recorded = {k: v for k, v in summary.items() if k not in hidden}
    atomic_write_text(out_dir / "synth_summary.json", json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d train and %d eval images to %s in %.1f s", summary["train_images"],
             summary["eval_images"], out_dir, summary["seconds"])
    return summary


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run(jobs: list, workers: int | None, progress: bool) -> None:
    from tqdm import tqdm

    workers = workers or _usable_cpus()
    bar = tqdm(total=sum(len(j[1].names) for j in jobs), unit="img", desc="synth", disable=not progress)
    with bar:
        if workers == 1 or len(jobs) < SERIAL_BELOW:
            for job in jobs:
                bar.update(_render_person(job))
            return
        # spawn, not fork: callers (pytest, training) may hold threads that fork would copy mid-lock.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for n in pool.imap_unordered(_render_person, jobs, chunksize=4):
                bar.update(n)


def _summary(out_dir: Path, seed: int, label_noise: float, train_specs, eval_specs, noisy, seconds: float) -> dict:
    ext = Counter(Path(n).suffix for s in train_specs for n in s.names)
    groups = Counter(labels.AGE_NAMES[labels.age_group(s.age)] for s in train_specs)
    return {
        "out_dir": str(out_dir), "seed": seed, "label_noise": label_noise,
        "people": len(train_specs), "eval_people": len(eval_specs),
        "train_images": sum(len(s.names) for s in train_specs), "eval_images": sum(len(s.names) for s in eval_specs),
        "hidden_files": sum(len(s.hidden) for s in train_specs) + 2,
        "extensions": dict(sorted(ext.items())), "true_age_groups": dict(sorted(groups.items())),
        "noisy_label_folders": noisy, "seconds": round(seconds, 2),
    }
