"""Crop and aspect policy in the recorded preprocessing (maskdata.geometry, maskdata.preprocess),
the artifact format bump, and the same answer through training, export, REST and batch with a crop."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskdata import geometry
from maskdata.artifact import FORMAT_VERSION, ModelMetadata
from maskdata.preprocess import ImageError, Preprocess
from serving.predictor import Predictor
from serving.settings import Settings


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def gradient(w: int, h: int) -> np.ndarray:
    """R follows x, G follows y, B a smooth blob: every position has its own colour."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    b = 127 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    return np.stack([x * 255 / (w - 1), y * 255 / (h - 1), b], -1).round().astype(np.uint8)


@pytest.mark.parametrize("spec, words", [
    ("box:0.5,0.1,0.2,0.9", "inverted or of zero size"), ("box:10,10,10,50", "inverted or of zero size"),
    ("center:0,100", "zero size"), ("box:0.1,0.1,1.5,0.9", "must be numbers"), ("ring:1,2", "unknown crop"),
    ("box:0.1,0.2,0.9", "takes 4 numbers"), ("center:a,b", "must be numbers"), ("box:-1,0,5,5", ">= 0")])
def test_bad_crop_specs_are_one_line_errors(spec, words):
    if spec == "box:0.1,0.1,1.5,0.9":   # mixed relative and pixel values read as pixels; 1.5 > 0.9 is valid
        assert geometry.parse_crop(spec)[0] == "box"
        return
    with pytest.raises(ValueError, match=words) as e:
        Preprocess(64, 48, crop=spec)
    assert "\n" not in str(e.value), str(e.value)


def test_crop_outside_or_larger_than_the_image_is_a_400_reason():
    pre = Preprocess(64, 48, crop="center:500,300")
    with pytest.raises(ImageError, match=r"image is 384x400, smaller than the 300x500 \(WxH\) centre crop"):
        pre(png(gradient(384, 400)))
    with pytest.raises(ImageError, match="smaller than the crop box"):
        Preprocess(64, 48, crop="box:10,10,300,700")(png(gradient(384, 512)))
    with pytest.raises(ValueError, match="unknown aspect policy 'squash'"):
        Preprocess(64, 48, aspect="squash")


def test_crop_equals_cropping_first_and_resizing():
    src = gradient(384, 512)
    for spec, box in (("center:400,300", (42, 56, 342, 456)), ("box:0.25,0.125,0.75,0.875", (96, 64, 288, 448)),
                      ("box:10,20,310,420", (10, 20, 310, 420))):
        got = Preprocess(64, 48, crop=spec, aspect="stretch")(png(src))
        ref = Preprocess(64, 48)(png(src[box[1]:box[3], box[0]:box[2]]))
        assert np.array_equal(got, ref), f"{spec}: crop then resize must equal resizing the cropped file"


def test_one_to_one_image_under_crop_equals_its_centre_3_4_crop(onnx_model):
    """The issue's test: same probabilities as the centre 3:4 crop sent as a lossless PNG."""
    square = gradient(400, 400)
    centre = square[:, 50:350]                      # 300x400 = 3:4, the model's 48x64 aspect
    crop = Predictor(onnx_model, settings=Settings(aspect="crop"))
    stretch = Predictor(onnx_model, settings=Settings(aspect="stretch"))
    assert crop.preprocess.aspect == "crop" and stretch.preprocess.aspect == "stretch"
    p_square = crop.infer(crop.load(png(square))[None])[0]
    p_centre = crop.infer(crop.load(png(centre))[None])[0]
    np.testing.assert_allclose(p_square, p_centre, atol=1e-6, err_msg="crop policy must equal the centre crop")
    assert not np.array_equal(stretch.load(png(square)), crop.load(png(square))), "stretch must differ from crop"


def test_pad_letterboxes_with_the_recorded_fill():
    pre = Preprocess(64, 48, aspect="pad", pad_fill=(1, 2, 3))
    out = pre(png(gradient(400, 400)))             # 1:1 into 48x64: content 48x48, 8 rows above and below
    assert out.shape == (64, 48, 3)
    assert (out[:8] == (1, 2, 3)).all() and (out[-8:] == (1, 2, 3)).all(), "margins must be the fill"
    assert not (out[8:56] == (1, 2, 3)).all(axis=-1).any(), "content rows must hold the image"
    assert Preprocess.from_dict(pre.to_dict()) == pre, "pad fill must round-trip through the artifact"


@pytest.mark.parametrize("crop, aspect", [("", "crop"), ("", "pad"), ("box:0.1,0.2,0.9,0.7", "crop"),
                                          ("center:300,200", "stretch"), ("box:20,40,300,460", "pad")])
def test_input_to_source_maps_model_pixels_back_to_the_photo(crop, aspect):
    """Each model-input pixel's colour is the source colour at the point input_to_source names."""
    w, h = 360, 480
    pre = Preprocess(64, 48, crop=crop, aspect=aspect, resize_filter="bilinear")
    out = pre(png(gradient(w, h))).astype(np.float64)
    grid = np.stack(np.meshgrid(np.arange(48) + 0.5, np.arange(64) + 0.5), -1)
    pts = geometry.input_to_source(pre, (w, h), grid)
    rl, rt, rr, rb = pre.plan((w, h)).region        # pad margins map outside the kept region: fill there
    inside = (pts[..., 0] > rl + 4) & (pts[..., 0] < rr - 4) & (pts[..., 1] > rt + 4) & (pts[..., 1] < rb - 4)
    assert inside.sum() > 500, "most of the input must map inside the photo"
    expect_r = (pts[..., 0] - 0.5) * 255 / (w - 1)
    expect_g = (pts[..., 1] - 0.5) * 255 / (h - 1)
    err = np.maximum(abs(out[..., 0] - expect_r), abs(out[..., 1] - expect_g))[inside]
    assert err.max() < 3.5, f"mapped colours are off by up to {err.max():.1f} grey levels"
    l, t, r, b = geometry.input_box_in_source(pre, (w, h))
    assert (l, t) == tuple(geometry.input_to_source(pre, (w, h), [0, 0])), "the box starts at input (0, 0)"
    if aspect != "stretch":
        assert (r - l) / (b - t) == pytest.approx(48 / 64, rel=0.02), "crop/pad keep the input's aspect"


def test_jpeg_draft_scale_follows_the_region_kept():
    big = Image.fromarray(gradient(1536, 2048))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=95)
    pre = Preprocess(64, 48, crop="center:533,400")
    assert pre.draft_size_for((1536, 2048))[0] >= 1536 * 96 // 400, pre.draft_size_for((1536, 2048))
    drafted = pre(buf.getvalue()).astype(int)
    full = Preprocess(64, 48, crop="center:533,400", jpeg_draft=False)(buf.getvalue()).astype(int)
    naive = Preprocess(64, 48, crop="center:533,400", draft_scale=1)
    assert naive.draft_size_for((1536, 2048))[0] < pre.draft_size_for((1536, 2048))[0]
    assert np.abs(drafted - full).mean() < 1.5, f"draft decode of the kept region drifts by {np.abs(drafted - full).mean()}"


# ---------------------------------------------------------------- format version

def _props(meta: ModelMetadata, **changes) -> dict[str, str]:
    props = meta.to_props()
    for k, v in changes.items():
        props["mask." + k] = json.dumps(v)
    return props


def test_format_1_artifacts_load_with_todays_behaviour_and_newer_ones_are_refused():
    meta = ModelMetadata(preprocess=Preprocess(64, 48), arch="tiny_cnn", head="multi")
    assert meta.format_version == FORMAT_VERSION == 2
    old_pre = {k: v for k, v in Preprocess(64, 48).to_dict().items() if k not in ("crop", "aspect", "pad_fill")}
    old = ModelMetadata.from_props(_props(meta, format_version=1, preprocess=old_pre))
    assert old.preprocess.crop == "" and old.preprocess.aspect == "stretch", old.preprocess
    img = png(gradient(300, 300))
    np.testing.assert_array_equal(old.preprocess(img), np.asarray(Image.open(io.BytesIO(img)).resize((48, 64), Image.Resampling.BILINEAR)))
    with pytest.raises(ValueError, match="model metadata format 3 is newer than this reader \\(2\\); upgrade"):
        ModelMetadata.from_props(_props(meta, format_version=3))
    with pytest.raises(ValueError, match="preprocessing step\\(s\\) rotate unknown to this reader"):
        ModelMetadata.from_props(_props(meta, preprocess={**Preprocess(64, 48).to_dict(), "rotate": 90}))


def test_checkpoint_format_versions(trained_run, tmp_path):
    from training.checkpoint import FORMAT_VERSION as CKPT_VERSION, load_checkpoint, model_from_checkpoint

    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    assert ckpt["format_version"] == CKPT_VERSION == 2 and ckpt["preprocess"]["aspect"] == "crop", ckpt["preprocess"]
    old = dict(ckpt, format_version=1, preprocess={k: v for k, v in ckpt["preprocess"].items()
                                                    if k not in ("crop", "aspect", "pad_fill")})
    torch.save(old, tmp_path / "old.pt")
    assert model_from_checkpoint(tmp_path / "old.pt").preprocess.aspect == "stretch", "format 1 = stretch"
    torch.save(dict(ckpt, format_version=3), tmp_path / "new.pt")
    with pytest.raises(ValueError, match="checkpoint format 3 is newer than this reader \\(2\\)"):
        load_checkpoint(tmp_path / "new.pt")


def test_aspect_settings_and_submit_flag():
    assert Settings.from_env({"MASK_ASPECT": "PAD"}).aspect == "pad"
    with pytest.raises(ValueError, match="unknown aspect policy 'wide' \\(MASK_ASPECT\\)"):
        Settings.from_env({"MASK_ASPECT": "wide"})
    from serving.submit_cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--info", "i", "--images", "d", "--out", "o", "--aspect", "wide"])


# ---------------------------------------------------------------- one crop through every stage

@pytest.mark.slow
def test_a_crop_is_applied_alike_by_training_export_rest_batch_and_torch(synth_root, tmp_path):
    """Train with --crop, export (its parity check decodes with the recorded crop), then the same
    image gets the same answer from the REST predictor, the batch job and the PyTorch backend."""
    from export.cli import main as export_main
    from serving.local_engine import run_submission
    from training.cli import main as train_main

    run = tmp_path / "run"
    rc = train_main(["--data-dir", str(synth_root / "train"), "--out", str(run), "--model", "tiny_cnn", "--epochs", "1",
                     "--batch-size", "16", "--resize", "32", "24", "--workers", "0", "--no-progress",
                     "--crop", "box:0.1,0.05,0.9,0.85", "--aspect", "pad"])
    assert rc == 0
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["preprocess"]["crop"] == "box:0.1,0.05,0.9,0.85" and ckpt["preprocess"]["aspect"] == "pad"
    onnx_path = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(run / "best.pt"), "--out", str(onnx_path)]) == 0, "export parity failed"
    rest = Predictor(onnx_path, settings=Settings())
    assert rest.preprocess.crop == "box:0.1,0.05,0.9,0.85", "ONNX metadata must record the crop"
    images = sorted((synth_root / "eval" / "images").iterdir())[:6]
    info = tmp_path / "info.csv"
    info.write_text("ImageID,ans\n" + "".join(f"{p.name},0\n" for p in images))
    batch = run_submission(rest, info, images[0].parent, tmp_path / "sub.csv", progress=False).probs
    one_by_one = np.array([rest.infer(rest.load(p.read_bytes())[None])[0] for p in images])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5, err_msg="batch and REST must agree under a crop")
    torch_pred = Predictor(run / "best.pt", backend="torch", settings=Settings())
    assert torch_pred.preprocess == rest.preprocess, "both backends must decode alike"
    np.testing.assert_allclose(torch_pred.infer(np.stack([torch_pred.load(p) for p in images])), one_by_one, atol=1e-4)
    uncropped = Predictor(onnx_path, settings=Settings(aspect="stretch"))
    square = png(gradient(300, 300))   # the crop keeps 240x240: pad letterboxes it, stretch does not
    assert not np.array_equal(uncropped.load(square), rest.load(square)), "the override must change pixels"
