"""The ONE eval preprocessing (docs/ARCHITECTURE.md), torch-free: decode → EXIF orientation → RGB → crop → aspect
policy → resize → uint8 (the crop/aspect arithmetic is in ``maskdata.geometry``).

It is recorded in every checkpoint and every ONNX model (``Preprocess.to_dict``) and used by
training's validation, export's parity check, the REST service and the batch job, so the same file
gives the same pixels everywhere. Normalization (mean/std) is *not* applied here: it lives inside
the model graph, which takes uint8 NHWC (the layout decoders produce, so clients need no transpose).

JPEG "draft" decoding lets libjpeg decode at 1/2, 1/4 or 1/8 scale directly when the target is
that much smaller, which is most of the decode cost for 384×512 photos resized to 128×96. The
scale is chosen from the region actually kept (after crop and aspect policy), not the whole frame.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskdata import geometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "box": Image.Resampling.BOX}
DEFAULT_MAX_PIXELS = 40_000_000
# the file suffixes taken for photos where a folder is searched for them (export's parity images)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
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
    crop: str = ""                 # "" | "center:H,W" | "box:L,T,R,B" (maskdata.geometry)
    # stretch here (what every artifact before format 2 did); mask-train records its own default
    aspect: str = "stretch"        # stretch | crop | pad
    pad_fill: tuple[int, int, int] = (124, 116, 104)   # ImageNet mean: zero after normalization

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size must be at least 8x8, got {self.height}x{self.width}")
        if self.draft_scale < 1:
            raise ValueError(f"draft_scale must be >= 1, got {self.draft_scale}")
        if self.resize_filter not in FILTERS:
            raise ValueError(f"unknown resize filter {self.resize_filter!r}; expected one of {sorted(FILTERS)}")
        geometry.parse_crop(self.crop)
        if self.aspect not in geometry.ASPECT_POLICIES:
            raise ValueError(f"unknown aspect policy {self.aspect!r}; expected one of {list(geometry.ASPECT_POLICIES)}")
        if len(self.pad_fill) != 3 or not all(0 <= int(c) <= 255 for c in self.pad_fill):
            raise ValueError(f"pad fill must be three 0-255 values, got {self.pad_fill!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["pad_fill"] = list(self.mean), list(self.std), list(self.pad_fill)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """The recorded preprocessing; a key this reader does not know is refused, never dropped
        (ignoring a step would answer wrongly). Keys absent from older artifacts keep their old meaning."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"preprocessing step(s) {','.join(unknown)} unknown to this reader; upgrade the package")
        known = dict(d)
        known.setdefault("draft_scale", 1)  # artifacts written before the field existed decoded at scale 1
        known["mean"] = tuple(float(x) for x in known.get("mean", IMAGENET_MEAN))
        known["std"] = tuple(float(x) for x in known.get("std", IMAGENET_STD))
        if "pad_fill" in known:
            known["pad_fill"] = tuple(int(x) for x in known["pad_fill"])
        return cls(**known)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.width, self.height

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """Smallest (width, height) a JPEG may be draft-decoded to when the whole frame is kept, or None."""
        if not self.jpeg_draft:
            return None
        return self.width * self.draft_scale, self.height * self.draft_scale

    def plan(self, source_size: tuple[int, int]) -> geometry.Plan:
        """Crop + aspect geometry for an upright source of ``source_size`` (width, height)."""
        return geometry.plan(self.crop, self.aspect, source_size, self.size)

    def draft_size_for(self, source_size: tuple[int, int]) -> tuple[int, int]:
        """Smallest (width, height) of the whole frame that still gives the kept region
        ``draft_scale`` source pixels per output pixel."""
        p = self.plan(source_size)
        (left, top, right, bottom), (cw, ch) = p.region, p.content
        return (-(-source_size[0] * cw * self.draft_scale // (right - left)),
                -(-source_size[1] * ch * self.draft_scale // (bottom - top)))

    def __call__(self, source, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Image file path, bytes or PIL image → (H, W, 3) uint8 array: :meth:`decode`, then :meth:`resize`."""
        return self.resize(*self.decode(source, max_pixels))

    def decode(self, source, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
        """The decoding half of :meth:`__call__`: (upright RGB image, its full-resolution (width, height)).
        A JPEG is draft-decoded as small as this crop, aspect policy and output size allow."""
        seen: dict = {}

        def draft(upright: tuple[int, int]) -> tuple[int, int]:
            seen["size"] = upright
            try:
                return self.draft_size_for(upright)
            except geometry.CropError as e:
                raise ImageError(str(e)) from None
        img = open_image(source, max_pixels=max_pixels, draft_size=draft if self.jpeg_draft else None)
        return img, seen.get("size") or img.size

    def resize(self, img: Image.Image, source_size: tuple[int, int] | None = None) -> np.ndarray:
        """Crop, apply the aspect policy and resize an upright RGB image; ``source_size`` is its
        full-resolution size when it was draft-decoded smaller (boxes are in source pixels)."""
        source_size = source_size or img.size
        try:
            p = self.plan(source_size)
        except geometry.CropError as e:  # a served image smaller than the model's pixel crop box: HTTP 400
            raise ImageError(str(e)) from None
        if p.region != (0, 0, *source_size):
            fx, fy = img.size[0] / source_size[0], img.size[1] / source_size[1]
            left, top, right, bottom = p.region
            box = (round(left * fx), round(top * fy), round(right * fx), round(bottom * fy))
            img = img.crop((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)))
        if img.size != p.content:
            img = img.resize(p.content, FILTERS[self.resize_filter])
        if p.content != self.size:
            canvas = Image.new("RGB", self.size, tuple(int(c) for c in self.pad_fill))
            canvas.paste(img, p.offset)
            img = canvas
        return np.asarray(img, dtype=np.uint8)


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a path, bytes or PIL image to an upright RGB PIL image, or raise :class:`ImageError`.

    ``draft_size`` (width, height) allows JPEG DCT-domain downscaling to no smaller than that size;
    it may be a function of the upright full-resolution (width, height), called for JPEGs only.
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
        if callable(draft_size):
            draft_size = draft_size((h, w) if orientation in (5, 6, 7, 8) else (w, h))
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
