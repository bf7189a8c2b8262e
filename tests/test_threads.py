"""The thread budget knobs reach ONNX Runtime: --threads / MASK_THREADS and --ort-spinning /
MASK_ORT_SPINNING end up in the live session's options (what ORT will use), not just in our settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from serving.predictor import SPINNING_KEY
from serving.predictor import load_predictor
from serving.submit_cli import build_parser, main


def _session_options(predictor):
    return predictor.backend.session.get_session_options()


@pytest.mark.parametrize("threads,spinning", [(1, False), (2, True), (3, False)])
def test_threads_and_spinning_reach_the_session(onnx_model, threads, spinning):
    opts = _session_options(load_predictor(str(onnx_model), threads=threads, ort_spinning=spinning))
    assert opts.intra_op_num_threads == threads, f"asked {threads} intra-op threads, ORT has {opts.intra_op_num_threads}"
    assert opts.get_session_config_entry(SPINNING_KEY) == ("1" if spinning else "0"), \
        f"spinning {spinning} did not reach {SPINNING_KEY}"


def test_the_process_settings_are_the_default_and_flags_win(onnx_model, monkeypatch):
    """mask-submit's main reads MASK_* once (get_settings) and hands them down; a Predictor loaded
    without settings never reads the environment behind its caller's back."""
    from serving.settings import get_settings

    monkeypatch.setenv("MASK_THREADS", "1")
    monkeypatch.setenv("MASK_ORT_SPINNING", "1")
    settings = get_settings()
    opts = _session_options(load_predictor(str(onnx_model), settings=settings))
    assert (opts.intra_op_num_threads, opts.get_session_config_entry(SPINNING_KEY)) == (1, "1"), \
        "MASK_THREADS / MASK_ORT_SPINNING were not applied"
    opts = _session_options(load_predictor(str(onnx_model), settings=settings, threads=2, ort_spinning=False))
    assert (opts.intra_op_num_threads, opts.get_session_config_entry(SPINNING_KEY)) == (2, "0"), \
        "explicit arguments must override the environment"
    opts = _session_options(load_predictor(str(onnx_model)))
    assert (opts.intra_op_num_threads, opts.get_session_config_entry(SPINNING_KEY)) == (0, "0"), \
        "without settings the documented defaults apply, not the environment"


def test_spinning_is_off_by_default(onnx_model, monkeypatch):
    monkeypatch.delenv("MASK_ORT_SPINNING", raising=False)
    opts = _session_options(load_predictor(str(onnx_model)))
    assert opts.get_session_config_entry(SPINNING_KEY) == "0", "spinning must be off unless asked for"


def test_cli_parses_the_knobs():
    args = build_parser().parse_args(["--info", "i", "--images", "d", "--out", "o", "--threads", "1",
                                      "--ort-spinning", "on"])
    assert (args.threads, args.ort_spinning) == (1, "on"), f"parsed {args.threads}, {args.ort_spinning}"


def test_negative_threads_is_a_one_line_error(onnx_model, tmp_path, capsys):
    rc = main(["--info", str(tmp_path / "info.csv"), "--images", str(tmp_path), "--out", str(tmp_path / "o.csv"),
               "--model", str(onnx_model), "--threads", "-1", "--no-progress"])
    assert rc == 2, f"--threads -1 must exit 2, got {rc}"
    assert "--threads" in capsys.readouterr().err, "the error must name the flag"


def test_bf16_runs_the_torch_backend_and_keeps_the_answers(trained_run, onnx_model, synth_root):
    """--precision bf16 on a .pt checkpoint runs under CPU bf16 autocast; on an .onnx it is a clear error."""
    import numpy as np

    from export.parity import list_images

    paths = list_images(synth_root / "eval" / "images", 32)
    fp32 = load_predictor(str(trained_run / "best.pt"), "fp32")
    bf16 = load_predictor(str(trained_run / "best.pt"), "bf16")
    assert bf16.provider == "torch:cpu:bf16", f"bf16 did not reach the torch backend: {bf16.provider}"
    batch = np.stack([fp32.load(p) for p in paths])
    p32, p16 = fp32.infer(batch), bf16.infer(batch)
    assert p16.dtype == np.float32 and np.allclose(p16.sum(1), 1, atol=1e-4), "probabilities must stay float32"
    assert np.abs(p16 - p32).max() < 0.05, f"bf16 moved probabilities by {np.abs(p16 - p32).max():.3g}"
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.9, "bf16 changed too many answers"
    with pytest.raises(ValueError, match="PyTorch backend"):
        load_predictor(str(onnx_model), "bf16")


def _worker_nice(executor) -> int:
    import os
    import threading

    return executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("nice", [0, 5, 19])
def test_decode_workers_run_nicer_than_the_caller_and_only_they(nice):
    """os.setpriority on a native thread id lowers that thread alone (Linux NPTL): the caller, which
    runs the model, and ONNX Runtime's threads it starts keep their priority."""
    import os

    from serving.decode_pool import create_executor

    before = os.getpriority(os.PRIO_PROCESS, 0)
    with create_executor("thread", 1, nice) as pool:
        got = _worker_nice(pool)
    assert got == min(19, before + nice), f"decode worker nice {got}, expected {min(19, before + nice)}"
    assert os.getpriority(os.PRIO_PROCESS, 0) == before, "lowering a decode worker changed the caller's priority"


def _decode_priorities(monkeypatch, predictor, synth_root, out, **options) -> set[int]:
    """Run the batch job; the priorities of the threads that ran the model's own preprocessing."""
    import os
    import threading

    from maskdata.preprocess import Preprocess
    from serving.local_engine import run_submission

    seen: set[int] = set()
    real = Preprocess.__call__

    def recording(self, *args, **kwargs):
        seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Preprocess, "__call__", recording)
    run_submission(predictor, synth_root / "eval" / "info.csv", synth_root / "eval" / "images", out,
                   progress=False, workers=1, **options)
    return seen


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_decode_nice_default_comes_from_the_settings(onnx_model, synth_root, tmp_path, monkeypatch, capsys):
    """The decode workers run the predictor's settings' decode_nice (MASK_DECODE_NICE where
    mask-submit starts; default 10) steps below the caller; an explicit decode_nice wins; a bad
    MASK_DECODE_NICE stops mask-submit before any output exists."""
    import os

    from serving.settings import Settings

    base = os.getpriority(os.PRIO_PROCESS, 0)
    default = Settings.model_fields["decode_nice"].default
    got = _decode_priorities(monkeypatch, load_predictor(str(onnx_model)), synth_root, tmp_path / "a.csv")
    assert got == {min(19, base + default)}, f"default: decode ran at {got}, caller at {base}"
    predictor = load_predictor(str(onnx_model), settings=Settings.from_fields({"decode_nice": 3}))
    got = _decode_priorities(monkeypatch, predictor, synth_root, tmp_path / "b.csv")
    assert got == {min(19, base + 3)}, f"decode_nice=3 in the settings: decode ran at {got}, caller at {base}"
    got = _decode_priorities(monkeypatch, predictor, synth_root, tmp_path / "c.csv", decode_nice=0)
    assert got == {base}, f"decode_nice=0 must win over the settings: decode ran at {got}, caller at {base}"
    monkeypatch.setenv("MASK_DECODE_NICE", "40")
    out = tmp_path / "d.csv"
    code = main(["--model", str(onnx_model), "--info", str(synth_root / "eval" / "info.csv"),
                 "--images", str(synth_root / "eval" / "images"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "MASK_DECODE_NICE=40 must be at most 19" in err, (code, err)
    assert not out.exists() and not Path(f"{out}.journal").exists(), "output before the check"


def test_decode_nice_reaches_the_decode_pool(onnx_model, synth_root, tmp_path, monkeypatch):
    from serving import decode_pool

    seen = []
    real = decode_pool.create_executor
    monkeypatch.setattr(decode_pool, "create_executor", lambda kind, workers, nice=0: seen.append(nice) or
                        real(kind, workers, nice))
    rc = main(["--info", str(synth_root / "eval" / "info.csv"), "--images", str(synth_root / "eval" / "images"),
               "--out", str(tmp_path / "o.csv"), "--model", str(onnx_model), "--decode-nice", "7", "--no-progress"])
    assert rc == 0 and seen == [7], f"--decode-nice 7 should reach the decode pool, saw {seen} (rc {rc})"


def test_bad_decode_nice_is_a_one_line_error(onnx_model, tmp_path, capsys):
    rc = main(["--info", str(tmp_path / "info.csv"), "--images", str(tmp_path), "--out", str(tmp_path / "o.csv"),
               "--model", str(onnx_model), "--decode-nice", "20", "--no-progress"])
    assert rc == 2 and "--decode-nice" in capsys.readouterr().err, "--decode-nice 20 must exit 2 naming the flag"
