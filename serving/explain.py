"""``POST /explain``: the class-activation map of the predicted class laid over the photo (numpy + PIL).

The exported graph's ``cam`` output (export/cam.py) holds one map per class (single head) or per
head value (multi head); ``metadata.explain`` says which. This module picks the predicted class's
map (multi head: the predicted mask, gender and age values' maps), maps it back onto the photo
through the model's own preprocessing (:func:`map_to_photo`) and renders a PNG::

    explainer = Explainer(predictor)          # ExplainUnavailable (-> 501) when the model has no maps
    result = explainer.explain(image_bytes)   # .prediction, .maps, .png()
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from maskdata.geometry import input_box_in_source
from maskdata.preprocess import Preprocess, open_image

DISPLAY_HEIGHT = 256      # rendered photo height in the PNG, pixels
ALPHA = 0.45              # heatmap opacity over the photo


class ExplainUnavailable(Exception):
    """The served model cannot explain (HTTP 501); the message says why."""


def availability(metadata) -> dict:
    """``{"available": bool, "reason"?: str, ...}`` for /model, from the artifact's metadata."""
    explain = dict(getattr(metadata, "explain", None) or {})
    if not explain:
        return {"available": False, "reason": "the model was exported without class-activation maps "
                                              "(re-export it with this version of mask-export)"}
    return explain


def map_to_photo(cam: np.ndarray, preprocess: Preprocess, photo_size: tuple[int, int]) -> np.ndarray:
    """A model-input-space map (h, w) → the photo's pixel grid ((height, width) of ``photo_size`` (W, H)).

    Laid back through the same geometry the model saw (:func:`maskdata.geometry.input_box_in_source`:
    crop → aspect policy → resize): the map covers the part of the photo that reached the model and
    is NaN elsewhere (outside a crop, or in a ``pad`` margin). ``photo_size`` is the upright photo at
    full resolution, the frame crop boxes are given in.
    """
    cam = np.asarray(cam, dtype=np.float32)
    width, height = photo_size
    left, top, right, bottom = input_box_in_source(preprocess, photo_size)
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    resized = np.asarray(Image.fromarray(cam, mode="F").resize((box_w, box_h), Image.Resampling.BILINEAR),
                         dtype=np.float32)
    out = np.full((height, width), np.nan, dtype=np.float32)
    x0, y0 = round(left), round(top)
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(width, x0 + box_w), min(height, y0 + box_h)
    if xe > xs and ye > ys:
        out[ys:ye, xs:xe] = resized[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def colorize(values: np.ndarray) -> np.ndarray:
    """Map (H, W) → RGB uint8 heat colours (blue → cyan → yellow → red), normalised to its own finite
    range; NaN (where the model saw nothing) becomes 0 and is left out of the overlay by the caller."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros((*values.shape, 3), dtype=np.uint8)
    v = np.where(finite, values, np.nan) - np.nanmin(values)
    top = np.nanmax(v)
    v = np.nan_to_num(v / top if top > 0 else v, nan=0.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


@dataclass
class Explanation:
    prediction: dict
    maps: list[dict]        # [{"head", "index", "value", "score", "map": (h, w) float32}]
    photo: Image.Image      # the upright RGB photo the maps are laid over
    preprocess: Preprocess

    def overlay(self, cam: np.ndarray) -> Image.Image:
        photo = self.photo
        placed = map_to_photo(cam, self.preprocess, photo.size)
        heat = colorize(placed).astype(np.float32)
        alpha = np.where(np.isfinite(placed), ALPHA, 0.0)[..., None]   # no heat where the model saw nothing
        blend = (1 - alpha) * np.asarray(photo, dtype=np.float32) + alpha * heat
        return Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8))

    def png(self) -> bytes:
        """The photo, then one overlay per explained map, side by side with a caption each."""
        scale = DISPLAY_HEIGHT / self.photo.height
        size = (max(1, round(self.photo.width * scale)), DISPLAY_HEIGHT)
        panels = [("photo", self.photo)] + [(f"{m['head']}: {m['value']}", self.overlay(m["map"])) for m in self.maps]
        caption = 16
        canvas = Image.new("RGB", (size[0] * len(panels), DISPLAY_HEIGHT + caption), "white")
        draw = ImageDraw.Draw(canvas)
        for i, (title, img) in enumerate(panels):
            canvas.paste(img.resize(size, Image.Resampling.BILINEAR), (i * size[0], caption))
            draw.text((i * size[0] + 3, 2), title, fill="black")
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        return buf.getvalue()

    def to_json(self) -> dict:
        return {"prediction": self.prediction,
                "maps": [{k: (np.round(v, 5).tolist() if k == "map" else v) for k, v in m.items()}
                         for m in self.maps]}


class Explainer:
    """Runs the ONNX session for ``probs`` and ``cam`` and picks the maps of the predicted class."""

    def __init__(self, predictor):
        self.predictor = predictor
        info = availability(predictor.metadata)
        if not info.get("available"):
            raise ExplainUnavailable(info.get("reason", "explanations are not available for this model"))
        session = getattr(predictor.backend, "session", None)
        if session is None:
            raise ExplainUnavailable(f"the {predictor.backend_name} backend cannot explain; serve the ONNX model")
        self.session, self.info = session, info
        self.output = info["output"]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) → probs (N, 18), maps (N, K, h, w)."""
        name = self.predictor.metadata.input_name
        probs, cam = self.session.run(["probs", self.output], {name: np.ascontiguousarray(batch)})
        return np.asarray(probs, dtype=np.float32), np.asarray(cam, dtype=np.float32)

    def chosen(self, prediction: dict) -> list[int]:
        """Indices (into the maps) of the predicted class, or of each head's predicted value."""
        maps = self.info["maps"]
        if self.info["head"] == "single":
            return [next(i for i, m in enumerate(maps) if m["head"] == "class" and m["index"] == prediction["class"])]
        return [next(i for i, m in enumerate(maps) if m["head"] == h and m["value"] == prediction[h])
                for h in ("mask", "gender", "age")]

    def explain(self, source, max_pixels: int | None = None, array: np.ndarray | None = None) -> Explanation:
        """Image bytes/path → prediction + chosen maps; :class:`ImageError` for a non-image.
        ``array``: the model input already decoded from ``source`` (the service's checks made it)."""
        if array is None:
            array = self.predictor.load(source, max_pixels=max_pixels)
        pre = self.predictor.preprocess
        # full resolution, no JPEG draft: crop boxes are in the upright source's own pixels
        photo = open_image(source, max_pixels=max_pixels or self.predictor.settings.max_pixels)
        probs, cam = self.run(array[None])
        prediction = self.predictor.decode(probs[0])
        bias = self.info.get("bias") or [0.0] * cam.shape[1]
        maps = [{**self.info["maps"][i], "score": round(float(cam[0, i].mean() + bias[i]), 6), "map": cam[0, i]}
                for i in self.chosen(prediction)]
        return Explanation(prediction, maps, photo, pre)
