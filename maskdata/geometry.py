"""Crop and aspect-policy geometry of the eval preprocessing (torch-free, pure arithmetic).

The order is decode → EXIF orientation → **crop** → **aspect policy** → resize (docs/ARCHITECTURE.md). Every box
here is in the pixels of the *upright, full-resolution* source image; ``maskdata.preprocess``
scales them when a JPEG was draft-decoded at 1/2, 1/4 or 1/8.

- crop spec ``""`` (none), ``"center:H,W"`` (a centred H×W box in source pixels) or
  ``"box:LEFT,TOP,RIGHT,BOTTOM"`` (all four in 0–1: relative to the image; otherwise pixels).
- aspect policy ``stretch`` (resize whatever is kept to the input size), ``crop`` (centre-crop what
  is kept to the input's aspect, then resize) or ``pad`` (resize to fit inside, letterbox the rest
  with the recorded fill colour).

:func:`input_to_source` maps model-input coordinates back to source pixels (for overlays such as
an explanation heat map laid over the photo); :func:`input_box_in_source` is the source rectangle
the whole model input covers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ASPECT_POLICIES = ("stretch", "crop", "pad")
CROP_KINDS = ("center", "box")


class CropError(ValueError):
    """The crop does not fit the image (a served image smaller than a pixel box: HTTP 400)."""


def parse_crop(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"center:200,160"`` → ``("center", (200.0, 160.0))``; ``""`` → ``("", ())``; ValueError with one line."""
    spec = (spec or "").strip()
    if not spec:
        return "", ()
    kind, _, rest = spec.partition(":")
    want = {"center": 2, "box": 4}.get(kind)
    usage = "expected center:H,W or box:LEFT,TOP,RIGHT,BOTTOM"
    if want is None:
        raise ValueError(f"unknown crop {spec!r}; {usage}")
    try:
        values = tuple(float(v) for v in rest.split(","))
    except ValueError:
        raise ValueError(f"bad crop {spec!r}: values must be numbers; {usage}") from None
    if len(values) != want or not all(np.isfinite(values)):
        raise ValueError(f"bad crop {spec!r}: {kind} takes {want} numbers; {usage}")
    if any(v < 0 for v in values):
        raise ValueError(f"bad crop {spec!r}: values must be >= 0")
    if kind == "center":
        if values[0] < 1 or values[1] < 1:
            raise ValueError(f"bad crop {spec!r}: the box has zero size")
        return kind, values
    left, top, right, bottom = values
    if right <= left or bottom <= top:
        raise ValueError(f"bad crop {spec!r}: the box is inverted or of zero size (need LEFT < RIGHT, TOP < BOTTOM)")
    if _relative(values) and max(values) > 1:
        raise ValueError(f"bad crop {spec!r}: relative coordinates must lie in 0-1")
    return kind, values


def _relative(values: tuple[float, ...]) -> bool:
    return all(v <= 1 for v in values)


def crop_box(spec: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer (left, top, right, bottom) of the crop in an image of ``size`` (width, height).

    Raises :class:`CropError` when a pixel box does not lie inside the image.
    """
    w, h = size
    kind, v = parse_crop(spec)
    if not kind:
        return 0, 0, w, h
    if kind == "center":
        ch, cw = int(round(v[0])), int(round(v[1]))
        if ch > h or cw > w:
            raise CropError(f"image is {w}x{h}, smaller than the {cw}x{ch} (WxH) centre crop the model was trained with")
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch
    if _relative(v):
        box = (round(v[0] * w), round(v[1] * h), round(v[2] * w), round(v[3] * h))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise CropError(f"image is {w}x{h}: the crop {spec!r} keeps no pixel of it")
        return box
    box = tuple(int(round(x)) for x in v)
    if box[2] > w or box[3] > h:
        raise CropError(f"image is {w}x{h}, smaller than the crop box {spec!r} the model was trained with")
    return box


@dataclass(frozen=True)
class Plan:
    """Where the source pixels go: ``region`` (source box kept) is resized to ``content`` (size) and
    placed at ``offset`` inside the (width, height) model input; everything else is pad fill."""
    region: tuple[int, int, int, int]
    content: tuple[int, int]
    offset: tuple[int, int]


def plan(crop: str, aspect: str, source: tuple[int, int], target: tuple[int, int]) -> Plan:
    """The geometry for a ``source`` (width, height) image and a ``target`` (width, height) input."""
    if aspect not in ASPECT_POLICIES:
        raise ValueError(f"unknown aspect policy {aspect!r}; expected one of {list(ASPECT_POLICIES)}")
    left, top, right, bottom = crop_box(crop, source)
    cw, ch = right - left, bottom - top
    tw, th = target
    if aspect == "crop" and cw * th != ch * tw:
        if cw * th > ch * tw:                    # too wide: keep the centre columns
            nw = max(1, round(ch * tw / th))
            left += (cw - nw) // 2
            right = left + nw
        else:                                    # too tall: keep the centre rows
            nh = max(1, round(cw * th / tw))
            top += (ch - nh) // 2
            bottom = top + nh
    if aspect == "pad" and cw * th != ch * tw:
        scale = min(tw / cw, th / ch)
        content = (max(1, min(tw, round(cw * scale))), max(1, min(th, round(ch * scale))))
        offset = ((tw - content[0]) // 2, (th - content[1]) // 2)
        return Plan((left, top, right, bottom), content, offset)
    return Plan((left, top, right, bottom), (tw, th), (0, 0))


def input_to_source_affine(preprocess, source_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(sx, sy, tx, ty)`` with ``source_x = sx * input_x + tx`` (and the same for y).

    Coordinates are continuous (pixel edges: input pixel ``i`` spans ``[i, i + 1)``), in the upright
    full-resolution source image of ``source_size`` (width, height).
    """
    p = plan(preprocess.crop, preprocess.aspect, source_size, preprocess.size)
    left, top, right, bottom = p.region
    sx, sy = (right - left) / p.content[0], (bottom - top) / p.content[1]
    return sx, sy, left - sx * p.offset[0], top - sy * p.offset[1]


def input_to_source(preprocess, source_size: tuple[int, int], points) -> np.ndarray:
    """Model-input (x, y) points, shape (..., 2), → source-image (x, y) pixels, same shape.

    The public mapping for overlays: e.g. the centres of the input grid are
    ``np.stack(np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5), -1)``. Points in a ``pad``
    margin map outside the source image (clip them if needed).
    """
    sx, sy, tx, ty = input_to_source_affine(preprocess, source_size)
    pts = np.asarray(points, dtype=np.float64)
    return np.stack([pts[..., 0] * sx + tx, pts[..., 1] * sy + ty], axis=-1)


def input_box_in_source(preprocess, source_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in source pixels covered by the whole model input (may exceed the
    image under ``pad``): resize a heat map of the input to this box and paste it there."""
    (l, t), (r, b) = input_to_source(preprocess, source_size, [[0, 0], list(preprocess.size)])
    return float(l), float(t), float(r), float(b)
