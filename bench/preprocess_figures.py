"""Figures for docs/data.md, docs/serving.md and docs/training.md: one synthetic photo through each
aspect policy and crop, and under each augmentation preset (``python -m bench.preprocess_figures``)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskdata.preprocess import Preprocess
from maskdata.synth import generate
from training.augment import AUGMENTS


def _tile(arr: np.ndarray, caption: str, scale: int = 2) -> Image.Image:
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    out = Image.new("RGB", (img.width, img.height + 16), "white")
    out.paste(img, (0, 16))
    ImageDraw.Draw(out).text((2, 2), caption, fill="black")
    return out


def _sheet(tiles: list[Image.Image], path: Path) -> None:
    w, h = sum(t.width + 6 for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (w, h), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 6
    sheet.save(path)


def main(out: Path = Path("docs")) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), people=1, eval_people=0, seed=3)
        photo = Image.open(sorted(Path(tmp).glob("train/images/*/*.jpg"))[0]).convert("RGB")
        square = photo.crop((0, 64, 384, 448))               # a 1:1 "phone photo" of the same scene
        tiles = [_tile(np.asarray(square.resize((128, 128))), "1:1 source (scaled)", 1)]
        for aspect in ("stretch", "crop", "pad"):
            tiles.append(_tile(Preprocess(128, 96, aspect=aspect)(square), f"aspect={aspect}"))
        tiles.append(_tile(Preprocess(128, 96, crop="center:400,300", aspect="crop")(photo), "3:4, center:400,300"))
        _sheet(tiles, out / "aspect_policies.png")
        pixels = torch.from_numpy(Preprocess(128, 96)(photo).copy()).permute(2, 0, 1)
        tiles = [_tile(aug(pixels, torch.Generator().manual_seed(7)).permute(1, 2, 0).numpy(), name)
                 for name, aug in AUGMENTS.items()]
        _sheet(tiles, out / "augment_presets.png")


if __name__ == "__main__":
    main()
