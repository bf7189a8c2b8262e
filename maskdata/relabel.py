"""Label corrections: a CSV that fixes recorded labels when the layout is read.

    person,image,field,value
    000123_female_Asian_45,,gender,male          # a person's gender (all 7 images)
    000123_female_Asian_45,,age,<30              # an age group (or years: 24)
    000777_male_Asian_22,mask1,mask,not_wear     # one image's mask state (stem or file name)

``person`` is the folder name under ``images/``; ``image`` is empty for the per-person fields
(gender, age) and names the file for ``mask``. Other columns (a reviewer's note, the audit's score)
are kept out of the way. Every unknown person, image, field or value is a one-line error naming the
file line; a correction that changes nothing is reported, not refused. The file's digest
(:func:`file_digest`) goes into the run's config and the data fingerprint.

Torch-free and independent of :mod:`maskdata.layout` (which calls :func:`apply_corrections`), so
the two import one way.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from maskdata import labels
from maskdata.io import read_csv

COLUMNS = ("person", "image", "field", "value")
FIELDS = ("gender", "age", "mask")
PERSON_FIELDS = ("gender", "age")
# An age group corrected by name becomes an age in the middle of that group, so it lands in the
# same group under the usual training thresholds (30,60) and nearby ones such as (30,58).
AGE_OF_GROUP = (24, 45, 66)


@dataclass(frozen=True)
class Correction:
    where: str      # FILE:LINE, for messages
    person: str
    image: str      # '' for gender/age
    field: str
    value: int      # gender index, age in years, or mask index
    by_group: bool = False   # an age given as a group name: any age in that group already agrees


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-256: what a run records about its corrections."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corrections file not found: {p} (expected CSV columns {','.join(COLUMNS)})")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def _value(field: str, text: str, where: str) -> int:
    text = text.strip()
    if field == "gender":
        try:
            return labels.gender_index(text)
        except ValueError:
            raise ValueError(f"{where}: unknown gender {text!r}; expected one of {list(labels.GENDER_NAMES)}") from None
    if field == "mask":
        if text not in labels.MASK_NAMES:
            raise ValueError(f"{where}: unknown mask state {text!r}; expected one of {list(labels.MASK_NAMES)}")
        return labels.MASK_NAMES.index(text)
    if text in labels.AGE_NAMES:
        return AGE_OF_GROUP[labels.AGE_NAMES.index(text)]
    if text.isdigit() and 0 < int(text) < 130:
        return int(text)
    raise ValueError(f"{where}: unknown age {text!r}; expected years (1-129) or one of {list(labels.AGE_NAMES)}")


def read_corrections(path: str | Path) -> list[Correction]:
    """Parse and check the file on its own (fields, values, duplicates); persons and images are
    checked against the data by :func:`apply_corrections`."""
    _, rows = read_csv(Path(path), COLUMNS)
    out: list[Correction] = []
    seen: dict[tuple[str, str, str], str] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        person, image, field = row["person"].strip(), row["image"].strip(), row["field"].strip().lower()
        if not person:
            raise ValueError(f"{where}: empty person; expected a folder name under images/")
        if field not in FIELDS:
            raise ValueError(f"{where}: unknown field {row['field']!r}; expected one of {list(FIELDS)}")
        if field in PERSON_FIELDS and image:
            raise ValueError(f"{where}: {field} belongs to the person; leave image empty (got {image!r})")
        if field == "mask" and not image:
            raise ValueError(f"{where}: a mask correction names its image (e.g. mask1 or normal.jpg)")
        key = (person, image.lower().split(".", 1)[0], field)
        if key in seen:
            raise ValueError(f"{where}: {field} of {person}{'/' + image if image else ''} is corrected twice "
                             f"(also {seen[key]})")
        seen[key] = where
        by_group = field == "age" and row["value"].strip() in labels.AGE_NAMES
        out.append(Correction(where, person, image, field, _value(field, row["value"], where), by_group))
    return out


def _image_index(rows: list, image: str) -> int | None:
    """Index into ``rows`` (one person's samples) of the image named by stem or file name."""
    want = image.lower()
    for i, s in enumerate(rows):
        name = Path(s.path).name.lower()
        if want in (name, name.split(".", 1)[0]):
            return i
    return None


def _change(sample, c: Correction):
    """The corrected sample, or None when the correction changes nothing."""
    if c.field == "gender":
        return None if sample.gender == c.value else dataclasses.replace(sample, gender=c.value)
    if c.field == "mask":
        return None if sample.mask == c.value else dataclasses.replace(sample, mask=c.value)
    if c.by_group and labels.age_group(sample.age) == labels.age_group(c.value):
        return None   # a group correction to the group the person is already in
    return None if sample.age == c.value else dataclasses.replace(sample, age=c.value)


def apply_corrections(samples: list, corrections: list[Correction]) -> tuple[list, list[str], int]:
    """(corrected samples in the same order, one note per correction that changed nothing,
    number of corrections that changed a label). ``samples`` are :class:`maskdata.layout.Sample`."""
    index: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        index.setdefault(s.person, []).append(i)
    out, notes, changed = list(samples), [], 0
    for c in corrections:
        if c.person not in index:
            raise ValueError(f"{c.where}: unknown person {c.person!r}; not a folder read from the data")
        targets = index[c.person]
        if c.field == "mask":
            k = _image_index([out[i] for i in targets], c.image)
            if k is None:
                raise ValueError(f"{c.where}: unknown image {c.image!r} of {c.person}")
            targets = [targets[k]]
        hits = 0
        for i in targets:
            new = _change(out[i], c)
            if new is not None:
                out[i], hits = new, hits + 1
        if hits:
            changed += 1
        else:
            notes.append(f"{c.where}: changes nothing ({c.field} of {c.person}"
                         f"{'/' + c.image if c.image else ''} is already that)")
    return out, notes, changed


def relabel_values(path: str | None) -> dict:
    """``{"relabel": absolute path or None, "relabel_digest": ...}`` for a run's data config."""
    if not path:
        return {"relabel": None, "relabel_digest": ""}
    return {"relabel": str(Path(path).resolve()), "relabel_digest": file_digest(path)}


def check_relabel_digest(data_cfg, report) -> None:
    """The corrections read now are the ones the run was configured (or first trained) with."""
    if report.relabel_digest != data_cfg.relabel_digest:
        raise ValueError(f"corrections file {data_cfg.relabel} changed since the run was configured "
                         f"(digest {report.relabel_digest} != {data_cfg.relabel_digest}); start a new run")
