"""mask-submit's refusals: every bad CSV / path case gets exit code 2, a one-line reason, no output;
missing and corrupt images fail by default and become -1 with a report under --on-error skip."""
from __future__ import annotations

import os
import shutil

import pytest

from maskdata.io import read_csv
from serving.submit_cli import main


@pytest.fixture(scope="module")
def small_job(synth_root, tmp_path_factory):
    """A private images folder (4 real images) we may add symlinks and broken files to."""
    ev = synth_root / "eval"
    root = tmp_path_factory.mktemp("job")
    (root / "images").mkdir()
    _, rows = read_csv(ev / "info.csv", ("ImageID",))
    ids = [r["ImageID"] for r in rows[:4]]
    for i in ids:
        shutil.copy(ev / "images" / i, root / "images" / i)
    (root / "secret.jpg").write_bytes((ev / "images" / ids[0]).read_bytes())
    os.symlink(root / "secret.jpg", root / "images" / "link_out.jpg")
    os.symlink(root / "images" / ids[0], root / "images" / "link_in.jpg")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root, ids


def run(root, info_text: str, *extra: str, model=None) -> tuple[int, str]:
    info = root / "info_case.csv"
    info.write_text(info_text)
    out = root / "out.csv"
    if out.exists():
        out.unlink()
    args = ["--info", str(info), "--images", str(root / "images"), "--out", str(out), "--no-progress", "-q"]
    return main(args + (["--model", str(model)] if model else []) + list(extra)), str(out)


@pytest.mark.parametrize("case,text,reason", [
    ("no ImageID column", "name,ans\na.jpg,0\n", "missing column(s) ImageID"),
    ("empty file", "", "empty CSV"),
    ("header only", "ImageID,ans\n", "no rows"),
    ("duplicate", "ImageID,ans\n{0},0\n{1},0\n{0},0\n", "duplicate ImageID"),
    ("parent dir", "ImageID,ans\n../secret.jpg,0\n", "escape the images folder"),
    ("nested parent", "ImageID,ans\nsub/../../secret.jpg,0\n", "escape the images folder"),
    ("absolute", "ImageID,ans\n{root}/secret.jpg,0\n", "absolute path"),
    ("symlink out", "ImageID,ans\nlink_out.jpg,0\n", "outside the images folder"),
    ("backslash", "ImageID,ans\n..\\secret.jpg,0\n", "backslash"),
    ("empty id", "ImageID,ans\n{0},0\n,0\n", "empty ImageID"),
])
def test_bad_csv_is_refused(case, text, reason, small_job, onnx_model, capsys):
    root, ids = small_job
    rc, out = run(root, text.format(*ids, root=root), model=onnx_model)
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: expected exit code 2, got {rc}"
    assert err.startswith("error: ") and reason in err, f"{case}: reason {reason!r} not in {err!r}"
    assert len(err.strip().splitlines()) == 1, f"{case}: error should be one line: {err!r}"
    assert not os.path.exists(out), f"{case}: no output may be written"


def test_symlink_inside_the_folder_is_fine(small_job, onnx_model, capsys):
    root, ids = small_job
    rc, out = run(root, f"ImageID,ans\nlink_in.jpg,0\n{ids[0]},0\n", model=onnx_model)
    assert rc == 0, capsys.readouterr().err
    _, rows = read_csv(out, ("ImageID", "ans"))
    assert rows[0]["ans"] == rows[1]["ans"], "a link to an image must give that image's answer"


def test_missing_images_listed_before_inference(small_job, onnx_model, capsys):
    root, ids = small_job
    text = f"ImageID,ans\n{ids[0]},0\ngone1.jpg,0\n{ids[1]},0\ngone2.jpg,0\n"
    rc, out = run(root, text, model=onnx_model)
    err = capsys.readouterr().err
    assert rc == 2 and "2 of 4 images are missing" in err and "gone1.jpg" in err, err
    assert not os.path.exists(out)
    _, report = read_csv(out + ".errors.csv", ("ImageID", "reason"))
    assert [r["ImageID"] for r in report] == ["gone1.jpg", "gone2.jpg"], report

    rc, out = run(root, text + "broken.jpg,0\n", "--on-error", "skip", model=onnx_model)
    assert rc == 0, capsys.readouterr().err
    _, rows = read_csv(out, ("ImageID", "ans"))
    ans = {r["ImageID"]: int(r["ans"]) for r in rows}
    assert [r["ImageID"] for r in rows] == [ids[0], "gone1.jpg", ids[1], "gone2.jpg", "broken.jpg"]
    assert ans["gone1.jpg"] == ans["gone2.jpg"] == ans["broken.jpg"] == -1, ans
    assert 0 <= ans[ids[0]] < 18 and 0 <= ans[ids[1]] < 18, ans
    _, report = read_csv(out + ".errors.csv", ("ImageID", "reason"))
    reasons = {r["ImageID"]: r["reason"] for r in report}
    assert set(reasons) == {"gone1.jpg", "gone2.jpg", "broken.jpg"}, reasons
    assert "missing" in reasons["gone1.jpg"] and "cannot read image" in reasons["broken.jpg"], reasons


def test_corrupt_image_fails_by_default(small_job, onnx_model, capsys):
    root, ids = small_job
    rc, out = run(root, f"ImageID,ans\n{ids[0]},0\nbroken.jpg,0\n", model=onnx_model)
    err = capsys.readouterr().err
    assert rc == 2 and "broken.jpg" in err and "--on-error skip" in err, err
    assert not os.path.exists(out)


def test_bad_options(small_job, onnx_model, capsys):
    root, ids = small_job
    for extra, reason in ((["--shard", "2/2"], "out of range"), (["--shard", "x"], "I/N"),
                          (["--images", str(root / "nope")], "images folder not found")):
        rc, _ = run(root, f"ImageID,ans\n{ids[0]},0\n", *extra, model=onnx_model)
        err = capsys.readouterr().err
        assert rc == 2 and reason in err, f"{extra}: {err!r}"
    rc, _ = run(root, f"ImageID,ans\n{ids[0]},0\n", "--labels", str(root / "nope.csv"), model=onnx_model)
    err = capsys.readouterr().err
    assert rc == 2 and "nope.csv" in err, err
    rc, _ = run(root, f"ImageID,ans\n{ids[0]},0\n", "--out", str(root), model=onnx_model)
    err = capsys.readouterr().err
    assert rc == 2 and "is a directory" in err, err
    rc, _ = run(root, f"ImageID,ans\n{ids[0]},0\n", model=root / "missing.onnx")
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err, err
    rc, _ = run(root, f"ImageID,ans\n{ids[0]},0\n", model="mask-classifier:no-such-version")
    err = capsys.readouterr().err
    assert rc == 2 and "model store" in err, err
