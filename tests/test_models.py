"""Model registry, MaskNet's uint8-NHWC contract, heads, checkpoints and local pretrained weights."""
from __future__ import annotations

import pytest
import torch

from maskdata.preprocess import Preprocess
from training.checkpoint import build_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from training.models import MODELS, create_model, hub_weights_path

PP = Preprocess(32, 32)


def _images(n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


REAL_FORWARD = ("tiny_cnn", "small_cnn", "plain_cnn", "resnet18")


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_model_maps_uint8_nhwc_to_18_logits(arch):
    # big backbones are built on the meta device: shapes and the classifier surgery are checked
    # without paying seconds of weight init and convolution on a shared 2-core machine
    device = "cpu" if arch in REAL_FORWARD else "meta"
    with torch.device(device):
        model = create_model(arch, head="single", preprocess=PP).eval()
        with torch.inference_mode():
            out = model(_images().to(device))
    assert out.shape == (2, 18) and out.dtype == torch.float32, f"{arch}: output {tuple(out.shape)} {out.dtype}"
    if device == "cpu":
        assert torch.isfinite(out).all(), f"{arch}: non-finite logits"


def test_multi_head_logits_are_log_of_joint_head_probabilities():
    model = create_model("tiny_cnn", head="multi", preprocess=PP).eval()
    with torch.inference_mode():
        out = model.forward_heads(_images(3))
    pm, pg, pa = (torch.softmax(out[k], 1) for k in ("mask", "gender", "age"))
    probs = torch.softmax(out["logits"], 1)
    for cls in range(18):
        m, g, a = cls // 6, (cls // 3) % 2, cls % 3
        want = pm[:, m] * pg[:, g] * pa[:, a]
        assert torch.allclose(probs[:, cls], want, atol=1e-6), f"class {cls}: {probs[:, cls]} != {want}"
    assert torch.allclose(out["logits"].exp().sum(1), torch.ones(3), atol=1e-5), "joint log-probs must sum to 1"


def test_normalization_is_inside_the_model():
    model = create_model("tiny_cnn", preprocess=Preprocess(16, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))
    x = torch.full((1, 16, 16, 3), 191, dtype=torch.uint8)
    y = model.normalize(x)
    want = torch.tensor([(191 / 255 - 0.5) / s for s in (0.25, 0.5, 1.0)])
    assert y.shape == (1, 3, 16, 16), f"normalize must return NCHW, got {tuple(y.shape)}"
    assert torch.allclose(y[0, :, 0, 0], want, atol=1e-5), f"normalized pixel {y[0, :, 0, 0]} != {want}"


def test_unknown_model_and_head_list_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'; expected one of \[.*'resnet18'.*'tiny_cnn'"):
        create_model("resnet9")
    with pytest.raises(ValueError, match=r"unknown head 'triple'; expected one of \['multi', 'single'\]"):
        create_model("tiny_cnn", head="triple")


@pytest.mark.parametrize("head", ["single", "multi"])
def test_checkpoint_roundtrip_with_weights_only(tmp_path, head):
    model = create_model("tiny_cnn", head=head, preprocess=Preprocess(24, 16, "bicubic"))
    path = save_checkpoint(tmp_path / "c.pt", model, metrics={"f1": 0.5, "acc": 0.6}, epoch=3,
                           config={"a": [1, 2]}, data_fingerprint="abc", data_dir="/d", val_images=["/d/x.jpg"])
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "mask-checkpoint" and raw["arch"] == "tiny_cnn" and raw["head"] == head, raw.keys()
    assert raw["preprocess"]["height"] == 24 and raw["preprocess"]["resize_filter"] == "bicubic", raw["preprocess"]
    assert len(raw["labels"]) == 18 and raw["age_bins"] == [30, 60], (len(raw["labels"]), raw["age_bins"])
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert not rebuilt.training, "model_from_checkpoint must return an eval-mode model"
    x = _images(2, 24, 16)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), rebuilt(x)), "rebuilt model differs from the saved one"
    assert not list(tmp_path.glob(".*tmp")), f"temporary files left: {list(tmp_path.iterdir())}"


def test_load_checkpoint_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable checkpoint") as e:
        load_checkpoint(tmp_path / "junk.pt")
    assert "\n" not in str(e.value), f"multi-line error: {e.value!s}"
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mask-train checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ck = build_checkpoint(create_model("tiny_cnn", preprocess=PP))
    del ck["preprocess"]
    torch.save(ck, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing field\\(s\\) preprocess"):
        load_checkpoint(tmp_path / "partial.pt")


def test_pretrained_loads_from_local_hub_cache_and_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a miss must fail without trying the network
    path = hub_weights_path("mobilenet_v3_small")
    assert path == tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth", path
    with pytest.raises(FileNotFoundError) as e:
        create_model("mobilenet_v3_small", pretrained=True, preprocess=PP)
    assert path.name in str(e.value) and str(path.parent) in str(e.value), f"error must name file and folder: {e.value}"

    from torchvision.models import mobilenet_v3_small
    torch.manual_seed(123)
    reference = mobilenet_v3_small()  # random init stands in for ImageNet weights: never downloaded
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    for model in (create_model("mobilenet_v3_small", pretrained=True, preprocess=PP),
                  create_model("mobilenet_v3_small", weights=path, preprocess=PP)):
        got = model.backbone.state_dict()
        for k, v in reference.state_dict().items():
            if not k.startswith("classifier.3."):
                assert torch.equal(got[k], v), f"backbone weight {k} not loaded from {path}"


def test_bad_weights_file_and_no_hub_weights_for_custom_models(tmp_path):
    torch.save({"not.a.layer": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="weights do not fit this backbone"):
        create_model("tiny_cnn", weights=tmp_path / "w.pt", preprocess=PP)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_model("tiny_cnn", weights=tmp_path / "nope.pt", preprocess=PP)
    with pytest.raises(ValueError, match="no pretrained weights for 'tiny_cnn'"):
        create_model("tiny_cnn", pretrained=True, preprocess=PP)


def test_multi_head_exports_to_onnx(tmp_path):
    import numpy as np
    import onnxruntime as ort

    model = create_model("tiny_cnn", head="multi", preprocess=PP).eval()
    x = _images(3)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}}, dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4, f"ONNX differs from torch by {np.abs(got - want).max()}"
