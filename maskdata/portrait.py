"""Drawing for the synthetic generator (:mod:`maskdata.synth`): one person's appearance, drawn
once from its RNG, and the shots of it, as PIL cartoon portraits whose labels are visible but not
trivial to read (see :mod:`maskdata.synth` for what carries each label).

Everything here is a pure function of the RNG it is given (and of the seed, for the shared noise
bank), so the generator's files are byte-identical per seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from maskdata import labels

WIDTH, HEIGHT = 384, 512
SHOTS = 6  # distinct mask looks per person: mask1..mask5 and incorrect_mask (normal reuses the last)


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


@dataclass(frozen=True)
class Appearance:
    """Identity of one person: drawn once by :func:`appearance`, shared by its seven shots.

    Lengths are in face units (about 100 from the face centre to the chin), colours RGB tuples.
    """
    skin: tuple[int, int, int]
    rx: float                 # face half-width: wider for men
    ry: float                 # face half-height
    jaw: float                # superellipse exponent of the lower face: > 2 is squarer (men)
    brow: float               # eyebrow thickness
    eye: tuple[int, int, int]
    hair: tuple[int, int, int]  # base colour mixed towards grey with age
    wrinkles: int             # forehead lines: count grows with age
    wrinkle_depth: float      # how much darker than the skin they are
    bags: bool                # eye bags
    crows: bool               # crow's feet
    folds: bool               # nasolabial folds
    spots: int                # age spots
    glasses: bool
    glasses_color: tuple[int, int, int]
    style: str                # short | medium | receding | bald | long | bob | bun
    hairline: float
    parting: float
    stubble: float            # 0 = none, else how strongly the beard band shows
    earrings: bool
    lips: tuple[int, int, int]
    clothes: tuple[int, int, int]
    bg: tuple[int, int, int]
    bg2: tuple[int, int, int]  # second background colour (door edge or floor)
    bg_kind: int              # 0 plain, 1 door/cupboard edge, 2 wall/floor split
    pose: tuple[float, float, float, float]  # (dx, dy, scale, angle) shared by the shots
    incorrect: str            # how an incorrect mask sits: "nose" (below it) or "chin"
    masks: tuple[int, ...]    # mask colour per shot (index into _MASKS)
    patterns: tuple[int, ...]  # mask pattern per shot (0 none)


# The helpers below draw from the person's RNG in a fixed order (face, hair colour, age signs,
# style, scene): reordering them changes every image the generator writes.

def _face_shape(rng: np.random.Generator, male: bool) -> dict:
    return {"skin": _mix((245, 218, 194), (140, 98, 70), rng.random() ** 1.3),
            "rx": rng.uniform(84, 92) if male else rng.uniform(75, 83),
            "ry": rng.uniform(100, 112),
            "jaw": rng.uniform(2.7, 3.3) if male else rng.uniform(2.0, 2.3),
            "brow": rng.uniform(6.5, 9) if male else rng.uniform(3, 4.5),
            "eye": _mix((20, 15, 12), (90, 60, 40), rng.random())}


def _hair_colour(rng: np.random.Generator, group: int, age: int) -> tuple[int, int, int]:
    base = _HAIR_DYED[rng.integers(len(_HAIR_DYED))] if group == 0 and rng.random() < 0.12 \
        else _HAIR_YOUNG[rng.integers(len(_HAIR_YOUNG))]
    # Grey hair and forehead lines carry the age group; within a group they still vary with age.
    if group == 0:
        grey = 0.0
    elif group == 1:
        grey = float(np.clip((age - 35) / 25 * 0.35 + rng.normal(0, 0.05), 0, 0.35))
    else:
        grey = float(np.clip(0.8 + (age - 60) / 60 + rng.normal(0, 0.05), 0.75, 1.0))
    return _mix(base, (212, 212, 214), grey)


def _age_signs(rng: np.random.Generator, group: int, age: int) -> dict:
    if group == 0:
        wrinkles, depth = (1 if age >= 27 and rng.random() < 0.25 else 0), 0.12
    elif group == 1:
        wrinkles = 1 + int(age >= 44) + int(age >= 54 and rng.random() < 0.3)
        depth = 0.32 + 0.18 * (age - 30) / 30
    else:
        wrinkles = 3 if rng.random() < 0.1 else 4 + int(rng.random() < 0.5)
        depth = 0.5 + min(0.15, (age - 60) / 100)
    out = {"wrinkles": wrinkles, "wrinkle_depth": depth}
    out["bags"] = group == 2 or (age >= 30 and rng.random() < 0.3 + (age - 30) / 40)
    out["crows"] = age >= 40 and rng.random() < 0.2 + (age - 40) / 30
    out["folds"] = age >= 42 and rng.random() < 0.3 + (age - 42) / 25
    out["spots"] = int(rng.integers(2, 6)) if age >= 60 and rng.random() < 0.6 else 0
    out["glasses"] = rng.random() < (0.08, 0.22, 0.5)[group]
    out["glasses_color"] = ((20, 20, 20), (120, 80, 40), (160, 160, 170))[rng.integers(3)]
    return out


def _style(rng: np.random.Generator, male: bool, age: int, skin: tuple[int, int, int]) -> dict:
    if male:
        style = "short"
        if age >= 50 and rng.random() < 0.45:
            style = "bald" if age >= 60 and rng.random() < 0.5 else "receding"
        elif rng.random() < 0.12:
            style = "medium"
    else:
        style = str(rng.choice(("long", "bob", "bun"), p=(0.72, 0.2, 0.08)))
    out = {"style": style, "hairline": rng.uniform(-74, -64), "parting": rng.uniform(-30, 30)}
    out["stubble"] = rng.uniform(0.25, 0.6) if male and age >= 22 and rng.random() < 0.35 else 0.0
    out["earrings"] = (not male) and rng.random() < 0.4
    out["lips"] = _mix(_shade(skin, 0.8), (185, 45, 60),
                       rng.uniform(0.55, 0.95) if not male else rng.uniform(0.35, 0.55))
    return out


def _scene(rng: np.random.Generator) -> dict:
    out = {"clothes": tuple(int(v) for v in rng.integers(20, 230, 3)),
           "bg": tuple(int(v) for v in rng.integers(60, 235, 3))}
    out["bg2"] = _shade(out["bg"], rng.uniform(0.6, 1.3))
    out["bg_kind"] = int(rng.integers(3))
    out["pose"] = (rng.normal(0, 16), rng.normal(0, 10), rng.uniform(1.08, 1.32), rng.normal(0, 4))
    out["incorrect"] = "nose" if rng.random() < 0.6 else "chin"
    out["masks"] = tuple(int(rng.choice(len(_MASKS), p=_MASK_WEIGHTS)) for _ in range(SHOTS))
    out["patterns"] = tuple(int(rng.integers(4)) if rng.random() < 0.3 else 0 for _ in range(SHOTS))
    return out


def appearance(rng: np.random.Generator, gender: int, age: int) -> Appearance:
    """Identity of one person (true ``gender`` index and ``age`` in years), from its RNG."""
    male = gender == 0
    group = labels.age_group(age)
    face = _face_shape(rng, male)
    hair = _hair_colour(rng, group, age)
    signs = _age_signs(rng, group, age)
    return Appearance(**face, hair=hair, **signs, **_style(rng, male, age, face["skin"]), **_scene(rng))


def _background(draw: ImageDraw.ImageDraw, a: Appearance, rng: np.random.Generator) -> None:
    bg = _shade(a.bg, rng.uniform(0.92, 1.08))
    draw.rectangle((0, 0, WIDTH, HEIGHT), fill=bg)
    if a.bg_kind == 1:  # a door or cupboard edge behind the person
        x = int(WIDTH * 0.15 + rng.integers(-8, 9))
        draw.rectangle((0, 0, x, HEIGHT), fill=a.bg2)
    elif a.bg_kind == 2:  # wall/floor split
        y = int(HEIGHT * 0.62 + rng.integers(-10, 11))
        draw.rectangle((0, y, WIDTH, HEIGHT), fill=a.bg2)


def _hair_back(p: _Pen, a: Appearance) -> None:
    rx, hair = a.rx, a.hair
    if a.style in ("long", "bob"):
        bottom = 200 if a.style == "long" else 62
        top = _ellipse(0, -6, rx + 16, a.ry + 14, 24, math.pi, 2 * math.pi)
        sides = [(rx + 28, bottom), (0, bottom + 10), (-rx - 28, bottom)]
        p.poly(np.vstack([top, sides]), hair)
    elif a.style == "bun":
        p.ellipse(0, -a.ry - 22, 34, 28, _shade(hair, 0.9))


def _body(p: _Pen, a: Appearance) -> None:
    skin, clothes = a.skin, a.clothes
    p.poly([(-30, 60), (30, 60), (34, 150), (-34, 150)], _shade(skin, 0.88))  # neck
    p.poly(np.vstack([_ellipse(0, 270, 190, 125, 28, math.pi, 2 * math.pi), [(190, 420), (-190, 420)]]), clothes)
    p.poly([(-36, 146), (0, 190), (36, 146)], _shade(skin, 0.88))  # neckline
    p.line([(-36, 146), (0, 190), (36, 146)], _shade(clothes, 0.7), 4)


def _face(p: _Pen, a: Appearance) -> None:
    skin, rx, ry = a.skin, a.rx, a.ry
    p.ellipse(-rx + 2, -8, 12, 22, _shade(skin, 0.9))
    p.ellipse(rx - 2, -8, 12, 22, _shade(skin, 0.9))
    p.poly(_face_outline(rx, ry, a.jaw), skin)
    dark = _shade(skin, 1 - a.wrinkle_depth)
    for k in range(a.wrinkles):
        y = -46 - 7 * k
        p.line(_ellipse(0, y + 40, 38 - 2 * k, 40, 9, math.pi * 1.2, math.pi * 1.8), dark, 4.2)
    for k in range(a.spots):
        x, y = ((-52, 10), (48, 18), (-30, -52), (40, -48), (58, -8))[k]
        p.ellipse(x, y, 4, 3.5, _shade(skin, 0.72), 10)
    if a.stubble:
        # A band along the jaw and chin, mouth area left bare, so a beard never reads as a mask.
        beard = _mix(skin, a.hair if a.hair[0] < 120 else (60, 55, 50), a.stubble)
        jaw = _face_outline(rx, ry, a.jaw, 60)
        jaw = jaw[jaw[:, 1] > 35]
        jaw = jaw[jaw[:, 0].argsort()]
        inner = jaw * np.array([0.78, 0.84])
        p.poly(np.vstack([jaw, inner[::-1]]), beard)


def _features(p: _Pen, a: Appearance) -> None:
    skin = a.skin
    for side in (-1, 1):
        x = 32 * side
        p.ellipse(x, -15, 14, 7, (245, 245, 240), 16)
        p.ellipse(x, -15, 6, 6, a.eye, 12)
        p.line([(x - 18 * side, -36), (x, -40), (x + 17 * side, -35)], _shade(a.hair, 0.8)
               if a.hair[0] < 150 else (90, 85, 80), a.brow)
        if a.bags:
            p.line(_ellipse(x, -10, 12, 9, 7, 0.2 * math.pi, 0.8 * math.pi), _shade(skin, 0.72), 2.5)
        if a.crows:
            for dy in (-4, 2):
                p.line([(x + 18 * side, -15 + dy), (x + 26 * side, -17 + 2 * dy)], _shade(skin, 0.7), 2.5)
        if a.earrings:
            p.ellipse(-a.rx * side - 2 * side, 18, 5, 5, (230, 200, 80), 10)
    # Nose: a shaded wedge with nostrils, so a mask that leaves it uncovered is visible.
    p.poly([(0, -12), (-14, 28), (14, 28)], _shade(skin, 0.8))
    p.ellipse(-7, 29, 5, 4, _shade(skin, 0.4), 10)
    p.ellipse(7, 29, 5, 4, _shade(skin, 0.4), 10)
    if a.folds:
        for side in (-1, 1):
            p.line([(17 * side, 26), (27 * side, 52)], _shade(skin, 0.7), 3)
    p.ellipse(0, 56, 26, 10, a.lips, 18)
    p.line([(-24, 56), (24, 56)], _shade(a.lips, 0.55), 2.5)


def _hair_front(p: _Pen, a: Appearance) -> None:
    rx, ry, hair, style = a.rx, a.ry, a.hair, a.style
    line = a.hairline - (18 if style == "receding" else 0)
    outer = _ellipse(0, -6, rx + 9, ry + 10, 26, math.pi * 0.93, math.pi * 2.07)
    if style == "bald":
        for side in (-1, 1):  # a fringe of hair over the ears only
            p.poly([(side * (rx + 8), -60), (side * (rx - 8), -60), (side * (rx - 6), -5),
                    (side * (rx + 10), -5)], hair)
        return
    inner_side = rx - (14 if style != "medium" else 4)
    bottom = -18 if style in ("short", "receding", "bun") else 10
    hairline = _ellipse(a.parting * 0.3, line + 40, inner_side, 42, 14, math.pi * 1.95, math.pi * 1.05)
    p.poly(np.vstack([[(-(rx + 9), bottom)], outer, [(rx + 9, bottom), (inner_side, bottom)], hairline,
                      [(-inner_side, bottom)]]), hair)
    if style in ("long", "bob"):  # strands falling in front of the ears, framing the face
        low = 120 if style == "long" else 58
        for side in (-1, 1):
            p.poly([(side * (rx - 8), -40), (side * (rx + 24), -40), (side * (rx + 26), low),
                    (side * (rx + 2), low)], hair)
    p.line([(a.parting, -ry - 2), (a.parting * 0.6, line)], _shade(hair, 0.75), 2.5)


def _glasses(p: _Pen, a: Appearance) -> None:
    c = a.glasses_color
    for x in (-32, 32):
        p.line(np.vstack([_ellipse(x, -15, 19, 14, 18), [(x + 19, -15)]]), c, 3)
    p.line([(-13, -17), (13, -17)], c, 3)


def _mask(p: _Pen, a: Appearance, mask: int, shot: int, u: float) -> None:
    """``mask``: 0 worn over the nose, 1 pulled below the nose or onto the chin, 2 none; ``u`` in [0, 1)
    jitters how high it sits."""
    if mask == 2:
        return
    rx, ry = a.rx, a.ry
    colour = _MASKS[a.masks[shot]]
    pattern = a.patterns[shot]
    if mask == 0:
        top, height = -6 + 10 * u, 118
    elif a.incorrect == "nose":
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


def render(rng: np.random.Generator, look: Appearance, mask: int, shot: int, seed: int = 0) -> Image.Image:
    """One 384×512 RGB shot of a person with the given mask state (``shot`` picks the mask colour)."""
    a = look
    img = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(img)
    _background(draw, a, rng)
    dx, dy, scale, angle = a.pose
    cx = WIDTH / 2 + dx + rng.normal(0, 7)
    cy = HEIGHT * 0.42 + dy + rng.normal(0, 7)
    p = _Pen(draw, cx, cy, scale * rng.uniform(0.96, 1.04), angle + rng.normal(0, 3))
    _hair_back(p, a)
    _body(p, a)
    _face(p, a)
    _features(p, a)
    _hair_front(p, a)
    if a.glasses:
        _glasses(p, a)
    _mask(p, a, mask, shot, float(rng.random()))  # drawn for every state, so the rest of the shot does not depend on it
    return _photo(img, rng, seed)
