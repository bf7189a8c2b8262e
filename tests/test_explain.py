"""Class-activation maps: exact for a GAP + linear head (map mean + bias == logit), averaged over an
ensemble and un-flipped for TTA in the graph; ``POST /explain``, ``/model``'s flag, in-process
(the prediction counters are read back from a real server's ``/metrics`` in test_ui_browser.py)."""
from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from export.cam import explained_net
from export.graph import EnsembleNet, export_onnx
from maskdata.artifact import ModelMetadata
from maskdata.preprocess import Preprocess
from training.models import create_model
from test_service import image_bytes

PRE = Preprocess(32, 24)


def _export(models, path, tta=(), explain=True):
    net, info = explained_net(models, tta) if explain else (EnsembleNet(models, tta), {})
    meta = ModelMetadata(preprocess=PRE, arch=models[0].arch, head=models[0].head_type, tta=tuple(tta), explain=info)
    export_onnx(net, path, metadata=meta)
    return info


def _run(path, x):
    s = ort.InferenceSession(str(path))
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x})))


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, PRE.height, PRE.width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    return [create_model("tiny_cnn", head="multi", preprocess=PRE).eval() for _ in range(2)]


def test_single_head_map_mean_plus_bias_is_the_logit(tmp_path, batch):
    torch.manual_seed(1)
    model = create_model("tiny_cnn", head="single", preprocess=PRE).eval()
    info = _export([model], tmp_path / "m.onnx")
    out = _run(tmp_path / "m.onnx", batch)
    assert out["cam"].shape[:2] == (3, 18), out["cam"].shape
    explained = out["cam"].mean(axis=(2, 3)) + np.asarray(info["bias"], dtype=np.float32)
    np.testing.assert_allclose(explained, out["logits"], atol=1e-4,
                               err_msg="spatial mean of each class map + bias must be that class's logit")
    assert not np.allclose(out["cam"][:, 0], out["cam"][:, 1]), "maps of different classes must differ"


def test_multi_head_maps_explain_each_heads_logits(tmp_path, batch, members):
    info = _export(members[:1], tmp_path / "m.onnx")
    out = _run(tmp_path / "m.onnx", batch)
    with torch.no_grad():
        heads = members[0].forward_heads(torch.from_numpy(batch))
    want = torch.cat([heads[h] for h in ("mask", "gender", "age")], dim=1).numpy()
    got = out["cam"].mean(axis=(2, 3)) + np.asarray(info["bias"], dtype=np.float32)
    assert [m["head"] for m in info["maps"]] == ["mask"] * 3 + ["gender"] * 2 + ["age"] * 3, info["maps"]
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg="map mean + bias must be the head logit")


@pytest.mark.slow
def test_ensemble_map_is_the_mean_of_members_and_tta_unflips(tmp_path, batch, members):
    for i, m in enumerate(members):
        _export([m], tmp_path / f"m{i}.onnx")
    _export(members, tmp_path / "ens.onnx")
    _export(members[:1], tmp_path / "tta.onnx", tta=("hflip",))
    singles = [_run(tmp_path / f"m{i}.onnx", batch)["cam"] for i in range(2)]
    np.testing.assert_allclose(_run(tmp_path / "ens.onnx", batch)["cam"], np.mean(singles, axis=0), atol=1e-5,
                               err_msg="an ensemble's map must be the mean of its members' maps")
    flipped = _run(tmp_path / "m0.onnx", np.ascontiguousarray(batch[:, :, ::-1]))["cam"][..., ::-1]
    np.testing.assert_allclose(_run(tmp_path / "tta.onnx", batch)["cam"], (singles[0] + flipped) / 2, atol=1e-5,
                               err_msg="the hflip view's map must be un-flipped before averaging")


def test_non_gap_head_is_refused_with_a_reason():
    model = create_model("mobilenet_v3_small", preprocess=Preprocess(64, 48))
    net, info = explained_net([model])
    assert info["available"] is False and "not exact" in info["reason"], info
    assert type(net) is EnsembleNet


@pytest.fixture(scope="module")
def service(service_module, client):
    """(serving.service as the shared session fixture imported it, its TestClient)."""
    return service_module, client


def test_explain_route_and_model_flag(service, synth_root):
    paths = sorted((synth_root / "eval" / "images").iterdir())[:3]
    _, c = service
    if True:
        info = c.get("/model").json()
        assert info["explain"]["available"] is True, info["explain"]
        answers = [c.post("/predict", files={"image": (p.name, p.read_bytes(), "image/jpeg")}).json() for p in paths]
        r = c.post("/explain", files={"image": (paths[0].name, paths[0].read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        png = Image.open(io.BytesIO(r.content))
        assert png.width > png.height, f"photo and heatmap side by side, got {png.size}"
        j = c.post("/explain", files={"image": (paths[0].name, paths[0].read_bytes(), "image/jpeg")},
                   headers={"Accept": "application/json"}).json()
        assert j["prediction"] == answers[0], "the explanation must carry /predict's answer"
        assert j["maps"][0]["value"] == answers[0]["label"] or info["head"] == "multi", j["maps"][0]["value"]
        bad = c.post("/explain", files={"image": ("a.txt", b"just some text", "text/plain")})
        assert bad.status_code == 400 and "not a recognised image" in bad.json()["error"], bad.text


def test_model_without_maps_answers_501(service, tmp_path, members):
    import asyncio

    from serving.predictor import Predictor
    from serving.settings import Settings

    _export(members[:1], tmp_path / "plain.onnx", explain=False)
    svc = service[0].MaskClassifier()              # the plain class, then the map-less model swapped in
    svc.predictor = Predictor(tmp_path / "plain.onnx", settings=Settings())
    assert svc.model_info().explain["available"] is False, svc.model_info().explain
    (tmp_path / "a.jpg").write_bytes(image_bytes())
    r = asyncio.run(svc.explain(tmp_path / "a.jpg"))   # the route, called outside HTTP (no ctx)
    assert r.status_code == 501 and b"exported without class-activation maps" in r.body, r.body


def test_maps_are_laid_back_through_the_crop_and_aspect_policy():
    """The heat map covers exactly the part of the photo that reached the model: inside a crop box,
    inside the letterbox of a pad policy, the whole photo for stretch; NaN (no heat) elsewhere."""
    from serving.explain import map_to_photo

    cam = np.arange(12, dtype=np.float32).reshape(4, 3)       # model input 4x3 cells (H, W)
    photo = (100, 200)                                         # (W, H)
    whole = map_to_photo(cam, Preprocess(32, 24), photo)
    assert whole.shape == (200, 100) and np.isfinite(whole).all(), "stretch: the map covers the whole photo"
    cropped = map_to_photo(cam, Preprocess(32, 24, crop="box:0.25,0.25,0.75,0.75", aspect="stretch"), photo)
    inside = np.isfinite(cropped)
    assert inside[50:150, 25:75].all() and inside.sum() == 100 * 50, \
        f"crop: heat only inside the 50x100 box at (25, 50), got {inside.sum()} covered pixels"
    padded = map_to_photo(cam, Preprocess(24, 24, aspect="pad"), photo)   # 1:2 photo into a square input
    rows = np.isfinite(padded).any(axis=1)
    assert rows.all() and np.isfinite(padded).all(axis=0).sum() == 100, \
        "pad: a 1:2 photo fills the square input's height; every photo pixel is inside the content"
    assert cropped[50, 25] < cropped[149, 74], "the map keeps its orientation (top-left low, bottom-right high)"
