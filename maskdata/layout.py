"""Reader for the competition data layout (docs/data.md), without torch.

``read_train_dir(DIR/train)`` turns a ``train/`` folder into a list of :class:`Sample` rows and a
:class:`Report` of every problem found. Strict mode raises on the first kind of problem; lenient
mode skips the offending people/images and reports them. Nothing is dropped silently: every skip
is in the report with its path.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maskdata import labels
from maskdata.io import read_csv
from maskdata.relabel import apply_corrections, file_digest, read_corrections

log = logging.getLogger(__name__)

LAYOUT_EXTENSIONS = {".jpg", ".jpeg", ".png"}   # the photo files a competition layout holds
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
IMAGES_PER_PERSON = 7  # mask1..mask5, incorrect_mask, normal


@dataclass(frozen=True)
class Sample:
    path: str          # absolute image path
    person: str        # folder name, unique per person
    person_id: str     # the csv 'id' (may have odd forms such as 001498-1)
    gender: int
    race: str
    age: int
    mask: int

    def label(self, age_bins=labels.DEFAULT_AGE_BINS) -> int:
        return labels.encode(self.mask, self.gender, labels.age_group(self.age, age_bins))


@dataclass
class Report:
    """Problems found while reading; ``kind -> [path or description, ...]``."""
    problems: dict[str, list[str]] = field(default_factory=dict)
    hidden_skipped: int = 0
    relabel_digest: str = ""   # digest of the corrections file applied ('' = none)
    relabel_changed: int = 0   # corrections that changed a label
    relabel_notes: list[str] = field(default_factory=list)   # corrections that changed nothing

    def add(self, kind: str, where: str) -> None:
        self.problems.setdefault(kind, []).append(where)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def summary(self) -> str:
        if not self.problems:
            return f"no problems ({self.hidden_skipped} hidden files skipped)"
        parts = [f"{kind}: {len(v)} (e.g. {v[0]})" for kind, v in sorted(self.problems.items())]
        return "; ".join(parts) + f" ({self.hidden_skipped} hidden files skipped)"


class DataError(ValueError):
    """The data folder does not match the expected layout."""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_person_images(folder: Path) -> tuple[dict[str, Path], list[str], int]:
    """Images of one person folder: ({stem: path}, [problems], hidden_count)."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    hidden = 0
    for p in sorted(folder.iterdir()):
        if is_hidden(p.name):
            hidden += 1
            continue
        if not p.is_file():
            continue
        if p.suffix.lower() not in LAYOUT_EXTENSIONS or labels.mask_from_filename(p.name) is None:
            problems.append(f"unexpected file {p}")
            continue
        stem = p.name.split(".", 1)[0].lower()
        if stem in found:
            problems.append(f"duplicate image {p} (also {found[stem].name})")
            continue
        found[stem] = p
    return found, problems, hidden


def _train_paths(train_dir: Path) -> tuple[Path, Path]:
    """(train.csv, images/) of ``train_dir``; FileNotFoundError naming what is missing."""
    if not train_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {train_dir} (expected DIR/train with train.csv and images/)")
    csv_path = train_dir / "train.csv"
    images_dir = train_dir / "images"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; expected train.csv with columns {','.join(TRAIN_COLUMNS)}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir} not found; expected one folder per person")
    return csv_path, images_dir


def _person_labels(row: dict, where: str, report: Report) -> tuple[int, int] | None:
    """(gender index, age) of a train.csv row, or None after recording why the row is unusable."""
    try:
        gender = labels.gender_index(row["gender"])
    except ValueError as e:
        report.add("bad gender", f"{where}: {e}")
        return None
    try:
        age = int(float(row["age"].strip()))
        if not 0 <= age < 130:
            raise ValueError
    except ValueError:
        report.add("unreadable age", f"{where}: age={row['age']!r}")
        return None
    return gender, age


_EXPECTED_STEMS = [f"mask{k}" for k in range(1, 6)] + ["incorrect_mask", "normal"]


def _person_samples(folder: Path, row: dict, gender: int, age: int, report: Report) -> list[Sample]:
    """The seven images of one person's folder as samples (fewer when some are missing, each recorded)."""
    images, problems, hidden = list_person_images(folder)
    report.hidden_skipped += hidden
    for p in problems:
        report.add("duplicate image" if p.startswith("duplicate") else "unexpected file", p)
    missing = [s for s in _EXPECTED_STEMS if s not in images]
    if missing:
        report.add("missing image", f"{folder}: {','.join(missing)}")
    person = row["path"].strip()
    return [Sample(str(images[stem].resolve()), person, row["id"].strip(), gender, row["race"].strip(), age,
                   labels.mask_from_filename(stem)) for stem in _EXPECTED_STEMS if stem in images]


def read_train_dir(train_dir: str | Path, strict: bool = False,
                   relabel: str | Path | None = None) -> tuple[list[Sample], Report]:
    """Read ``DIR/train`` (train.csv + images/) into samples, reporting every problem.

    Problems (bad rows, unreadable names, folders without a row, ...) are skipped and logged as one
    warning; ``strict=True`` raises :class:`DataError` instead, with the problem count and, per kind
    of problem, its count and one example (:meth:`Report.summary`). Either way a folder with no usable
    image at all raises :class:`DataError`. ``relabel``: a corrections CSV (:mod:`maskdata.relabel`)
    applied to the samples read; its digest and outcome are in the report.
    """
    train_dir = Path(train_dir)
    csv_path, images_dir = _train_paths(train_dir)
    _, rows = read_csv(csv_path, TRAIN_COLUMNS)
    if not rows:
        raise DataError(f"{csv_path} has no rows")
    report = Report()
    folders = {p.name: p for p in images_dir.iterdir() if p.is_dir() and not is_hidden(p.name)}
    report.hidden_skipped += sum(1 for p in images_dir.iterdir() if is_hidden(p.name))
    seen_paths: set[str] = set()
    samples: list[Sample] = []
    for i, row in enumerate(rows, start=2):
        person = row["path"].strip()
        where = f"{csv_path}:{i}"
        if person in seen_paths:
            report.add("duplicate csv row", f"{where} ({person})")
            continue
        seen_paths.add(person)
        person_labels = _person_labels(row, where, report)
        if person_labels is None:
            continue
        folder = folders.get(person)
        if folder is None:
            report.add("csv row without folder", f"{where}: {images_dir / person}")
            continue
        samples += _person_samples(folder, row, *person_labels, report)
    for name in sorted(set(folders) - seen_paths):
        report.add("folder without csv row", str(folders[name]))
    if not samples:
        raise DataError(f"no usable images under {images_dir}: {report.summary()}")
    if strict and report.problems:
        raise DataError(f"{train_dir}: {report.count} problem(s): {report.summary()}")
    if report.problems:
        log.warning("%s: skipped %d problem(s): %s", train_dir, report.count, report.summary())
    if relabel is not None:
        samples = _relabel(samples, report, relabel)
    return samples, report


def _relabel(samples: list[Sample], report: Report, path: str | Path) -> list[Sample]:
    digest = file_digest(path)
    samples, notes, changed = apply_corrections(samples, read_corrections(path))
    report.relabel_digest, report.relabel_changed, report.relabel_notes = digest, changed, notes
    log.info("%s: %d correction(s) changed labels, %d changed nothing (digest %s)", path, changed, len(notes), digest)
    for note in notes:
        log.warning("%s", note)
    return samples


def people(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.person, []).append(s)
    return out


def class_counts(samples: list[Sample], age_bins=labels.DEFAULT_AGE_BINS) -> Counter:
    return Counter(s.label(age_bins) for s in samples)


def fingerprint(samples: list[Sample], relabel_digest: str = "") -> str:
    """Stable digest of the sample table (relative paths and labels): tells whether two runs saw the
    same data. Labels corrected by a corrections file add ``+relabel:<its digest>``, so a checkpoint
    and the model exported from it say so."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.person, s.mask, s.path)):
        h.update(f"{s.person}/{Path(s.path).name}|{s.gender}|{s.age}|{s.mask}\n".encode())
    return h.hexdigest()[:16] + (f"+relabel:{relabel_digest}" if relabel_digest else "")


def read_eval_info(info_csv: str | Path | bytes) -> tuple[list[str], list[dict[str, str]]]:
    """Read eval/info.csv (ImageID, ans, any extra columns) keeping every column and row order."""
    header, rows = read_csv(info_csv, ("ImageID",))
    return header, rows
