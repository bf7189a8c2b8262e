"""mask-submit end to end on the shared synthetic eval set and tiny ONNX model: same answers as the
Predictor (/predict), scoring equal to maskdata.metrics, resume after a real kill -9, shards, workers."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskdata import metrics
from maskdata.io import read_csv
from serving.shards import Shard
from maskdata.scoring import score
from serving.journal import Journal
from serving.local_engine import run_submission
from serving.submit_cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(onnx_model):
    from serving.predictor import Predictor

    return Predictor(str(onnx_model), backend="onnx")


@pytest.fixture(scope="module")
def eval_dir(synth_root):
    return synth_root / "eval"


def read_rows(path) -> list[dict[str, str]]:
    return read_csv(path, ("ImageID", "ans"))[1]


def test_end_to_end_matches_predictor_and_metrics(onnx_model, eval_dir, predictor, tmp_path, capsys):
    out, probs = tmp_path / "submission.csv", tmp_path / "probs.csv"
    rc = main(["--info", str(eval_dir / "info.csv"), "--images", str(eval_dir / "images"), "--out", str(out),
               "--model", str(onnx_model), "--probs", str(probs), "--labels", str(eval_dir / "answers.csv"),
               "--batch-size", "8", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, f"mask-submit failed: {printed}"
    info = read_rows(eval_dir / "info.csv")
    rows = read_rows(out)
    assert [r["ImageID"] for r in rows] == [r["ImageID"] for r in info], "rows must keep info.csv order"
    ans = np.array([int(r["ans"]) for r in rows])
    assert ((0 <= ans) & (ans < 18)).all(), f"ans outside 0..17: {sorted(set(ans))}"

    # the /predict path: Predictor.predict on each file gives the same class
    paths = [eval_dir / "images" / r["ImageID"] for r in info]
    expected = np.array([d["class"] for d in predictor.predict(paths)])
    agree = (expected == ans).mean()
    assert agree == 1.0, f"batch job agrees with Predictor.predict on only {agree:.1%} of images"

    # probabilities equal the predictor's on the same decoded pixels (batching may move the last bits)
    p = np.array([[float(v) for v in r[1:19]] for r in list(csv.reader(probs.open()))[1:]])
    flags = np.array([int(r[19]) for r in list(csv.reader(probs.open()))[1:]])
    assert (flags == (p.max(1) < predictor.uncertain_below)).all(), "uncertain column != top prob < threshold"
    direct = predictor.infer(np.stack([predictor.load(x) for x in paths]))
    assert np.abs(p - direct).max() < 1e-5, f"probs differ from Predictor.infer by {np.abs(p - direct).max()}"
    assert (p.argmax(1) == ans).all(), "probs file disagrees with ans"

    # the printed score is maskdata.metrics on the same arrays
    truth = {r["ImageID"]: int(r["ans"]) for r in read_rows(eval_dir / "answers.csv")}
    y_true = np.array([truth[r["ImageID"]] for r in rows])
    ref = metrics.report(y_true, ans)
    assert f"macro F1 {ref['f1']:.4f}" in printed and f"accuracy {ref['acc']:.4f}" in printed, printed
    from maskdata.report import class_report
    report = list(csv.DictReader(out.with_suffix(".class_report.csv").open()))
    rows_ref, summary = class_report(y_true, p)
    macro = next(r for r in report if r["class"] == "macro")
    assert float(macro["f1"]) == pytest.approx(ref["f1"], abs=1e-6), "class report macro F1 != score"
    assert float(macro["roc_auc"]) == pytest.approx(summary["roc_auc_macro"], abs=1e-6)
    assert f"age {ref['f1_age']:.4f}" in printed, printed
    png = out.with_suffix(".confusion.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", "confusion matrix PNG missing"
    assert "img/s" in printed and f"{len(rows)} images" in printed, f"summary line missing: {printed}"
    assert not Journal.path_for(out).exists(), "journal must be removed after a finished run"


def test_score_function_equals_metrics(eval_dir, tmp_path):
    truth = read_rows(eval_dir / "answers.csv")
    ids = [r["ImageID"] for r in truth]
    y_true = np.array([int(r["ans"]) for r in truth])
    y_pred = (y_true + np.arange(len(y_true)) % 3) % 18           # some right, some wrong
    y_pred[::7] = -1                                               # skipped rows are left out
    got = score(ids, y_pred, eval_dir / "answers.csv", tmp_path / "cm.png")
    keep = y_pred != -1
    ref = metrics.report(y_true[keep], y_pred[keep])
    for k, v in ref.items():
        assert got[k] == pytest.approx(v), f"{k}: score() gives {got[k]}, metrics.report {v}"
    assert got["skipped"] == int((~keep).sum()), got


def test_csv_quirks_keep_every_column(eval_dir, predictor, tmp_path):
    info = read_rows(eval_dir / "info.csv")[:5]
    text = "\ufeffImageID,ans,note\r\n" + "".join(f'"{r["ImageID"]}",0,"a, ""quoted"" note {i}"\r\n'
                                                  for i, r in enumerate(info))
    (tmp_path / "info.csv").write_bytes(text.encode("utf-8"))
    result = run_submission(predictor, tmp_path / "info.csv", eval_dir / "images", tmp_path / "out.csv",
                            progress=False)
    header, rows = read_csv(tmp_path / "out.csv", ("ImageID",))
    assert header == ["ImageID", "ans", "note"], header
    assert [r["note"] for r in rows] == [f'a, "quoted" note {i}' for i in range(5)], rows
    assert [int(r["ans"]) for r in rows] == result.ans.tolist()
    # an info.csv without an ans column gets one appended
    (tmp_path / "noans.csv").write_text("ImageID\n" + "".join(r["ImageID"] + "\n" for r in info))
    run_submission(predictor, tmp_path / "noans.csv", eval_dir / "images", tmp_path / "out2.csv", progress=False)
    header2, rows2 = read_csv(tmp_path / "out2.csv", ("ImageID", "ans"))
    assert header2 == ["ImageID", "ans"] and [int(r["ans"]) for r in rows2] == result.ans.tolist()


def test_process_workers_equal_threads(eval_dir, predictor, tmp_path):
    a = run_submission(predictor, eval_dir / "info.csv", eval_dir / "images", tmp_path / "a.csv",
                       batch_size=16, workers=2, worker_kind="thread", progress=False)
    b = run_submission(predictor, eval_dir / "info.csv", eval_dir / "images", tmp_path / "b.csv",
                       batch_size=16, workers=2, worker_kind="process", progress=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes(), "threads and processes differ"
    assert a.processed == b.processed == len(a.ans)


def test_shards_merge_to_one_run(eval_dir, predictor, tmp_path, capsys):
    info, images = eval_dir / "info.csv", eval_dir / "images"
    run_submission(predictor, info, images, tmp_path / "full.csv", batch_size=8, progress=False)
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"part{i}.csv")
        run_submission(predictor, info, images, parts[-1], batch_size=8, shard=Shard(i, 3), progress=False)
    sizes = [len(read_rows(p)) for p in parts]
    n = len(read_rows(info))
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1, f"shard sizes {sizes} do not split {n} rows"
    rc = main(["merge", *map(str, reversed(parts)), "--info", str(info), "--out", str(tmp_path / "merged.csv")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "full.csv").read_bytes(), "merge != one run"

    assert main(["merge", str(parts[0]), str(parts[1]), "--info", str(info), "--out", str(tmp_path / "m.csv")]) == 2
    assert "in no part file" in capsys.readouterr().err
    assert main(["merge", *map(str, parts), str(parts[1]), "--info", str(info), "--out", str(tmp_path / "m.csv")]) == 2
    assert "appears twice" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists(), "a failed merge must not write output"
    assert main(["--info", str(info), "--images", str(images), "--out", str(tmp_path / "x.csv"),
                 "--shard", "3/3"]) == 2
    assert "out of range" in capsys.readouterr().err


class StopAfter:
    """A predictor stand-in that raises KeyboardInterrupt (Ctrl-C) after ``n`` inference calls."""

    def __init__(self, predictor, n):
        self._p, self._left = predictor, n

    def __getattr__(self, name):
        return getattr(self._p, name)

    def infer(self, batch):
        if self._left == 0:
            raise KeyboardInterrupt
        self._left -= 1
        return self._p.infer(batch)


def test_ctrl_c_then_resume_with_torn_journal(eval_dir, predictor, tmp_path):
    info, images = eval_dir / "info.csv", eval_dir / "images"
    run_submission(predictor, info, images, tmp_path / "ref.csv", batch_size=8, probs_csv=tmp_path / "ref.p",
                   progress=False)
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        run_submission(StopAfter(predictor, 3), info, images, out, batch_size=8, progress=False)
    journal = Journal.path_for(out)
    assert not out.exists() and journal.is_file(), "an interrupted run must leave only its journal"
    assert len(journal.read_text().splitlines()) == 1 + 3, "journal should hold the header and 3 batches"
    with journal.open("a") as f:
        f.write('{"batch": 3, "ans": [1, 2')                  # what a kill -9 mid-write leaves
    with pytest.raises(ValueError, match="--resume"):
        run_submission(predictor, info, images, out, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="different job"):
        run_submission(predictor, info, images, out, batch_size=8, resume=True, shard=Shard(0, 2), progress=False)
    result = run_submission(predictor, info, images, out, batch_size=32, resume=True, probs_csv=tmp_path / "out.p",
                            progress=False)
    assert result.resumed == 24 and result.processed == len(result.ans) - 24, (result.resumed, result.processed)
    assert out.read_bytes() == (tmp_path / "ref.csv").read_bytes(), "resumed output differs from a full run"
    assert (tmp_path / "out.p").read_bytes() == (tmp_path / "ref.p").read_bytes(), "resumed probs differ"
    assert not journal.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_resume_after_kill(sig, eval_dir, onnx_model, tmp_path):
    """A real mask-submit process killed midway (SIGKILL, or SIGINT as Ctrl-C), then --resume: identical file."""
    rows = read_rows(eval_dir / "info.csv")
    images = tmp_path / "images"
    images.mkdir()
    # enough rows (hard links, no copying) that the run is still going when we kill it, even on a quiet
    # machine where the tiny model decodes and infers ~1,000 images a second
    lines = ["ImageID,ans"]
    for k in range(30):
        for r in rows:
            name = f"{k:02d}_{r['ImageID']}"
            os.link(eval_dir / "images" / r["ImageID"], images / name)
            lines.append(f"{name},0")
    (tmp_path / "info.csv").write_text("\n".join(lines) + "\n")
    args = ["--info", str(tmp_path / "info.csv"), "--images", str(images), "--model", str(onnx_model),
            "--batch-size", "8", "--workers", "1", "--no-progress", "-q"]
    out = tmp_path / "out.csv"
    journal = Journal.path_for(out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Ctrl-C as a terminal delivers it: to a process whose SIGINT is at its default. An ignored signal is
    # inherited across exec, and Python then installs no KeyboardInterrupt handler; earlier tests in this
    # pytest process (Ray's driver among them) may leave SIGINT ignored, so the child resets it.
    proc = subprocess.Popen([sys.executable, "-m", "serving.submit_cli", *args, "--out", str(out)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 6:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    if sig == signal.SIGINT:
        assert rc == 130 and "--resume" in proc.stderr.read().decode(), f"Ctrl-C should exit 130 with advice, got {rc}"
    assert not out.exists(), "killed run must not leave an output file"
    done = journal.read_text().count("\n") - 1
    assert 0 < done < len(lines) // 8, f"kill should land midway; journal has {done} batches"

    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "ref.csv")]) == 0
    assert out.read_bytes() == (tmp_path / "ref.csv").read_bytes(), "resumed output differs from an uninterrupted run"



def test_pytorch_checkpoint_gives_the_same_answers(trained_run, onnx_model, eval_dir, tmp_path, capsys):
    """--model best.pt (PyTorch backend) and the ONNX export of that checkpoint agree."""
    args = ["--info", str(eval_dir / "info.csv"), "--images", str(eval_dir / "images"), "--no-progress", "-q"]
    for name, model in (("pt", trained_run / "best.pt"), ("onnx", onnx_model)):
        rc = main([*args, "--out", str(tmp_path / f"{name}.csv"), "--model", str(model),
                   "--probs", str(tmp_path / f"{name}.p")])
        assert rc == 0, f"{name}: {capsys.readouterr().err}"
    a = [r["ans"] for r in read_rows(tmp_path / "pt.csv")]
    b = [r["ans"] for r in read_rows(tmp_path / "onnx.csv")]
    assert a == b, f"PyTorch and ONNX answers differ on {sum(x != y for x, y in zip(a, b))} of {len(a)} images"
    pa, pb = (np.array([[float(v) for v in r[1:]] for r in list(csv.reader((tmp_path / f"{n}.p").open()))[1:]])
              for n in ("pt", "onnx"))
    assert np.abs(pa - pb).max() < 1e-4, f"probabilities differ by {np.abs(pa - pb).max()}"


def test_journal_torn_header_and_foreign_file(tmp_path):
    path = tmp_path / "out.csv.journal"
    header = {"journal": "mask-submit", "fingerprint": "abc", "batch_size": 4}
    path.write_text('{"journal": "mask-su')                      # killed while writing the header
    journal, done = Journal.open(path, header, resume=True)
    assert done == {}, "a torn header means nothing was finished"
    journal.append(0, np.array([1, 2]), np.full((2, 18), 0.25, dtype=np.float32), {1: "why"})
    journal.close()
    again, done = Journal.open(path, header, resume=True)
    again.close()
    assert list(done) == [0] and done[0]["ans"] == [1, 2] and done[0]["errors"] == {"1": "why"}, done
    path.write_text("ImageID,ans\nsomething,1\n")
    with pytest.raises(ValueError, match="not a mask-submit journal"):
        Journal.open(path, header, resume=True)


def test_default_path_is_torch_free(eval_dir, onnx_model, tmp_path):
    """An ONNX run of mask-submit never imports torch or the training package."""
    code = ("import sys; from serving.submit_cli import main; "
            f"rc = main(['--info', {str(eval_dir / 'info.csv')!r}, '--images', {str(eval_dir / 'images')!r}, "
            f"'--out', {str(tmp_path / 'o.csv')!r}, '--model', {str(onnx_model)!r}, '--no-progress', '-q']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'torchvision')); "
            "print('IMPORTED', bad); sys.exit(rc or (3 if bad else 0))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-500:]}"
    assert "IMPORTED []" in proc.stdout, proc.stdout


def test_precision_int8_runs_the_int8_sibling(onnx_model, eval_dir, predictor, tmp_path, capsys):
    """--precision int8 runs model.int8.onnx beside the model, and says so when it is missing."""
    import shutil

    from export.variants import to_int8

    model = tmp_path / "model.onnx"
    shutil.copy(onnx_model, model)
    info = eval_dir / "info.csv"
    rc = main(["--info", str(info), "--images", str(eval_dir / "images"), "--out", str(tmp_path / "x.csv"),
               "--model", str(model), "--precision", "int8", "--no-progress"])
    assert rc == 2, "a missing INT8 variant must be a one-line error"
    assert "no int8 variant" in capsys.readouterr().err

    images = sorted((eval_dir / "images").iterdir())[:16]
    to_int8(model, tmp_path / "model.int8.onnx", np.stack([predictor.load(p) for p in images]))
    out = tmp_path / "int8.csv"
    rc = main(["--info", str(info), "--images", str(eval_dir / "images"), "--out", str(out),
               "--model", str(model), "--precision", "int8", "--no-progress"])
    assert rc == 0, "the INT8 run failed"
    from serving.predictor import load_predictor

    loaded = load_predictor(str(model), "int8")
    assert loaded.metadata.precision == "int8", f"expected the INT8 file, got {loaded.metadata.precision}"
    rows = read_rows(out)
    expected = [p["class"] for p in loaded.predict([eval_dir / "images" / r["ImageID"] for r in rows])]
    assert [int(r["ans"]) for r in rows] == expected, "--precision int8 answers differ from the INT8 Predictor"
