"""The framework-free Predictor: loading, providers, decoding, bad images, parity with the PyTorch
checkpoint, the optional torch backend, and that the default path never imports torch."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskdata import labels
from maskdata.preprocess import ImageError
from serving.predictor import CPU, CUDA, TENSORRT, Predictor, choose_providers, choose_variant, create_backend
from serving.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(onnx_model):
    return Predictor(onnx_model, settings=Settings())


@pytest.fixture(scope="module")
def eval_images(synth_root):
    images = sorted((synth_root / "eval" / "images").iterdir())
    assert len(images) >= 8, f"synthetic eval split has only {len(images)} images"
    return images[:8]


def _jpeg(color=(200, 30, 40), size=(384, 512)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_loads_metadata_and_reports_active_provider(predictor, onnx_model):
    assert predictor.metadata.arch == "tiny_cnn", f"arch from the artifact: {predictor.metadata.arch}"
    assert predictor.input_shape == (64, 48, 3), f"input size from metadata: {predictor.input_shape}"
    active = predictor.backend.session.get_providers()
    assert predictor.provider == active[0] == CPU, f"provider {predictor.provider} vs session {active}"
    assert predictor.ready, "warm-up must have run"
    info = predictor.info()
    assert info["provider"] == CPU and info["input"]["shape"] == ["N", 64, 48, 3], info["input"]


def test_model_folder_resolves_to_model_onnx(onnx_model):
    p = Predictor(onnx_model.parent, settings=Settings(), warmup=False)
    assert p.backend.path == onnx_model, f"folder resolved to {p.backend.path}"


@pytest.mark.parametrize("model, error", [("/no/such/model.onnx", FileNotFoundError),
                                           ("mask-classifier-does-not-exist:1", FileNotFoundError)])
def test_missing_model_says_what_to_do(model, error):
    with pytest.raises(error, match="not found|not in the BentoML model store"):
        Predictor(model, settings=Settings())


def test_unknown_backend_and_provider_are_rejected(onnx_model):
    with pytest.raises(ValueError, match=r"unknown backend 'tf'; expected one of \['onnx', 'torch'\]"):
        create_backend("tf", onnx_model, Settings())
    with pytest.raises(ValueError, match="unknown execution provider"):
        Predictor(onnx_model, settings=Settings(providers=("NoSuchExecutionProvider",)))


@pytest.mark.parametrize("gpu, tensorrt, expected", [
    (False, False, [CPU]),
    (False, True, [CPU]),  # TensorRT is never tried without a GPU
    (True, False, [CUDA, CPU]),
    (True, True, [TENSORRT, CUDA, CPU]),
])
def test_provider_order(gpu, tensorrt, expected, tmp_path):
    chosen = choose_providers([TENSORRT, CUDA, CPU], gpu=gpu, tensorrt=tensorrt, trt_cache=str(tmp_path / "trt"))
    names = [p if isinstance(p, str) else p[0] for p in chosen]
    assert names == expected, f"gpu={gpu} tensorrt={tensorrt}: {names}"
    assert choose_providers([CPU], gpu=True, tensorrt=True, trt_cache=str(tmp_path)) == [CPU], \
        "providers the wheel lacks must not be requested"


def test_precision_variant_choice(tmp_path):
    base = tmp_path / "model.onnx"
    base.touch()
    assert choose_variant(base, "auto", gpu=True) == base, "no FP16 sibling: FP32"
    (tmp_path / "model.fp16.onnx").touch()
    assert choose_variant(base, "auto", gpu=True).name == "model.fp16.onnx", "GPU takes the FP16 sibling"
    assert choose_variant(base, "auto", gpu=False) == base, "CPU keeps FP32"
    assert choose_variant(base, "fp32", gpu=True) == base
    with pytest.raises(FileNotFoundError, match="no int8 variant beside"):
        choose_variant(base, "int8", gpu=False)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Settings(precision="fp8")


def test_decode_marginalises_heads(predictor):
    probs = np.zeros(18)
    probs[labels.encode(1, 1, 2)] = 0.6   # incorrect / female / >=60
    probs[labels.encode(0, 1, 0)] = 0.3   # wear / female / <30
    probs[labels.encode(2, 0, 1)] = 0.1   # not_wear / male / 30-59
    out = predictor.decode(probs)
    assert (out["class"], out["mask"], out["gender"], out["age"]) == (11, "incorrect", "female", ">=60"), out
    assert out["label"] == "incorrect/female/>=60" and out["confidence"] == pytest.approx(0.6), out
    heads = out["probabilities"]
    assert heads["mask"] == pytest.approx({"wear": 0.3, "incorrect": 0.6, "not_wear": 0.1}), heads
    assert heads["gender"] == pytest.approx({"male": 0.1, "female": 0.9}), heads
    assert heads["age"] == pytest.approx({"<30": 0.3, "30-59": 0.1, ">=60": 0.6}), heads


def test_predict_answers_are_consistent(predictor, eval_images):
    results = predictor.predict(eval_images, batch_size=3)
    assert len(results) == len(eval_images)
    for r in results:
        m, g, a = labels.decode(r["class"])
        assert (r["mask"], r["gender"], r["age"]) == (labels.MASK_NAMES[m], labels.GENDER_NAMES[g],
                                                      labels.AGE_NAMES[a]), r
        for head, probs in r["probabilities"].items():
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4), f"{head} marginals: {probs}"
    # bytes, paths and PIL images of the same file give the same answer
    raw = eval_images[0].read_bytes()
    same = predictor.predict([raw, eval_images[0], Image.open(io.BytesIO(raw))])
    assert same[0] == same[1] == same[2] == results[0], "one image must get one answer"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty upload"),
    (b"definitely not an image", "not a recognised image"),
    (_jpeg()[:300], "truncated|cannot"),
])
def test_bad_images_raise_client_safe_errors(predictor, data, reason):
    with pytest.raises(ImageError, match=reason):
        predictor.load(data)


def test_pixel_limit_rejects_decompression_bombs(onnx_model):
    p = Predictor(onnx_model, settings=Settings(max_pixels=100 * 100), warmup=False)
    with pytest.raises(ImageError, match="over the limit of 10000"):
        p.load(_jpeg(size=(200, 100)))
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 Mpx in ~50 kB: over PIL's own bomb limit too
    with pytest.raises(ImageError):
        Predictor(onnx_model, settings=Settings(), warmup=False).load(buf.getvalue())


def test_infer_checks_shapes_and_handles_empty_batches(predictor):
    assert predictor.infer(np.zeros((0, 64, 48, 3), np.uint8)).shape == (0, 18)
    with pytest.raises(ValueError, match=r"expected a uint8 batch of shape \(N, 64, 48, 3\)"):
        predictor.infer(np.zeros((1, 32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor.infer(np.zeros((1, 64, 48, 3), np.float32))


def test_parity_with_pytorch_checkpoint(predictor, trained_run, eval_images):
    """Training/serving skew guard: the checkpoint (eval preprocessing) and the served ONNX model
    give the same probabilities on the same files."""
    import torch

    from training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(trained_run / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    from maskdata.preprocess import Preprocess

    pre = Preprocess.from_dict(ckpt["preprocess"])
    assert pre == predictor.preprocess, "artifact and checkpoint must record the same preprocessing"
    batch = np.stack([pre(p) for p in eval_images])
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    served = predictor.infer(np.stack([predictor.load(p) for p in eval_images]))
    diff = float(np.abs(served - expected).max())
    assert diff < 1e-4, f"max |ONNX - PyTorch| = {diff}"


def test_torch_backend_gives_the_same_answers(predictor, trained_run, eval_images):
    p = Predictor(trained_run / "best.pt", backend="torch", settings=Settings())
    assert p.provider == "torch:cpu" and p.metadata.arch == predictor.metadata.arch, p.info()
    a = predictor.infer(np.stack([predictor.load(x) for x in eval_images]))
    b = p.infer(np.stack([p.load(x) for x in eval_images]))
    assert float(np.abs(a - b).max()) < 1e-4, f"torch vs onnx max diff {np.abs(a - b).max()}"
    ra, rb = predictor.predict(eval_images), p.predict(eval_images)
    assert [r["class"] for r in ra] == [r["class"] for r in rb], "same classes from both backends"


def test_default_path_imports_neither_torch_nor_training(onnx_model, eval_images):
    code = (
        "import sys, json\n"
        "from serving.predictor import Predictor\n"
        f"p = Predictor({str(onnx_model)!r})\n"
        f"r = p.predict([{str(eval_images[0])!r}])[0]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training'))\n"
        "print(json.dumps({'bad': bad, 'class': r['class'], 'provider': p.provider}))\n"
    )
    env = {**os.environ, "MASK_PROVIDERS": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == [], f"default serving path imported {result['bad']}"
    assert result["provider"] == CPU and 0 <= result["class"] < 18, result
    assert "CUDAExecutionProvider" not in out.stderr, f"noisy CUDA probing on a CPU machine: {out.stderr[-500:]}"


def test_cli_prints_one_json_line_per_image(onnx_model, eval_images, capsys):
    from serving.predictor import main

    assert main([str(onnx_model), str(eval_images[0]), str(eval_images[1])]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["image"] for x in lines] == [str(eval_images[0]), str(eval_images[1])], lines
    assert main(["/no/model.onnx", str(eval_images[0])]) == 2


def test_settings_from_environment():
    s = Settings.from_env({"MASK_MODEL": "m.onnx", "MASK_MAX_FILES": "7", "MASK_TENSORRT": "yes",
                           "MASK_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider"})
    assert (s.model, s.max_files, s.tensorrt) == ("m.onnx", 7, True), s
    assert s.providers == (CUDA, CPU) and s.max_upload_bytes == Settings.model_fields["max_upload_bytes"].default, s
    with pytest.raises(ValueError, match="MASK_MAX_FILES='many' is not an integer"):
        Settings.from_env({"MASK_MAX_FILES": "many"})
    with pytest.raises(ValueError, match="MASK_MAX_BATCH_SIZE=1 must be at least 2"):
        Settings.from_env({"MASK_MAX_BATCH_SIZE": "1"})
    with pytest.raises(ValueError, match="MASK_BACKEND=torch needs MASK_CHECKPOINT"):
        Settings.from_env({"MASK_BACKEND": "torch"}).model_source


def test_retired_and_new_batching_settings():
    s = Settings.from_env({"MASK_BATCH_WAIT_MS": "0", "MASK_MAX_QUEUE": "40", "MASK_MAX_BATCH_SIZE": "8"})
    assert (s.batch_wait_ms, s.max_queue, s.max_batch_size) == (0, 40, 8), s
    with pytest.raises(ValueError, match="MASK_MAX_LATENCY_MS is retired.*MASK_BATCH_WAIT_MS"):
        Settings.from_env({"MASK_MAX_LATENCY_MS": "1000"})
    with pytest.raises(ValueError, match="MASK_MAX_QUEUE=4 must be at least MASK_MAX_BATCH_SIZE=8"):
        Settings.from_env({"MASK_MAX_QUEUE": "4", "MASK_MAX_BATCH_SIZE": "8"})


def test_model_info_never_shows_an_absolute_build_path(onnx_model, tmp_path):
    """Artifacts exported before sources were recorded portably carry the build machine's absolute
    checkpoint path; GET /model shows its folder and name instead."""
    import onnx

    model = onnx.load(str(onnx_model))
    for prop in model.metadata_props:
        if prop.key == "mask.sources":
            sources = json.loads(prop.value)
            sources[0]["path"] = "/home/builder/work/runs/r1/best.pt"
            sources[0]["distill"] = {"teacher": "/home/builder/work/ens.onnx", "distill_weight": 0.7}
            prop.value = json.dumps(sources, sort_keys=True)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    info = Predictor(str(old), settings=Settings()).info()
    assert [s["path"] for s in info["sources"]] == ["r1/best.pt"], info["sources"]
    assert info["sources"][0]["distill"] == {"teacher": "work/ens.onnx", "distill_weight": 0.7}, info["sources"]
    assert info["model_file"] == info["source"] == "old.onnx", info


def test_the_shipped_demo_model_records_no_absolute_path():
    from maskdata.artifact import read_metadata

    repo = Path(__file__).resolve().parents[1]
    paths = [s["path"] for s in read_metadata(repo / "demo" / "model.onnx").sources]
    assert paths and not any(Path(p).is_absolute() for p in paths), paths


def test_every_backend_setting_has_a_loader_and_every_exported_variant_a_precision():
    """One list of backend names (serving.settings) and one of exported variants (export.config):
    what the service can be told to use is exactly what it can load."""
    from export.config import VARIANT_PRECISIONS
    from serving.predictor import BACKEND_LOADERS
    from serving.settings import BACKENDS, PRECISIONS

    assert tuple(BACKEND_LOADERS) == BACKENDS, (tuple(BACKEND_LOADERS), BACKENDS)
    assert set(VARIANT_PRECISIONS) <= set(PRECISIONS), (VARIANT_PRECISIONS, PRECISIONS)
