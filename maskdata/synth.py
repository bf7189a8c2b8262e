"""Deterministic synthetic data in the competition layout (SPEC §2), quirks included.

Draws cartoon portraits with PIL whose labels are visible but not trivial to read:

* mask state: a mask over nose and mouth (``wear``, mask1..mask5, varied colours and patterns),
  a mask pulled below the nose or onto the chin (``incorrect_mask``), or none (``normal``);
* gender: hair length/style first, then face width, jaw, eyebrows, stubble, earrings;
* age: forehead wrinkles (count and depth grow with age), greying hair, eye bags, crow's feet,
  nasolabial folds, balding, age spots, glasses.

Pose, position, scale, lighting, background, skin tone, noise, blur and JPEG quality vary, and the
seven images of one person share identity (face, hair, clothes) with small changes between shots.

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
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from maskdata import labels
from maskdata.io import atomic_write_text
from maskdata.layout import TRAIN_COLUMNS

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 384, 512
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


def _train_table(rng: np.random.Generator, n: int,
                 label_noise: float) -> tuple[list[PersonSpec], list[dict], list[str]]:
    """(specs, train.csv rows, folders whose recorded label is wrong)."""
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


# ----------------------------------------------------------------------------- drawing

class _Pen:
    """ImageDraw with every shape given in face coordinates (origin at the face centre, y down,
    about 100 units from centre to chin) and mapped through the shot's pose (scale, rotation, shift)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, scale: float, angle_deg: float):
        self.draw, self.cx, self.cy, self.s = draw, cx, cy, scale
        a = math.radians(angle_deg)
        self.c, self.si = math.cos(a) * scale, math.sin(a) * scale

    def pts(self, xy) -> list[tuple[float, float]]:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        x = self.cx + xy[:, 0] * self.c - xy[:, 1] * self.si
        y = self.cy + xy[:, 0] * self.si + xy[:, 1] * self.c
        return list(zip(x.tolist(), y.tolist()))

    def poly(self, xy, fill) -> None:
        self.draw.polygon(self.pts(xy), fill=fill)

    def line(self, xy, fill, width: float) -> None:
        self.draw.line(self.pts(xy), fill=fill, width=max(1, round(width * self.s)), joint="curve")

    def ellipse(self, x, y, rx, ry, fill, n: int = 28) -> None:
        self.poly(_ellipse(x, y, rx, ry, n), fill)


def _ellipse(x, y, rx, ry, n=28, start=0.0, stop=2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-9)
    return np.stack([x + rx * np.cos(t), y + ry * np.sin(t)], axis=1)


def _face_outline(rx: float, ry: float, jaw: float, n: int = 40) -> np.ndarray:
    """Upper half an ellipse, lower half a superellipse (``jaw`` > 2 gives a squarer jaw)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    lower = s > 0
    e = np.where(lower, 2.0 / jaw, 1.0)
    x = rx * np.sign(c) * np.abs(c) ** e
    y = ry * np.sign(s) * np.abs(s) ** e
    return np.stack([x, y], axis=1)


def _half_width(rx: float, ry: float, y: float) -> float:
    return rx * math.sqrt(max(0.0, 1 - (y / ry) ** 2))


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a[k] + (b[k] - a[k]) * t)) for k in range(3))


def _shade(c, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)


_HAIR_YOUNG = ((22, 18, 18), (45, 32, 25), (70, 48, 32), (105, 72, 45), (125, 62, 38), (180, 150, 95))
_HAIR_DYED = ((120, 60, 130), (150, 40, 45), (150, 150, 160), (60, 90, 150))
_MASKS = ((236, 236, 236), (168, 205, 230), (30, 30, 34), (120, 124, 130), (40, 52, 92),
          (232, 170, 190), (180, 160, 210), (90, 130, 95))
_MASK_WEIGHTS = (0.3, 0.22, 0.14, 0.08, 0.08, 0.06, 0.06, 0.06)  # mostly white and surgical blue, as in photos


def _appearance(rng: np.random.Generator, gender: int, age: int) -> dict:
    """Identity of one person: drawn once, shared by its seven shots."""
    male = gender == 0
    group = labels.age_group(age)
    a: dict = {}
    a["skin"] = _mix((245, 218, 194), (140, 98, 70), rng.random() ** 1.3)
    a["rx"] = rng.uniform(84, 92) if male else rng.uniform(75, 83)
    a["ry"] = rng.uniform(100, 112)
    a["jaw"] = rng.uniform(2.7, 3.3) if male else rng.uniform(2.0, 2.3)
    a["brow"] = rng.uniform(6.5, 9) if male else rng.uniform(3, 4.5)
    a["eye"] = _mix((20, 15, 12), (90, 60, 40), rng.random())
    base = _HAIR_DYED[rng.integers(len(_HAIR_DYED))] if group == 0 and rng.random() < 0.12 \
        else _HAIR_YOUNG[rng.integers(len(_HAIR_YOUNG))]
    # Grey hair and forehead lines carry the age group; within a group they still vary with age.
    if group == 0:
        grey = 0.0
    elif group == 1:
        grey = float(np.clip((age - 35) / 25 * 0.35 + rng.normal(0, 0.05), 0, 0.35))
    else:
        grey = float(np.clip(0.8 + (age - 60) / 60 + rng.normal(0, 0.05), 0.75, 1.0))
    a["hair"] = _mix(base, (212, 212, 214), grey)
    if group == 0:
        a["wrinkles"] = 1 if age >= 27 and rng.random() < 0.25 else 0
        a["wrinkle_depth"] = 0.12
    elif group == 1:
        a["wrinkles"] = 1 + int(age >= 44) + int(age >= 54 and rng.random() < 0.3)
        a["wrinkle_depth"] = 0.32 + 0.18 * (age - 30) / 30
    else:
        a["wrinkles"] = 3 if rng.random() < 0.1 else 4 + int(rng.random() < 0.5)
        a["wrinkle_depth"] = 0.5 + min(0.15, (age - 60) / 100)
    a["bags"] = group == 2 or (age >= 30 and rng.random() < 0.3 + (age - 30) / 40)
    a["crows"] = age >= 40 and rng.random() < 0.2 + (age - 40) / 30
    a["folds"] = age >= 42 and rng.random() < 0.3 + (age - 42) / 25
    a["spots"] = int(rng.integers(2, 6)) if age >= 60 and rng.random() < 0.6 else 0
    a["glasses"] = rng.random() < (0.08, 0.22, 0.5)[group]
    a["glasses_color"] = ((20, 20, 20), (120, 80, 40), (160, 160, 170))[rng.integers(3)]
    if male:
        style = "short"
        if age >= 50 and rng.random() < 0.45:
            style = "bald" if age >= 60 and rng.random() < 0.5 else "receding"
        elif rng.random() < 0.12:
            style = "medium"
    else:
        style = str(rng.choice(("long", "bob", "bun"), p=(0.72, 0.2, 0.08)))
    a["style"] = style
    a["hairline"] = rng.uniform(-74, -64)
    a["parting"] = rng.uniform(-30, 30)
    a["stubble"] = rng.uniform(0.25, 0.6) if male and age >= 22 and rng.random() < 0.35 else 0.0
    a["earrings"] = (not male) and rng.random() < 0.4
    a["lips"] = _mix(_shade(a["skin"], 0.8), (185, 45, 60), rng.uniform(0.55, 0.95) if not male else rng.uniform(0.35, 0.55))
    a["clothes"] = tuple(int(v) for v in rng.integers(20, 230, 3))
    a["bg"] = tuple(int(v) for v in rng.integers(60, 235, 3))
    a["bg2"] = _shade(a["bg"], rng.uniform(0.6, 1.3))
    a["bg_kind"] = int(rng.integers(3))
    a["pose"] = (rng.normal(0, 16), rng.normal(0, 10), rng.uniform(1.08, 1.32), rng.normal(0, 4))
    a["incorrect"] = "nose" if rng.random() < 0.6 else "chin"
    a["masks"] = [int(rng.choice(len(_MASKS), p=_MASK_WEIGHTS)) for _ in range(6)]
    a["patterns"] = [int(rng.integers(4)) if rng.random() < 0.3 else 0 for _ in range(6)]
    return a


def _background(draw: ImageDraw.ImageDraw, a: dict, rng: np.random.Generator) -> None:
    bg = _shade(a["bg"], rng.uniform(0.92, 1.08))
    draw.rectangle((0, 0, WIDTH, HEIGHT), fill=bg)
    if a["bg_kind"] == 1:  # a door or cupboard edge behind the person
        x = int(WIDTH * 0.15 + rng.integers(-8, 9))
        draw.rectangle((0, 0, x, HEIGHT), fill=a["bg2"])
    elif a["bg_kind"] == 2:  # wall/floor split
        y = int(HEIGHT * 0.62 + rng.integers(-10, 11))
        draw.rectangle((0, y, WIDTH, HEIGHT), fill=a["bg2"])


def _hair_back(p: _Pen, a: dict) -> None:
    rx, hair = a["rx"], a["hair"]
    if a["style"] in ("long", "bob"):
        bottom = 200 if a["style"] == "long" else 62
        top = _ellipse(0, -6, rx + 16, a["ry"] + 14, 24, math.pi, 2 * math.pi)
        sides = [(rx + 28, bottom), (0, bottom + 10), (-rx - 28, bottom)]
        p.poly(np.vstack([top, sides]), hair)
    elif a["style"] == "bun":
        p.ellipse(0, -a["ry"] - 22, 34, 28, _shade(hair, 0.9))


def _body(p: _Pen, a: dict) -> None:
    skin, clothes = a["skin"], a["clothes"]
    p.poly([(-30, 60), (30, 60), (34, 150), (-34, 150)], _shade(skin, 0.88))  # neck
    p.poly(np.vstack([_ellipse(0, 270, 190, 125, 28, math.pi, 2 * math.pi), [(190, 420), (-190, 420)]]), clothes)
    p.poly([(-36, 146), (0, 190), (36, 146)], _shade(skin, 0.88))  # neckline
    p.line([(-36, 146), (0, 190), (36, 146)], _shade(clothes, 0.7), 4)


def _face(p: _Pen, a: dict) -> None:
    skin, rx, ry = a["skin"], a["rx"], a["ry"]
    p.ellipse(-rx + 2, -8, 12, 22, _shade(skin, 0.9))
    p.ellipse(rx - 2, -8, 12, 22, _shade(skin, 0.9))
    p.poly(_face_outline(rx, ry, a["jaw"]), skin)
    dark = _shade(skin, 1 - a["wrinkle_depth"])
    for k in range(a["wrinkles"]):
        y = -46 - 7 * k
        p.line(_ellipse(0, y + 40, 38 - 2 * k, 40, 9, math.pi * 1.2, math.pi * 1.8), dark, 4.2)
    for k in range(a["spots"]):
        x, y = ((-52, 10), (48, 18), (-30, -52), (40, -48), (58, -8))[k]
        p.ellipse(x, y, 4, 3.5, _shade(skin, 0.72), 10)
    if a["stubble"]:
        # A band along the jaw and chin, mouth area left bare, so a beard never reads as a mask.
        beard = _mix(skin, a["hair"] if a["hair"][0] < 120 else (60, 55, 50), a["stubble"])
        jaw = _face_outline(rx, ry, a["jaw"], 60)
        jaw = jaw[jaw[:, 1] > 35]
        jaw = jaw[jaw[:, 0].argsort()]
        inner = jaw * np.array([0.78, 0.84])
        p.poly(np.vstack([jaw, inner[::-1]]), beard)


def _features(p: _Pen, a: dict) -> None:
    skin = a["skin"]
    for side in (-1, 1):
        x = 32 * side
        p.ellipse(x, -15, 14, 7, (245, 245, 240), 16)
        p.ellipse(x, -15, 6, 6, a["eye"], 12)
        p.line([(x - 18 * side, -36), (x, -40), (x + 17 * side, -35)], _shade(a["hair"], 0.8)
               if a["hair"][0] < 150 else (90, 85, 80), a["brow"])
        if a["bags"]:
            p.line(_ellipse(x, -10, 12, 9, 7, 0.2 * math.pi, 0.8 * math.pi), _shade(skin, 0.72), 2.5)
        if a["crows"]:
            for dy in (-4, 2):
                p.line([(x + 18 * side, -15 + dy), (x + 26 * side, -17 + 2 * dy)], _shade(skin, 0.7), 2.5)
        if a["earrings"]:
            p.ellipse(-a["rx"] * side - 2 * side, 18, 5, 5, (230, 200, 80), 10)
    # Nose: a shaded wedge with nostrils, so a mask that leaves it uncovered is visible.
    p.poly([(0, -12), (-14, 28), (14, 28)], _shade(skin, 0.8))
    p.ellipse(-7, 29, 5, 4, _shade(skin, 0.4), 10)
    p.ellipse(7, 29, 5, 4, _shade(skin, 0.4), 10)
    if a["folds"]:
        for side in (-1, 1):
            p.line([(17 * side, 26), (27 * side, 52)], _shade(skin, 0.7), 3)
    p.ellipse(0, 56, 26, 10, a["lips"], 18)
    p.line([(-24, 56), (24, 56)], _shade(a["lips"], 0.55), 2.5)


def _hair_front(p: _Pen, a: dict) -> None:
    rx, ry, hair, style = a["rx"], a["ry"], a["hair"], a["style"]
    line = a["hairline"] - (18 if style == "receding" else 0)
    outer = _ellipse(0, -6, rx + 9, ry + 10, 26, math.pi * 0.93, math.pi * 2.07)
    if style == "bald":
        for side in (-1, 1):  # a fringe of hair over the ears only
            p.poly([(side * (rx + 8), -60), (side * (rx - 8), -60), (side * (rx - 6), -5),
                    (side * (rx + 10), -5)], hair)
        return
    inner_side = rx - (14 if style != "medium" else 4)
    bottom = -18 if style in ("short", "receding", "bun") else 10
    hairline = _ellipse(a["parting"] * 0.3, line + 40, inner_side, 42, 14, math.pi * 1.95, math.pi * 1.05)
    p.poly(np.vstack([[(-(rx + 9), bottom)], outer, [(rx + 9, bottom), (inner_side, bottom)], hairline,
                      [(-inner_side, bottom)]]), hair)
    if style in ("long", "bob"):  # strands falling in front of the ears, framing the face
        low = 120 if style == "long" else 58
        for side in (-1, 1):
            p.poly([(side * (rx - 8), -40), (side * (rx + 24), -40), (side * (rx + 26), low),
                    (side * (rx + 2), low)], hair)
    p.line([(a["parting"], -ry - 2), (a["parting"] * 0.6, line)], _shade(hair, 0.75), 2.5)


def _glasses(p: _Pen, a: dict) -> None:
    c = a["glasses_color"]
    for x in (-32, 32):
        p.line(np.vstack([_ellipse(x, -15, 19, 14, 18), [(x + 19, -15)]]), c, 3)
    p.line([(-13, -17), (13, -17)], c, 3)


def _mask(p: _Pen, a: dict, mask: int, shot: int, u: float) -> None:
    """``mask``: 0 worn over the nose, 1 pulled below the nose or onto the chin, 2 none; ``u`` in [0, 1)
    jitters how high it sits."""
    if mask == 2:
        return
    rx, ry = a["rx"], a["ry"]
    colour = _MASKS[a["masks"][shot]]
    pattern = a["patterns"][shot]
    if mask == 0:
        top, height = -6 + 10 * u, 118
    elif a["incorrect"] == "nose":
        top, height = 37 + 7 * u, 82
    else:
        top, height = 66 + 8 * u, 64
    bottom = top + height
    wt = _half_width(rx, ry, top) + 6
    wb = max(_half_width(rx, ry, min(bottom - 25, ry - 1)) + 4, 40)
    bump = 8 if mask == 0 else 2
    outline = np.vstack([[(-wt, top), (0, top - bump), (wt, top), (wb, bottom - 28)],
                         _ellipse(0, bottom - 28, wb, 28, 12, 0.0, math.pi)])
    p.poly(outline, colour)
    edge = _shade(colour, 0.72) if sum(colour) > 200 else _shade(colour, 1.6)
    p.line(np.vstack([outline, outline[:1]]), _shade(colour, 0.55) if sum(colour) > 200 else edge, 3)
    for k in (1, 2):
        y = top + height * k / 3.4
        p.line([(-wt * 0.85, y), (wt * 0.85, y)], edge, 2.5)
    if pattern:
        dot = ((240, 80, 90), (60, 60, 60), (250, 250, 250))[pattern - 1]
        for i in range(-2, 3):
            for j in range(3):
                p.ellipse(i * 22 + (j % 2) * 10, top + 18 + j * height / 4, 4, 4, dot, 8)
    for side in (-1, 1):  # ear loops
        p.line([(side * wt, top + 4), (side * (rx + 2), -12)], edge, 2.5)
        p.line([(side * wb, bottom - 30), (side * (rx + 2), 4)], edge, 2.5)


_NOISE_SIGMAS = (2.5, 4.5, 7.0)
_noise_banks: dict[int, list[Image.Image]] = {}


def _noise_bank(seed: int) -> list[Image.Image]:
    """Gaussian noise images (centred on 128), one per level, made once per process from the seed
    alone: shots crop them at random offsets, which costs far less than fresh noise per image."""
    if seed not in _noise_banks:
        rng = np.random.default_rng([seed, 99])
        _noise_banks[seed] = [
            Image.fromarray(np.clip(128 + rng.standard_normal((HEIGHT + 128, WIDTH + 128, 3)) * s, 0, 255)
                            .astype(np.uint8), "RGB") for s in _NOISE_SIGMAS]
    return _noise_banks[seed]


def _photo(img: Image.Image, rng: np.random.Generator, seed: int) -> Image.Image:
    """Camera effects: exposure, colour cast, a light gradient, sensor noise, sometimes blur."""
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    gain = rng.uniform(0.8, 1.25) * (1 + rng.normal(0, 0.05, 3))
    img = img.point([min(255, int(v * g)) for g in gain for v in range(256)])
    angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.3)
    gx = np.linspace(-0.5, 0.5, 6) * math.cos(angle)
    gy = np.linspace(-0.5, 0.5, 8) * math.sin(angle)
    light = 255 * (1 - strength * (0.5 + gx[None, :] + gy[:, None]))
    band = Image.fromarray(np.clip(light, 0, 255).astype(np.uint8), "L")
    band = band.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    img = ImageChops.multiply(img, Image.merge("RGB", (band, band, band)))
    noise = _noise_bank(seed)[int(rng.integers(len(_NOISE_SIGMAS)))]
    ox, oy = int(rng.integers(0, 129)), int(rng.integers(0, 129))
    return ImageChops.add(img, noise.crop((ox, oy, ox + WIDTH, oy + HEIGHT)), 1.0, -128)


def render(rng: np.random.Generator, appearance: dict, mask: int, shot: int, seed: int = 0) -> Image.Image:
    """One 384×512 RGB shot of a person with the given mask state."""
    a = appearance
    img = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(img)
    _background(draw, a, rng)
    dx, dy, scale, angle = a["pose"]
    cx = WIDTH / 2 + dx + rng.normal(0, 7)
    cy = HEIGHT * 0.42 + dy + rng.normal(0, 7)
    p = _Pen(draw, cx, cy, scale * rng.uniform(0.96, 1.04), angle + rng.normal(0, 3))
    _hair_back(p, a)
    _body(p, a)
    _face(p, a)
    _features(p, a)
    _hair_front(p, a)
    if a["glasses"]:
        _glasses(p, a)
    _mask(p, a, mask, shot, float(rng.random()))  # drawn for every state, so the rest of the shot does not depend on it
    return _photo(img, rng, seed)


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
    appearance = _appearance(rng, spec.gender, spec.age)
    out = Path(folder)
    for shot, (stem, name) in enumerate(zip(MASK_FILES, spec.names)):
        img = render(rng, appearance, MASK_OF_FILE[stem], min(shot, 5), seed)
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


def generate(out_dir: str | os.PathLike, people: int = 300, eval_people: int = 100, seed: int = 0,
             label_noise: float = 0.01, workers: int | None = None, overwrite: bool = False,
             progress: bool = False) -> dict:
    """Write ``out_dir/train`` and ``out_dir/eval`` in the SPEC §2 layout; return a summary dict.

    Everything is built in a temporary folder inside ``out_dir`` and moved into place at the end,
    so an interrupted run leaves no half-written data set. ``workers`` (default: all CPUs) only
    changes speed, never the bytes written.
    """
    if people < 1 or eval_people < 0:
        raise ValueError(f"need people >= 1 and eval people >= 0, got {people} and {eval_people}")
    if not 0 <= label_noise < 0.5:
        raise ValueError(f"label noise must be in [0, 0.5), got {label_noise}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table_rng = np.random.default_rng([seed, 0])
    train_specs, train_rows, noisy = _train_table(table_rng, people, label_noise)
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
    # Without timing and location, so the file is as reproducible as the images.
    recorded = {k: v for k, v in summary.items() if k not in ("seconds", "out_dir")}
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
