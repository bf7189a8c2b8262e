"""Eval preprocessing: EXIF orientation, every PIL mode to RGB, and clean ImageErrors for bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskdata.preprocess import ImageError, Preprocess, open_image, to_rgb


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _left_red_right_blue(w=64, h=32) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("orientation,size,top_colour", [
    (1, (64, 32), None),   # upright: left red, right blue
    (3, (64, 32), None),   # 180°: left blue, right red
    (6, (32, 64), "red"),  # stored sideways, shown rotated 90° clockwise: red ends on top
    (8, (32, 64), "blue"),  # rotated 90° counter-clockwise: blue ends on top
])
def test_exif_orientation_is_applied(orientation, size, top_colour):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(_left_red_right_blue(), "JPEG", quality=95, exif=exif.tobytes())
    img = open_image(data)
    assert img.mode == "RGB" and img.size == size, f"orientation {orientation}: {img.mode} {img.size}"
    arr = np.asarray(img, dtype=np.int16)
    if orientation == 1:
        assert arr[16, 5, 0] > 200 and arr[16, 60, 2] > 200
    elif orientation == 3:
        assert arr[16, 5, 2] > 200 and arr[16, 60, 0] > 200
    else:
        top, bottom = arr[5, 16], arr[58, 16]
        red_top = top[0] > 200 and bottom[2] > 200
        blue_top = top[2] > 200 and bottom[0] > 200
        assert red_top if top_colour == "red" else blue_top, f"orientation {orientation}: top {top}, bottom {bottom}"


def _modes() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    la = Image.new("LA", (8, 8), (0, 0))
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pt = p.copy()
    pt.info["transparency"] = 1
    i16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # mode I;16
    return {"L": Image.new("L", (8, 8), 77), "LA": la, "P": p, "P+transparency": pt, "RGBA": rgba,
            "CMYK": Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "I;16": i16}


@pytest.mark.parametrize("name", list(_modes()))
def test_every_mode_becomes_rgb(name):
    img = _modes()[name]
    fmt = "JPEG" if name == "CMYK" else "PNG"
    out = open_image(_bytes(img, fmt))
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.shape == (8, 8, 3), f"{name}: {out.mode} {arr.shape}"
    expected = {"L": (77, 77, 77), "LA": (255, 255, 255), "P": (10, 20, 30), "P+transparency": (255, 255, 255),
                "RGBA": (255, 255, 255), "CMYK": (255, 255, 255), "I;16": (255, 255, 255)}[name]
    assert np.abs(arr[4, 4].astype(int) - expected).max() <= 3, f"{name}: pixel {arr[4, 4]}, expected {expected}"
    if name == "RGBA":
        assert tuple(arr[0, 0]) == (0, 255, 0), "opaque pixels must keep their colour"


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 16).astype(np.uint16).reshape(4, 4)
    out = np.asarray(open_image(_bytes(Image.fromarray(ramp), "PNG")))
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255 and 100 < out[2, 0, 0] < 160, out[..., 0]


def test_to_rgb_passes_rgb_through():
    img = Image.new("RGB", (3, 3), (1, 2, 3))
    assert to_rgb(img) is img


def test_truncated_empty_and_non_image_input_raise_image_error(tmp_path):
    jpeg = _bytes(_left_red_right_blue(256, 256), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="empty upload"):
        open_image(b"")
    with pytest.raises(ImageError, match="not a recognised image"):
        open_image(b"id,gender\n1,male\n")
    fake = tmp_path / "mask1.jpg"
    fake.write_text("not really a jpeg")
    with pytest.raises(ImageError, match=r"mask1\.jpg: not a recognised image"):
        open_image(fake)
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.jpg")
    assert issubclass(ImageError, ValueError), "CLIs turn ValueError into exit code 2"


def test_pixel_limit_rejects_before_decoding():
    data = _bytes(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="over the limit of 50000"):
        open_image(data, max_pixels=50_000)
    assert open_image(data, max_pixels=60_000).size == (300, 200)


def test_preprocess_output_and_round_trip():
    pp = Preprocess(128, 96)
    src = _bytes(_left_red_right_blue(384, 512), "JPEG", quality=95)
    arr = pp(src)
    assert arr.shape == (128, 96, 3) and arr.dtype == np.uint8
    assert arr[64, 10, 0] > 200 and arr[64, 85, 2] > 200, "colours must survive the resize"
    no_draft = Preprocess(128, 96, jpeg_draft=False)(src)
    assert np.abs(arr.astype(int) - no_draft).mean() < 4, "draft decoding should barely change the pixels"
    assert Preprocess.from_dict(pp.to_dict()) == pp
    d = pp.to_dict()
    assert d["mean"] == [0.485, 0.456, 0.406] and d["layout"] == "NHWC" and d["dtype"] == "uint8"
    assert pp.size == (96, 128)


@pytest.mark.parametrize("kw,match", [({"height": 4, "width": 96}, "at least 8x8"),
                                      ({"height": 64, "width": 64, "resize_filter": "cubic"}, "unknown resize filter")])
def test_preprocess_rejects_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(**kw)


def test_decompression_bomb_header_is_an_image_error():
    """A PNG whose header claims 30000x30000 trips PIL's own bomb check on open; it must still be an ImageError."""
    import struct
    import zlib

    data = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    struct.pack_into(">II", data, 16, 30000, 30000)  # IHDR width, height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    with pytest.raises(ImageError, match="too many pixels"):
        open_image(bytes(data))


@pytest.mark.parametrize("kw", [{}, {"crop": "center:300,200"}, {"height": 128, "width": 128, "aspect": "crop"},
                                {"aspect": "pad"}, {"jpeg_draft": False}, {"draft_scale": 2}])
def test_decode_then_resize_is_the_whole_call(kw):
    """decode and resize are the two halves the product runs (what a stage breakdown times): together
    they give the call's pixels exactly, and the decode drafts by the crop/aspect geometry (a 384x512
    JPEG with a 300x200 centre crop is not drafted below the crop, which a fixed draft size would do)."""
    data = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 384, 3), dtype=np.uint8)), "JPEG")
    pre = Preprocess(**{"height": 128, "width": 96, **kw})
    img, source_size = pre.decode(data)
    assert source_size == (384, 512), source_size
    assert np.array_equal(pre.resize(img, source_size), pre(data)), f"{kw}: decode + resize differs from the call"
    if kw.get("crop"):
        assert img.size[0] >= 300 and img.size[1] >= 200, f"drafted below the crop box: {img.size}"
