"""The ONE eval preprocessing (SPEC §4), torch-free: decode → EXIF orientation → RGB → resize → uint8.

It is recorded in every checkpoint and every ONNX model (``Preprocess.to_dict``) and used by
training's validation, export's parity check, the REST service and the batch job, so the same file
gives the same pixels everywhere. Normalization (mean/std) is *not* applied here: it lives inside
the model graph, which takes uint8 NHWC (the layout decoders produce, so clients need no transpose).

JPEG "draft" decoding lets libjpeg decode at 1/2, 1/4 or 1/8 scale directly when the target is
that much smaller, which is most of the decode cost for 384×512 photos resized to 128×96.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "box": Image.Resampling.BOX}
DEFAULT_MAX_PIXELS = 40_000_000
_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An input that is not a usable image; the message is safe to show to a client."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (or a decompression bomb): too large, rather than broken, so the
    REST service answers 413 for it from the type, never from the message's words."""


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    resize_filter: str = "bilinear"
    jpeg_draft: bool = True
    # Draft-decode to no less than this multiple of the target, then resize: scale 1 is fastest but
    # its DCT-domain average differs more from a full decode + resize (what other tools feed);
    # 2 keeps most of the speed and comes within a third of a grey level of the full decode.
    draft_scale: int = 2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NHWC"
    dtype: str = "uint8"

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size must be at least 8x8, got {self.height}x{self.width}")
        if self.draft_scale < 1:
            raise ValueError(f"draft_scale must be >= 1, got {self.draft_scale}")
        if self.resize_filter not in FILTERS:
            raise ValueError(f"unknown resize filter {self.resize_filter!r}; expected one of {sorted(FILTERS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known.setdefault("draft_scale", 1)  # artifacts written before the field existed decoded at scale 1
        known["mean"] = tuple(float(x) for x in known.get("mean", IMAGENET_MEAN))
        known["std"] = tuple(float(x) for x in known.get("std", IMAGENET_STD))
        return cls(**known)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.width, self.height

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """Smallest (width, height) a JPEG may be draft-decoded to, or None for a full decode."""
        if not self.jpeg_draft:
            return None
        return self.width * self.draft_scale, self.height * self.draft_scale

    def __call__(self, source, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Image file path, bytes or PIL image → (H, W, 3) uint8 array."""
        img = open_image(source, max_pixels=max_pixels, draft_size=self.draft_size)
        return self.resize(img)

    def resize(self, img: Image.Image) -> np.ndarray:
        if img.size != self.size:
            img = img.resize(self.size, FILTERS[self.resize_filter])
        return np.asarray(img, dtype=np.uint8)


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a path, bytes or PIL image to an upright RGB PIL image, or raise :class:`ImageError`.

    ``draft_size`` (width, height) allows JPEG DCT-domain downscaling to no smaller than that size.
    Rejects empty/truncated/non-image data and images over ``max_pixels`` before decoding them.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("empty upload: no image bytes")
            fp, name = io.BytesIO(source), "upload"
        elif isinstance(source, (str, os.PathLike)):
            fp, name = Path(source), str(source)
        else:
            fp, name = source, getattr(source, "name", "stream")
        try:
            img = Image.open(fp)
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not a recognised image (expected JPEG, PNG, WebP, BMP, ...)") from None
        except Image.DecompressionBombError as e:  # PIL's own hard limit, checked on open; not an OSError
            raise ImageTooLarge(f"{name}: too many pixels, over the limit of {max_pixels}: {e}") from None
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot read image: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    if w == 0 or h == 0:
        raise ImageError("image has zero size")
    orientation = img.getexif().get(_ORIENTATION_TAG, 1) if hasattr(img, "getexif") else 1
    if draft_size is not None and img.format == "JPEG":
        dw, dh = draft_size
        if orientation in (5, 6, 7, 8):  # rotated 90°: the stored image is transposed
            dw, dh = dh, dw
        img.draft("RGB", (dw, dh))
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"truncated or corrupt image: {e}") from None
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F …) → RGB; transparency composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(1.0, float(arr.max()))
        if img.mode == "F" and top <= 1.0:
            top = 1.0
        arr = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
