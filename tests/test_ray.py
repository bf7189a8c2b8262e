"""``mask-submit --engine ray``: byte-identical to ``--engine local``, a killed actor survived, Parquet
partitions from the workers, bad input refused with one line. One small in-process Ray (2 CPUs, small
object store, no dashboard) serves the whole module; every test is bounded in time."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serving.submit_cli import main

ray = pytest.importorskip("ray", reason="--engine ray needs the [ray] extra (make test installs it)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
                 log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def eval_dir(synth_root):
    return synth_root / "eval"


def submit(eval_dir, model, out: Path, *extra, images=None, capsys=None) -> tuple[int, str]:
    rc = main(["--info", str(eval_dir / "info.csv"), "--images", str(images or eval_dir / "images"),
               "--out", str(out), "--model", str(model), "--batch-size", "8", "--no-progress", *map(str, extra)])
    printed = capsys.readouterr() if capsys else None
    return rc, (printed.out + printed.err) if printed else ""


def score_line(printed: str) -> str:
    lines = [line for line in printed.splitlines() if line.startswith("score:")]
    assert len(lines) == 1, f"expected one score line in {printed!r}"
    return lines[0].split("; confusion")[0]


def test_same_bytes_as_local_with_probs_and_labels(eval_dir, onnx_model, tmp_path, capsys):
    answers = eval_dir / "answers.csv"
    rc, local_out = submit(eval_dir, onnx_model, tmp_path / "local.csv", "--probs", tmp_path / "local.probs.csv",
                           "--labels", answers, capsys=capsys)
    assert rc == 0, local_out
    rc, ray_out = submit(eval_dir, onnx_model, tmp_path / "ray.csv", "--probs", tmp_path / "ray.probs.csv",
                         "--labels", answers, "--engine", "ray", "--num-actors", "2", capsys=capsys)
    assert rc == 0, f"--engine ray failed: {ray_out}"
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes(), \
        "the Ray submission differs from the local one"
    assert (tmp_path / "ray.probs.csv").read_bytes() == (tmp_path / "local.probs.csv").read_bytes(), \
        "the Ray probabilities differ from the local ones"
    assert score_line(ray_out) == score_line(local_out), "scoring differs between the engines"
    assert (tmp_path / "ray.confusion.png").stat().st_size > 0, "no confusion matrix for the Ray run"


def _broken_copy(eval_dir, tmp_path) -> tuple[Path, str, str]:
    images = tmp_path / "images"
    shutil.copytree(eval_dir / "images", images)
    names = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    (images / names[3]).unlink()
    (images / names[10]).write_bytes(b"not an image")
    return images, names[3], names[10]


def test_on_error_skip_and_missing_check_match_local(eval_dir, onnx_model, tmp_path, capsys):
    images, gone, corrupt = _broken_copy(eval_dir, tmp_path)
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.csv"
        rc, printed = submit(eval_dir, onnx_model, out, "--engine", engine, "--on-error", "skip",
                             images=images, capsys=capsys)
        assert rc == 0, f"{engine}: {printed}"
        outs[engine] = (out.read_bytes(), Path(f"{out}.errors.csv").read_bytes())
    assert outs["ray"] == outs["local"], "skip output or error report differs between the engines"
    assert gone.encode() in outs["ray"][1] and corrupt.encode() in outs["ray"][1], "skipped images not reported"

    out = tmp_path / "fail.csv"
    rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", images=images, capsys=capsys)
    assert rc == 2 and "1 of" in printed and gone in printed, f"missing image not refused up front: {printed}"
    assert not out.exists(), "a failed run left an output file"


def test_killed_actor_is_restarted_and_output_identical(eval_dir, onnx_model, tmp_path, capsys, monkeypatch):
    from serving import ray_engine

    rc, printed = submit(eval_dir, onnx_model, tmp_path / "local.csv", capsys=capsys)
    assert rc == 0, printed
    marker = tmp_path / "crashed"
    monkeypatch.setenv(ray_engine.CRASH_ONCE_ENV, str(marker))
    rc, printed = submit(eval_dir, onnx_model, tmp_path / "ray.csv", "--engine", "ray", "--num-actors", "2",
                         capsys=capsys)
    assert marker.exists(), "the test switch did not crash an actor"
    assert rc == 0, f"the job did not survive a dead actor: {printed}"
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes(), \
        "output after an actor restart differs from the local run"


def test_probs_dir_parquet_from_the_workers(eval_dir, onnx_model, tmp_path, capsys):
    import pandas as pd

    probs_dir = tmp_path / "probs"
    rc, printed = submit(eval_dir, onnx_model, tmp_path / "ray.csv", "--engine", "ray", "--probs-dir", probs_dir,
                         "--probs", tmp_path / "probs.csv", capsys=capsys)
    assert rc == 0, printed
    assert not list(tmp_path.glob(".probs.tmp-*")), "temporary partition folder left behind"
    parts = sorted(probs_dir.glob("*.parquet"))
    assert parts, f"no Parquet partitions in {probs_dir}"
    table = pd.read_parquet(probs_dir).sort_values("row")
    csv = pd.read_csv(tmp_path / "probs.csv")
    assert table["ImageID"].tolist() == csv["ImageID"].tolist(), "Parquet rows are not info.csv's images"
    cols = [f"prob_{c}" for c in range(18)]
    np.testing.assert_allclose(table[cols].to_numpy(), csv[cols].to_numpy(), rtol=1e-7,
                               err_msg="Parquet probabilities differ from --probs")
    sub = pd.read_csv(tmp_path / "ray.csv")
    assert table["ans"].tolist() == sub["ans"].tolist(), "Parquet ans differs from the submission"

    rc, printed = submit(eval_dir, onnx_model, tmp_path / "again.csv", "--engine", "ray", "--probs-dir",
                         probs_dir, capsys=capsys)
    assert rc == 2 and "already exists" in printed, f"an existing --probs-dir was not refused: {printed}"
    assert not (tmp_path / "again.csv").exists()


@pytest.mark.parametrize("case", ["scheme", "model"])
def test_bad_input_one_line_no_output(case, eval_dir, onnx_model, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    if case == "scheme":
        rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", images="nosuchfs://bucket/images",
                             capsys=capsys)
        expected = "cannot open 'nosuchfs://bucket/images': unknown scheme"
    else:
        rc, printed = submit(eval_dir, tmp_path / "absent" / "model.onnx", out, "--engine", "ray", capsys=capsys)
        expected = "cannot be loaded on the Ray workers"
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], f"{case}: {printed}"
    assert not out.exists(), f"{case}: a failed run left an output file"


def test_unreachable_address_fails_in_seconds(eval_dir, onnx_model, tmp_path):
    """A closed port (fresh process, no Ray running) and a port that accepts but never answers (what
    ray.init alone retries for minutes): exit 2 / one line within seconds, no output."""
    import socket

    from serving import ray_engine

    out = tmp_path / "sub.csv"
    proc = subprocess.run([sys.executable, "-m", "serving.submit_cli", "--info", str(eval_dir / "info.csv"),
                           "--images", str(eval_dir / "images"), "--out", str(out), "--model", str(onnx_model),
                           "--engine", "ray", "--ray-address", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "not reachable" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, f"more than one line: {proc.stderr}"
    assert not out.exists()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(ValueError, match="not reachable"):
            ray_engine.check_reachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
        assert time.monotonic() - started < 10, "a silent address was not given up on"
    gcs = ray.get_runtime_context().gcs_address   # the real head of the module's Ray passes the probe
    ray_engine.check_reachable(gcs)


def test_without_ray_says_how_to_install(eval_dir, onnx_model, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` now raises ImportError
    rc, printed = submit(eval_dir, onnx_model, tmp_path / "sub.csv", "--engine", "ray", capsys=capsys)
    assert rc == 2 and "pip install 'mask-classifier[ray]'" in printed, printed


def test_resume_works_across_engines_and_gives_the_same_bytes(eval_dir, onnx_model, tmp_path, capsys, monkeypatch,
                                                              caplog):
    """Both engines keep the same journal: a local run stopped after two batches is finished by Ray
    with --resume, and a Ray run stopped just before writing leaves every batch for the local engine."""
    from serving import ray_engine
    from serving.journal import Journal, read_journal

    ref = tmp_path / "ref.csv"
    rc, printed = submit(eval_dir, onnx_model, ref, "--probs", tmp_path / "ref.probs.csv", capsys=capsys)
    assert rc == 0, printed
    n = ref.read_bytes().count(b"\n") - 1
    batches = -(-n // 8)
    assert batches > 3, f"the eval set is too small to stop part-way ({n} images)"

    out = tmp_path / "a.csv"
    appended = []
    real_append = Journal.append

    def stop_after_two(self, *args, **kwargs):
        if len(appended) == 2:
            raise KeyboardInterrupt
        appended.append(args[0])
        real_append(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(Journal, "append", stop_after_two)
        rc, printed = submit(eval_dir, onnx_model, out, capsys=capsys)
    assert rc == 130 and "--resume to continue" in printed and not out.exists(), printed
    rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", capsys=capsys)
    assert rc == 2 and "pass --resume" in printed, f"an unfinished run must not be overwritten: {printed}"
    with caplog.at_level("INFO", logger="serving.ray_engine"):
        rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", "--resume", "--probs",
                             tmp_path / "a.probs.csv", capsys=capsys)
    assert rc == 0, printed
    assert f"resuming: 16 of {n} images already done" in caplog.text, caplog.text[-2000:]
    assert "16 resumed" in printed, printed
    assert out.read_bytes() == ref.read_bytes(), "Ray resuming a local run wrote other bytes"
    assert (tmp_path / "a.probs.csv").read_bytes() == (tmp_path / "ref.probs.csv").read_bytes()
    assert not Journal.path_for(out).exists(), "the journal must go once the outputs are written"

    out = tmp_path / "b.csv"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(ray_engine, "finish_job", interrupted)
        rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", "--num-actors", "2", capsys=capsys)
    assert rc == 130 and not out.exists(), printed
    header, done, _ = read_journal(Journal.path_for(out))
    assert sorted(done) == list(range(batches)), f"the Ray run journalled batches {sorted(done)} of {batches}"
    rc, printed = submit(eval_dir, onnx_model, out, "--resume", capsys=capsys)
    assert rc == 0 and f"{n} resumed" in printed, printed
    assert out.read_bytes() == ref.read_bytes(), "the local engine finishing a Ray run's journal wrote other bytes"


@pytest.mark.parametrize("extra, expected", [
    (["--resume", "--probs-dir", "PROBS"], "--resume cannot continue a --probs-dir run"),
    (["--shard", "0/2"], "--shard is for --engine local"),
])
def test_options_the_ray_engine_cannot_honour_are_one_line_errors(extra, expected, eval_dir, onnx_model, tmp_path,
                                                                  capsys):
    out = tmp_path / "sub.csv"
    extra = [str(tmp_path / "probs") if e == "PROBS" else e for e in extra]
    rc, printed = submit(eval_dir, onnx_model, out, "--engine", "ray", *extra, capsys=capsys)
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], printed
    assert not out.exists() and not (tmp_path / "probs").exists()
