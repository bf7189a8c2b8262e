"""Data reader: the generator's layout reads back clean; each problem kind is reported
with its path and count in lenient mode and raises in strict mode."""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from maskdata import labels
from maskdata.layout import DataError, class_counts, fingerprint, people, read_eval_info, read_train_dir


def _rows(train_dir: Path) -> list[dict]:
    with open(train_dir / "train.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(train_dir: Path, rows: list[dict]) -> None:
    with open(train_dir / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "gender", "race", "age", "path"])
        w.writeheader()
        w.writerows(rows)


def test_generated_layout_reads_back_with_no_problems(synth_root):
    train = synth_root / "train"
    samples, report = read_train_dir(train, strict=True)
    hidden = [p for p in (train / "images").rglob(".*")]
    assert report.problems == {}, report.summary()
    assert hidden, "the generator should plant hidden ._* files"
    assert report.hidden_skipped == len(hidden), f"skipped {report.hidden_skipped}, planted {len(hidden)}"
    rows = _rows(train)
    assert len(people(samples)) == len(rows) == 24
    assert len(samples) == 24 * 7
    for person, group in people(samples).items():
        masks = Counter(s.mask for s in group)
        assert masks == {0: 5, 1: 1, 2: 1}, f"{person}: mask files {masks}"
    by_folder = {r["path"]: r for r in rows}
    for s in samples:
        row = by_folder[s.person]
        assert Path(s.path).is_file() and Path(s.path).is_absolute(), s.path
        assert s.person_id == row["id"] and s.age == int(row["age"]), (s, row)
        assert labels.GENDER_NAMES[s.gender] == row["gender"], (s, row)
        assert s.person == f"{row['id']}_{row['gender']}_{row['race']}_{row['age']}"
        assert not Path(s.path).name.startswith(".")
    exts = {Path(s.path).suffix for s in samples}
    assert {".jpg", ".jpeg", ".png"} <= {e.lower() for e in exts}, f"extensions read: {exts}"
    assert any(e != e.lower() for e in exts), f"no upper-case extension read: {exts}"
    assert sum(class_counts(samples).values()) == len(samples)


def test_missing_folder_and_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        read_train_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        read_train_dir(tmp_path)
    (tmp_path / "train.csv").write_text("id,gender,race,age,path\n")
    with pytest.raises(FileNotFoundError, match="images"):
        read_train_dir(tmp_path)


def test_csv_without_expected_columns(train_copy):
    (train_copy / "train.csv").write_text("id,sex,age\n1,male,20\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) gender,race,path"):
        read_train_dir(train_copy)


def _break(train_copy: Path, kind: str) -> str:
    """Plant one problem of ``kind``; return a path fragment the report must name."""
    rows = _rows(train_copy)
    images = train_copy / "images"
    if kind == "csv row without folder":
        shutil.rmtree(images / rows[0]["path"])
        return rows[0]["path"]
    if kind == "folder without csv row":
        _write_rows(train_copy, rows[1:])
        return rows[0]["path"]
    if kind == "missing image":
        folder = images / rows[1]["path"]
        victim = next(p for p in folder.iterdir() if p.name.lower().startswith("mask3"))
        victim.unlink()
        return rows[1]["path"]
    if kind == "duplicate image":
        folder = images / rows[2]["path"]
        src = next(p for p in folder.iterdir() if p.name.lower().startswith("normal"))
        twin = folder / ("normal.png" if src.suffix.lower() != ".png" else "normal.jpg")
        shutil.copy(src, twin)
        return rows[2]["path"]
    if kind == "unreadable age":
        rows[3]["age"] = "forty"
        _write_rows(train_copy, rows)
        return "forty"
    raise AssertionError(kind)


KINDS = ["csv row without folder", "folder without csv row", "missing image", "duplicate image", "unreadable age"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_problem_kind_is_reported_leniently(train_copy, kind):
    where = _break(train_copy, kind)
    samples, report = read_train_dir(train_copy, strict=False)
    assert set(report.problems) == {kind}, f"expected only {kind!r}, got {report.summary()}"
    assert len(report.problems[kind]) == 1 and report.count == 1, report.problems
    assert where in report.problems[kind][0], f"{where!r} not named in {report.problems[kind][0]!r}"
    assert kind in report.summary() and "1" in report.summary()
    expected = {"csv row without folder": 23 * 7, "folder without csv row": 23 * 7, "missing image": 24 * 7 - 1,
                "duplicate image": 24 * 7, "unreadable age": 23 * 7}[kind]
    assert len(samples) == expected, f"{kind}: {len(samples)} samples kept, expected {expected}"


@pytest.mark.parametrize("kind", KINDS)
def test_each_problem_kind_raises_in_strict_mode(train_copy, kind):
    where = _break(train_copy, kind)
    with pytest.raises(DataError) as e:
        read_train_dir(train_copy, strict=True)
    assert kind in str(e.value) and where in str(e.value), str(e.value)
    assert "1 problem" in str(e.value), str(e.value)


def test_several_problems_are_counted(train_copy):
    rows = _rows(train_copy)
    for r in rows[:3]:
        r["age"] = ""
    _write_rows(train_copy, rows)
    _, report = read_train_dir(train_copy)
    assert len(report.problems["unreadable age"]) == 3, report.problems
    assert "unreadable age: 3" in report.summary(), report.summary()


def test_fingerprint_is_stable_and_label_sensitive(synth_root, train_copy):
    a, _ = read_train_dir(synth_root / "train")
    b, _ = read_train_dir(train_copy)
    assert fingerprint(a) == fingerprint(b), "the same data in another folder must have the same fingerprint"
    assert fingerprint(list(reversed(a))) == fingerprint(a), "order must not matter"
    rows = _rows(train_copy)
    rows[0]["age"] = str(int(rows[0]["age"]) + 1)
    _write_rows(train_copy, rows)
    c, _ = read_train_dir(train_copy)
    assert fingerprint(c) != fingerprint(a), "a changed label must change the fingerprint"


def test_read_eval_info_keeps_columns_and_order(synth_root, tmp_path):
    header, rows = read_eval_info(synth_root / "eval" / "info.csv")
    assert header == ["ImageID", "ans"]
    assert len(rows) == 8 * 7
    answers = (synth_root / "eval" / "answers.csv").read_text().splitlines()[1:]
    assert [r["ImageID"] for r in rows] == [a.split(",")[0] for a in answers]
    extra = tmp_path / "info.csv"
    extra.write_bytes(b"\xef\xbb\xbfImageID,ans,note\r\nb.jpg,0,x\r\na.jpg,0,y\r\n")
    header, rows = read_eval_info(extra)
    assert header == ["ImageID", "ans", "note"] and [r["ImageID"] for r in rows] == ["b.jpg", "a.jpg"]
