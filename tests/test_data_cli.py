"""``mask-data`` CLI: synth / check / sheet, and one-line errors with exit code 2 on bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from maskdata.cli import main


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: "), f"stderr: {err!r}"
    assert err.count("error: ") == 1, f"expected one error line, got {err!r}"
    for name in names:
        assert name in last, f"{name!r} not named in {last!r}"
    return last


def test_check_reports_counts_and_no_problems(synth_root, capsys):
    assert main(["check", str(synth_root / "train"), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "people: 24  images: 168" in out, out
    assert "problems: none" in out
    assert "wear/male/<30" in out and "not_wear/female/>=60" in out
    assert main(["check", str(synth_root)]) == 0, "DIR holding train/ is accepted too"


def test_check_lenient_lists_problems_strict_fails(train_copy, capsys):
    folder = next(p for p in (train_copy / "images").iterdir() if p.is_dir())
    victim = next(p for p in folder.iterdir() if p.name.lower().startswith("mask2"))
    victim.write_text("this is not an image")
    assert main(["check", str(train_copy)]) == 0
    out = capsys.readouterr().out
    assert "problem: unreadable image: 1" in out and str(victim) in out, out
    assert main(["check", str(train_copy), "--strict"]) == 2
    _one_line_error(capsys, str(train_copy), "unreadable image")


def test_missing_and_empty_folder(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 2
    _one_line_error(capsys, str(tmp_path / "nope"), "expected")
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, str(tmp_path / "empty"), "empty", "train.csv")
    assert main(["sheet", str(tmp_path / "empty"), "--out", str(tmp_path / "s.png")]) == 2
    _one_line_error(capsys, str(tmp_path / "empty"))


def test_csv_without_expected_columns(train_copy, capsys):
    (train_copy / "train.csv").write_text("id,sex,age\n1,male,20\n")
    assert main(["check", str(train_copy)]) == 2
    _one_line_error(capsys, str(train_copy / "train.csv"), "missing column(s) gender,race,path", "expected")


def test_sheet_writes_png_and_rejects_non_image(train_copy, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["sheet", str(train_copy), "--out", str(out), "--people", "3"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width == 7 * 168 and img.height > 3 * 224, (img.format, img.size)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sheet")], "temporary file left behind"
    small = tmp_path / "small.png"
    assert main(["sheet", str(train_copy), "--out", str(small), "--people", "3", "--palette"]) == 0
    with Image.open(small) as img:
        assert img.mode == "P" and img.size == Image.open(out).size
    assert small.stat().st_size < out.stat().st_size, "the palette sheet should be smaller"
    bad = next(p for p in sorted((train_copy / "images").iterdir()) if p.is_dir())
    target = next(p for p in bad.iterdir() if p.name.lower().startswith("normal"))
    target.write_bytes(b"GIF89a but not really")
    assert main(["sheet", str(train_copy), "--out", str(out), "--people", "12"]) == 2
    _one_line_error(capsys, str(target), "not a recognised image")


def test_synth_command_and_refusal_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--people", "2", "--eval-people", "1", "--workers", "1"]) == 0
    assert "wrote 14 train images (2 people) and 7 eval images (1 people)" in capsys.readouterr().out
    assert (out / "train" / "train.csv").is_file() and (out / "eval" / "answers.csv").is_file()
    assert main(["synth", "--out", str(out), "--people", "2"]) == 2
    _one_line_error(capsys, str(out / "train"), "not empty")
    assert main(["synth", "--out", str(out), "--people", "0"]) == 2
    _one_line_error(capsys, "people")


def test_help_and_console_script():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    r = subprocess.run([sys.executable, "-m", "maskdata.cli", "synth", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--eval-people" in r.stdout and "--label-noise" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "maskdata.cli", "check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "train_dir" in r.stderr, r.stderr
