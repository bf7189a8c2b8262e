"""timm backbones through export: parity <= 1e-4 with 100 % argmax (single, multi head, ensemble + TTA),
INT8, the fitted temperature applied inside the graph, and serving's ``uncertain`` flag."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from export.cli import main as export_main
from export.parity import list_images, load_batch
from maskdata.artifact import read_metadata
from maskdata.preprocess import Preprocess
from training.checkpoint import save_checkpoint
from training.models import create_model

pytestmark = pytest.mark.slow   # see pyproject's `slow` marker: make test-fast leaves it out

PRE = Preprocess(64, 48)
PEOPLE = ["000001_female_Asian_45", "000002_male_Asian_22", "000003_male_Asian_61", "000004_female_Asian_19"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_images") / "images"
    rng = np.random.default_rng(0)
    for i, person in enumerate(PEOPLE):
        (root / person).mkdir(parents=True)
        for j, stem in enumerate(["mask1", "mask2", "incorrect_mask", "normal"]):
            img = rng.integers(0, 255, (96, 72, 3), dtype=np.uint8)
            img[:, : 16 * (j + 1)] //= 2 + i
            Image.fromarray(img).save(root / person / f"{stem}.jpg", quality=90)
    return root


def _ckpt(path, arch, head, seed, temperature, images):
    torch.manual_seed(seed)
    model = create_model(arch, head=head, preprocess=PRE)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(2):
            model(torch.randint(0, 256, (8, 64, 48, 3), dtype=torch.uint8))
        for m in model.head.modules():  # random init gives near-uniform probabilities; spread the logits so
            if isinstance(m, torch.nn.Linear):  # parity and argmax agreement are tested on confident answers
                m.weight.mul_(40.0)
    save_checkpoint(path, model.eval(), metrics={"f1": 0.5, "ece_before": 0.2, "ece_after": 0.05}, epoch=1,
                    data_fingerprint=f"fp{seed}", val_images=[str(p) for p in list_images(images)],
                    temperature=temperature, uncertain_below=0.3)
    return path


def _export(tmp_path, ckpts, images, *extra):
    out, report = tmp_path / "model.onnx", tmp_path / "report.json"
    rc = export_main(["--checkpoint", *map(str, ckpts), "--out", str(out), "--parity-images", str(images),
                      "--report", str(report), "-q", *extra])
    assert rc == 0, f"export of {ckpts} failed"
    return out, json.loads(report.read_text())


@pytest.mark.parametrize("arch,head", [("timm/resnet10t", "multi"), ("timm/mobilenetv3_small_050", "single")])
def test_timm_export_parity_and_temperature_in_graph(arch, head, images, tmp_path, capsys):
    ck = _ckpt(tmp_path / "a.pt", arch, head, 0, 1.7, images)
    out, report = _export(tmp_path, [ck], images, *(["--int8"] if "mobilenet" in arch else []))
    par = report["parity"]
    print(f"PARITY {arch}/{head}: max|dprob| {par['max_abs_diff']:.3g}, argmax {par['argmax_agreement']:.0%}")
    assert par["max_abs_diff"] <= 1e-4 and par["argmax_agreement"] == 1.0, par
    # the graph applies the temperature: its probs are softmax(raw logits / T), not softmax(raw logits)
    from training.checkpoint import model_from_checkpoint

    net = model_from_checkpoint(ck)
    batch = load_batch(list_images(images), PRE)
    with torch.inference_mode():
        raw = net.forward_heads(torch.from_numpy(batch))["logits"]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["probs"], {"image": batch})[0]
    assert np.abs(got - torch.softmax(raw / 1.7, 1).numpy()).max() < 1e-4, "temperature not applied in the graph"
    assert np.abs(got - torch.softmax(raw, 1).numpy()).max() > 1e-3, "T = 1.7 must change the probabilities"
    meta = read_metadata(out)
    assert meta.calibration["temperatures"] == [1.7] and meta.calibration["uncertain_below"] == 0.3, meta.calibration
    assert "ece" in report["calibration"] and report["calibration"]["ece_images"] == 16, report["calibration"]
    if "mobilenet" in arch:
        int8 = report["variants"]["int8"]
        print(f"INT8 {arch}: argmax agreement {int8['argmax_agreement']:.0%}, max|dprob| {int8['max_abs_diff']:.3g}")
        assert read_metadata(tmp_path / "model.int8.onnx").precision == "int8"
        assert int8["images"] == 16 and int8["max_abs_diff"] < 0.2, int8


def test_timm_ensemble_with_tta_and_uncertain_flag(images, tmp_path, monkeypatch):
    cks = [_ckpt(tmp_path / f"m{i}.pt", "timm/resnet10t", "multi", i, t, images) for i, t in ((0, 1.3), (1, 0.8))]
    out, report = _export(tmp_path, cks, images, "--tta", "hflip", "--fp16")
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["argmax_agreement"] == 1.0, report
    fp16 = report["variants"]["fp16"]
    print(f"FP16 ensemble: argmax agreement {fp16['argmax_agreement']:.0%}, max|dprob| {fp16['max_abs_diff']:.3g}")
    assert read_metadata(tmp_path / "model.fp16.onnx").precision == "fp16" and fp16["max_abs_diff"] < 0.05, fp16
    from serving.predictor import Predictor
    from serving.settings import Settings

    paths = list_images(images)
    pred = Predictor(out, settings=Settings(), warmup=False)
    assert pred.uncertain_below == 0.3, "the artifact's threshold"
    answers = pred.predict(paths)
    assert all(a["uncertain"] == (a["confidence"] < 0.3) for a in answers), answers[:2]
    monkeypatch.setenv("MASK_UNCERTAIN_BELOW", "1.0")
    forced = Predictor(out, settings=Settings.from_env(), warmup=False)
    assert all(a["uncertain"] for a in forced.predict(paths)), "MASK_UNCERTAIN_BELOW=1 flags every answer"
    monkeypatch.setenv("MASK_UNCERTAIN_BELOW", "2")
    with pytest.raises(ValueError, match="MASK_UNCERTAIN_BELOW=2.0 must be between 0 and 1"):
        Settings.from_env()
