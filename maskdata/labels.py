"""Label schema (docs/data.md): mask × gender × age ↔ 18 classes.

``class = mask * 6 + gender * 3 + age``. Pure Python: used by the data reader, training, export
metadata and serving alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MASK_NAMES = ("wear", "incorrect", "not_wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")
NUM_CLASSES = len(MASK_NAMES) * len(GENDER_NAMES) * len(AGE_NAMES)
# the one spelling of per-class columns in every file the project writes (mask-train's predictions,
# mask-submit --probs and --probs-dir, serving.teacher); readers still take the older p0 / logp0
PROB_COLUMNS = tuple(f"prob_{c}" for c in range(NUM_CLASSES))
LOGP_COLUMNS = tuple(f"logp_{c}" for c in range(NUM_CLASSES))
DEFAULT_AGE_BINS = (30, 60)
HEAD_SIZES = {"mask": len(MASK_NAMES), "gender": len(GENDER_NAMES), "age": len(AGE_NAMES)}

_GENDERS = {"male": 0, "m": 0, "female": 1, "f": 1}
# Stem of the image file name → mask state; 'mask1'..'mask5' all mean wearing it correctly.
_MASK_STEM = re.compile(r"^(?:(mask)[1-5]|(incorrect_mask)|(normal))$", re.IGNORECASE)


def encode(mask: int, gender: int, age: int) -> int:
    """(mask, gender, age) indices → class index 0..17."""
    if not (0 <= mask < 3 and 0 <= gender < 2 and 0 <= age < 3):
        raise ValueError(f"label out of range: mask={mask} gender={gender} age={age}; "
                         "expected mask 0..2, gender 0..1, age 0..2")
    return mask * 6 + gender * 3 + age


def decode(cls: int) -> tuple[int, int, int]:
    """Class index 0..17 → (mask, gender, age) indices."""
    if not 0 <= cls < NUM_CLASSES:
        raise ValueError(f"class {cls} out of range; expected 0..{NUM_CLASSES - 1}")
    return cls // 6, (cls // 3) % 2, cls % 3


def age_group(age: float, bins: tuple[int, int] | list[int] = DEFAULT_AGE_BINS) -> int:
    """Age in years → group 0 (< bins[0]), 1 (< bins[1]) or 2 (>= bins[1])."""
    lo, hi = bins
    if not lo < hi:
        raise ValueError(f"age bins must be increasing, got {tuple(bins)}")
    return 0 if age < lo else (1 if age < hi else 2)


def parse_age_bins(text: str) -> tuple[int, int]:
    """'30,60' → (30, 60), with a one-line reason on anything else."""
    try:
        lo, hi = (int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"age bins must be two integers like '30,60', got {text!r}") from None
    if not 0 < lo < hi:
        raise ValueError(f"age bins must satisfy 0 < low < high, got {text!r}")
    return lo, hi


def gender_index(value: str) -> int:
    try:
        return _GENDERS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown gender {value!r}; expected one of 'male', 'female'") from None


def mask_from_filename(name: str) -> int | None:
    """File name (with or without extension) → mask index, or None if it is not a mask image name."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    m = _MASK_STEM.match(stem)
    if m is None:
        return None
    return 0 if m.group(1) else (1 if m.group(2) else 2)


@dataclass(frozen=True)
class ClassLabel:
    index: int
    mask: str
    gender: str
    age: str

    @property
    def name(self) -> str:
        return f"{self.mask}/{self.gender}/{self.age}"


def label_table() -> list[ClassLabel]:
    """The 18 classes with their head names, in class-index order."""
    rows = []
    for cls in range(NUM_CLASSES):
        m, g, a = decode(cls)
        rows.append(ClassLabel(cls, MASK_NAMES[m], GENDER_NAMES[g], AGE_NAMES[a]))
    return rows


def label_table_dicts() -> list[dict]:
    """Label table as plain dicts (for checkpoints and ONNX metadata)."""
    return [{"index": r.index, "mask": r.mask, "gender": r.gender, "age": r.age} for r in label_table()]
