"""``mask-train --amp`` on the CPU: which dtype runs where, the refusals, and what a run records.

No timings: which precision is chosen and which dtype the layers actually see is checked, not speed."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from training import precision

from training.loop import calibration, engine
from training.checkpoint import load_checkpoint
from training.cli import main
from training.optim import Schedule

CPU = torch.device("cpu")
TINY = ["--model", "tiny_cnn", "--epochs", "1", "--batch-size", "16", "--resize", "64", "48", "--workers", "0",
        "--no-progress", "--no-tensorboard", "--device", "cpu"]


@pytest.mark.parametrize("mode,flags,want", [
    ("auto", {"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),   # AVX-512 BF16 (e.g. AMD Zen 4)
    ("auto", {"avx2", "amx_tile", "amx_bf16"}, torch.bfloat16),     # AMX (Intel Sapphire Rapids and later)
    ("auto", {"fp", "asimd", "bf16"}, torch.bfloat16),              # Arm with bf16 arithmetic
    ("auto", {"avx2", "avx512f"}, None),                            # no native bf16: FP32
    ("auto", set(), None),
    ("bf16", {"avx2", "avx512_bf16"}, torch.bfloat16),
    ("off", {"avx512_bf16"}, None),
    (True, {"avx512_bf16"}, torch.bfloat16),                        # the older boolean spelling: true = auto
    ("false", {"avx512_bf16"}, None),
])
def test_cpu_modes_pick_the_dtype_from_the_flags(mode, flags, want):
    chosen = precision.resolve(mode, CPU, flags=flags)
    assert chosen.dtype == want, f"--amp {mode} with flags {sorted(flags)}: got {chosen}"
    assert chosen.name == precision.name_of(want) and chosen.reason, chosen


def test_bf16_without_native_support_warns_that_it_is_slow(caplog):
    with caplog.at_level(logging.WARNING, logger="training.precision"):
        chosen = precision.resolve("bf16", CPU, flags={"avx2", "avx512f"})
    assert chosen.dtype == torch.bfloat16, "--amp bf16 must still run bf16 when asked"
    assert any("slower" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.precision"):
        precision.resolve("bf16", CPU, flags={"avx512_bf16"})
    assert not caplog.records, "no warning where bf16 is native"


def test_fp16_on_cpu_and_unknown_modes_are_one_line_refusals():
    with pytest.raises(ValueError, match="CUDA only") as e:
        precision.resolve("fp16", CPU, flags={"avx512_bf16"})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown --amp mode 'fp8'"):
        precision.resolve("fp8", CPU, flags=set())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert precision.cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert precision.native_bf16(precision.cpu_flags(arm))[0] is True
    assert precision.cpu_flags(tmp_path / "missing") is None


def test_private_torch_bf16_query_still_exists_and_agrees_with_the_flags():
    """The fallback where /proc/cpuinfo is absent is torch's private query; pin that it is still there."""
    query = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    assert callable(query), "torch.cpu._is_avx512_bf16_supported is gone: update training.precision.native_bf16"
    assert isinstance(query(), bool)
    flags = precision.cpu_flags()
    if flags is not None and "avx512f" in flags:
        assert query() == ("avx512_bf16" in flags), (query(), sorted(f for f in flags if "avx512" in f))


class _Probe(nn.Module):
    """A conv net whose forward hook records the autocast state and the dtype its conv produced."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 18)
        self.seen: list[tuple[bool, torch.dtype]] = []
        self.conv.register_forward_hook(lambda m, i, out: self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def _loader(n=8):
    x = torch.randn(n, 3, 8, 8)
    y = torch.arange(n) % 18
    return [(x[i:i + 4], y[i:i + 4], torch.arange(i, i + 4)) for i in range(0, n, 4)], y.numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_training_and_evaluation_run_under_the_chosen_autocast(dtype):
    net = _Probe()
    loader, y = _loader()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    engine.train_one_epoch(net, loader, nn.CrossEntropyLoss(), opt, Schedule(None, False),
                           torch.amp.GradScaler("cpu", enabled=False), device=CPU, amp_dtype=dtype, progress=False)
    want = (True, torch.bfloat16) if dtype is not None else (False, torch.float32)
    assert net.seen and set(net.seen) == {want}, f"training forward saw {set(net.seen)}, want {want}"
    assert all(p.dtype == torch.float32 for p in net.parameters()), "weights must stay FP32 under autocast"
    net.seen.clear()
    metrics, probs = engine.evaluate(net, loader, y, device=CPU, amp_dtype=dtype, progress=False)
    assert set(net.seen) == {want}, f"validation forward saw {set(net.seen)}, want {want}"
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5), "metrics come from FP32 logits"


def test_temperature_fit_evaluates_in_fp32_even_after_bf16_training(monkeypatch, tmp_path):
    from training.loop.trainer import Env

    seen = []
    monkeypatch.setattr(engine, "evaluate", lambda *a, **kw: (seen.append(kw["amp_dtype"]), ({}, np.zeros((0, 18))))[1])
    monkeypatch.setattr(calibration, "calibrate_run", lambda *a: {"ok": True})
    monkeypatch.setattr("training.checkpoint.load_checkpoint", lambda p: {"state_dict": {}})
    (tmp_path / "best.pt").write_bytes(b"")
    net = _Probe()
    monkeypatch.setattr(net, "load_state_dict", lambda sd: None)
    calibration.calibrate_best(net, [], np.zeros(0), tmp_path, Env(CPU, torch.bfloat16))
    assert seen == [None], f"calibration evaluated with amp_dtype {seen}, want FP32 (None)"


def test_bf16_run_records_its_precision_and_keeps_fp32_weights(synth_root, tmp_path, caplog):
    out = tmp_path / "bf16"
    with caplog.at_level(logging.INFO, logger="training"):
        assert main(["--data-dir", str(synth_root / "train"), "--out", str(out), *TINY, "--amp", "bf16"]) == 0
    assert any(r.getMessage().startswith("precision bf16") for r in caplog.records), "the log names the precision"
    assert "# trained in bf16 (--amp bf16" in (out / "config.yaml").read_text()
    for name in ("best.pt", "last.pt"):
        ck = load_checkpoint(out / name)
        assert ck["precision"] == "bf16" and ck["config"]["train"]["amp"] == "bf16", (name, ck.get("precision"))
        bad = [k for k, v in ck["state_dict"].items() if v.is_floating_point() and v.dtype != torch.float32]
        assert not bad, f"{name}: non-FP32 tensors {bad[:3]} (export writes FP32 graphs from these)"
    assert "temperature" in load_checkpoint(out / "best.pt"), "the temperature is still fitted"


def test_fp16_on_cpu_exits_2_with_one_line(synth_root, tmp_path, capsys):
    rc = main(["--data-dir", str(synth_root / "train"), "--out", str(tmp_path / "x"), *TINY, "--amp", "fp16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --amp fp16 is for CUDA only") and "\n" not in err, (rc, err)


def test_recipe_boolean_amp_is_read_as_auto(synth_root, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("amp: true\nepochs: 1\n")
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--data-dir", str(synth_root / "train"), "--out", str(out), *TINY]) == 0
    ck = load_checkpoint(out / "best.pt")
    assert ck["config"]["train"]["amp"] == "auto", ck["config"]["train"]
    want = "bf16" if precision.native_bf16()[0] else "fp32"
    assert ck["precision"] == want, f"--amp auto on this CPU should train in {want}, recorded {ck['precision']}"
