"""timm backbones, pretrained weights from a cache made in the test (never the network), their
preprocessing recorded in the checkpoint, --list-models and the bad-input messages."""
from __future__ import annotations

import pytest
import torch

from maskdata.preprocess import Preprocess
from training import backbones
from training.cli import main as train_main
from training.models import create_model

PP = Preprocess(64, 48)
TIMM_NAME = "mobilenetv3_small_050"


@pytest.mark.parametrize("head", ["single", "multi"])
@pytest.mark.parametrize("name", ["timm/resnet10t", f"timm/{TIMM_NAME}"])
def test_timm_model_has_the_same_heads_and_contract(name, head):
    model = create_model(name, head=head, preprocess=PP).eval()
    x = torch.randint(0, 256, (3, 64, 48, 3), dtype=torch.uint8)
    out = model.forward_heads(x)
    assert out["logits"].shape == (3, 18), out["logits"].shape
    if head == "multi":
        assert {k: tuple(v.shape) for k, v in out.items() if k != "logits"} == {"mask": (3, 3), "gender": (3, 2),
                                                                                "age": (3, 3)}
        assert torch.allclose(torch.softmax(out["logits"], 1).sum(1), torch.ones(3), atol=1e-5)


def test_unknown_timm_name_says_how_to_find_valid_ones():
    with pytest.raises(ValueError, match=r"timm.list_models\('resnet\*'\)"):
        create_model("timm/resnet_nonexistent99", preprocess=PP)


def _hf_cache(root, name):
    """HF hub cache layout for timm/<name>'s default weights, holding a state dict built here."""
    import timm
    from safetensors.torch import save_file

    cfg = timm.get_pretrained_cfg(name)
    repo = root / ("models--" + cfg.hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    torch.manual_seed(7)
    reference = timm.create_model(name)      # random init stands in for the published weights
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, snap / "model.safetensors")
    return reference, snap / "model.safetensors"


def test_timm_pretrained_cache_hit_offline_and_miss_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        create_model(f"timm/{TIMM_NAME}", pretrained=True, preprocess=PP)
    msg = str(e.value)
    assert "model.safetensors" in msg and str(tmp_path / "hf" / "hub") in msg and "\n" not in msg, msg
    reference, file = _hf_cache(tmp_path / "hf" / "hub", TIMM_NAME)
    for model in (create_model(f"timm/{TIMM_NAME}", pretrained=True, preprocess=PP),
                  create_model(f"timm/{TIMM_NAME}", weights=file, preprocess=PP)):
        got = model.backbone.state_dict()
        for k, v in reference.state_dict().items():
            if not k.startswith("classifier."):
                assert torch.equal(got[k], v), f"{k} not loaded from the cache"


def test_weights_that_do_not_fit_say_how_many_keys(tmp_path):
    import timm

    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "r.pt")
    with pytest.raises(ValueError, match=r"\d+ missing keys .* \d+ unexpected keys"):
        create_model(f"timm/{TIMM_NAME}", weights=tmp_path / "r.pt", preprocess=PP)


@pytest.mark.slow
def test_pretrained_preprocessing_is_used_unless_overridden_and_recorded(tmp_path, monkeypatch, synth_root):
    import timm

    cfg = timm.get_pretrained_cfg(TIMM_NAME)
    own = backbones.pretrained_preprocess(f"timm/{TIMM_NAME}")
    assert own["mean"] == tuple(cfg.mean) and (own["height"], own["width"]) == tuple(cfg.input_size[1:]), own
    tv = backbones.pretrained_preprocess("resnet18")
    assert tv["mean"] == (0.485, 0.456, 0.406) and tv["height"] == 224, tv
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hf_cache(tmp_path / "hf" / "hub", TIMM_NAME)
    out = tmp_path / "run"
    rc = train_main(["--data-dir", str(synth_root / "train"), "--out", str(out), "--model", f"timm/{TIMM_NAME}",
                     "--pretrained", "--resize", "64", "48", "--std", "0.5,0.5,0.5", "--epochs", "1",
                     "--batch-size", "32", "--workers", "0", "--no-progress", "--no-tensorboard"])
    assert rc == 0
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(out / "best.pt")
    pre = ck["preprocess"]
    assert (pre["height"], pre["width"]) == (64, 48), "--resize must override the weights' input size"
    assert tuple(pre["mean"]) == tuple(cfg.mean) and tuple(pre["std"]) == (0.5, 0.5, 0.5), pre
    assert pre["resize_filter"] == own["resize_filter"], "the weights' interpolation is kept unless overridden"
    model = model_from_checkpoint(ck)
    assert torch.allclose(model.std.flatten(), torch.tensor([0.5 * 255] * 3)), "the model must normalise as recorded"
    assert model.temperature.item() == pytest.approx(ck["temperature"]), "the fitted temperature must be applied"


def test_list_models_and_missing_torchvision_file_exit_2(capsys, tmp_path, monkeypatch):
    assert train_main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "plain_cnn" in out and "resnet18" in out and "timm/<name>" in out and "timm.list_models" in out, out
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = train_main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "resnet18", "--pretrained"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "resnet18-" in err and str(tmp_path / "th" / "hub" / "checkpoints") in err, err
    assert len(err.splitlines()) == 1, err


def test_torchvision_weights_transforms_become_the_config_unless_overridden(tmp_path, monkeypatch):
    from training.backbones import hub_weights_path
    from training.cli import build_parser, config_from_args, given_options

    def parse(argv):   # what main() does: the options given decide what follows the weights' own
        return config_from_args(build_parser().parse_args(argv), given_options(argv))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = hub_weights_path("efficientnet_b0")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"present")  # config validation only checks the cache; nothing is loaded here
    base = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "efficientnet_b0", "--pretrained"]
    cfg = parse(base)
    from torchvision.models import EfficientNet_B0_Weights

    t = EfficientNet_B0_Weights.DEFAULT.transforms()
    assert (cfg.data.height, cfg.data.width) == (t.crop_size[0], t.crop_size[0]), cfg.data
    assert cfg.data.resize_filter == t.interpolation.value and list(cfg.data.mean) == list(t.mean), cfg.data
    own = parse(base + ["--resize", "128", "96", "--resize-filter", "box", "--mean", "0.5,0.5,0.5"])
    assert (own.data.height, own.data.width, own.data.resize_filter, own.data.mean) == (128, 96, "box", (0.5,) * 3)
    assert own.data.std == tuple(t.std), "what is not overridden still follows the weights"
    with pytest.raises(ValueError, match="--mean must be three numbers"):
        parse(base + ["--mean", "0.5,0.5"])
