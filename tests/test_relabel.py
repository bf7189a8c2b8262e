"""Corrections CSV: every error is one line naming the culprit, no-op corrections are reported, and a
correction reaches the training labels, the run config and the checkpoint's data fingerprint."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from maskdata import labels
from maskdata.cli import main as data_main
from maskdata.layout import fingerprint, read_train_dir
from maskdata.relabel import AGE_OF_GROUP, file_digest


@pytest.fixture(scope="module")
def layout(synth_root):
    samples, _ = read_train_dir(synth_root / "train")
    by_person: dict[str, list] = {}
    for s in samples:
        by_person.setdefault(s.person, []).append(s)
    return samples, by_person


def _write(tmp_path: Path, rows: list[tuple], name: str = "corrections.csv") -> Path:
    p = tmp_path / name
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["person", "image", "field", "value", "note"])
        w.writerows([(*r, "reviewed") for r in rows])
    return p


def test_corrections_change_the_labels_read(synth_root, layout, tmp_path):
    samples, by_person = layout
    a, b, c = sorted(by_person)[:3]
    s_a, s_b = by_person[a][0], by_person[b][0]
    other_group = labels.AGE_NAMES[(labels.age_group(s_b.age) + 1) % 3]
    mask1 = next(s for s in by_person[c] if Path(s.path).name.lower().startswith("mask1"))
    path = _write(tmp_path, [(a, "", "gender", labels.GENDER_NAMES[1 - s_a.gender]),
                             (b, "", "age", other_group),
                             (c, "mask1", "mask", "not_wear"),
                             (c, "", "age", "77")])
    fixed, report = read_train_dir(synth_root / "train", relabel=path)
    assert [s.path for s in fixed] == [s.path for s in samples], "order and images unchanged"
    new = {s.path: s for s in fixed}
    assert all(new[s.path].gender == 1 - s_a.gender for s in by_person[a]), "gender fixes all 7 images"
    assert all(labels.age_group(new[s.path].age) == labels.AGE_NAMES.index(other_group) for s in by_person[b])
    assert new[by_person[b][0].path].age == AGE_OF_GROUP[labels.AGE_NAMES.index(other_group)]
    assert new[mask1.path].mask == 2 and sum(new[s.path].mask != s.mask for s in samples) == 1, "one image's mask"
    assert all(new[s.path].age == 77 for s in by_person[c])
    assert (report.relabel_changed, report.relabel_notes, report.relabel_digest) == (4, [], file_digest(path))
    assert fingerprint(fixed, report.relabel_digest) != fingerprint(samples)
    assert fingerprint(fixed, report.relabel_digest).endswith("+relabel:" + file_digest(path))


def test_a_correction_that_changes_nothing_is_reported(synth_root, layout, tmp_path, capsys):
    _, by_person = layout
    a = sorted(by_person)[0]
    s = by_person[a][0]
    path = _write(tmp_path, [(a, "", "gender", labels.GENDER_NAMES[s.gender]),
                             (a, "", "age", labels.AGE_NAMES[labels.age_group(s.age)]),
                             (a, "normal", "mask", "not_wear")])
    _, report = read_train_dir(synth_root / "train", relabel=path)
    assert report.relabel_changed == 0 and len(report.relabel_notes) == 3, report.relabel_notes
    assert all("changes nothing" in n and a in n for n in report.relabel_notes), report.relabel_notes
    assert data_main(["check", str(synth_root / "train"), "--relabel", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 changed labels, 3 changed nothing" in out and f"{path}:2: changes nothing" in out, out


@pytest.mark.parametrize("row,match", [
    (("nobody_here", "", "gender", "male"), "unknown person 'nobody_here'"),
    (("{p}", "mask9", "mask", "wear"), "unknown image 'mask9'"),
    (("{p}", "", "hair", "long"), "unknown field 'hair'"),
    (("{p}", "", "gender", "robot"), "unknown gender 'robot'"),
    (("{p}", "", "age", "old"), "unknown age 'old'"),
    (("{p}", "", "age", "0"), "unknown age '0'"),
    (("{p}", "mask1", "mask", "half"), "unknown mask state 'half'"),
    (("{p}", "mask1", "gender", "male"), "gender belongs to the person"),
    (("{p}", "", "mask", "wear"), "a mask correction names its image"),
    (("", "", "gender", "male"), "empty person"),
])
def test_every_corrections_error_is_one_line_naming_it(synth_root, layout, tmp_path, capsys, row, match):
    person = sorted(layout[1])[0]
    path = _write(tmp_path, [tuple(v.format(p=person) for v in row)])
    with pytest.raises(ValueError, match=match):
        read_train_dir(synth_root / "train", relabel=path)
    assert data_main(["check", str(synth_root / "train"), "--relabel", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{path}:2" in err and match in err and err.count("\n") == 1, err


def test_duplicate_missing_and_malformed_files(synth_root, layout, tmp_path, capsys):
    person = sorted(layout[1])[0]
    dup = _write(tmp_path, [(person, "", "gender", "male"), (person, "", "gender", "female")])
    with pytest.raises(ValueError, match=r"corrected twice \(also .*:2\)"):
        read_train_dir(synth_root / "train", relabel=dup)
    bad = tmp_path / "bad.csv"
    bad.write_text("person,field\nx,gender\n")
    assert data_main(["check", str(synth_root / "train"), "--relabel", str(bad)]) == 2
    assert "missing column(s) image,value" in capsys.readouterr().err
    assert data_main(["check", str(synth_root / "train"), "--relabel", str(tmp_path / "none.csv")]) == 2
    assert "corrections file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_mask_train_relabel_reaches_labels_config_and_fingerprint(synth_root, layout, tmp_path, capsys):
    from training.checkpoint import load_checkpoint
    from training.cli import main as train_main

    samples, by_person = layout
    # every person corrected to male: the validation labels prove what training read
    path = _write(tmp_path, [(p, "", "gender", "male") for p in sorted(by_person)])
    run = tmp_path / "run"
    assert train_main(["--data-dir", str(synth_root / "train"), "--out", str(run), "--model", "tiny_cnn",
                       "--epochs", "1", "--batch-size", "16", "--resize", "32", "24", "--workers", "0",
                       "--no-progress", "--no-tensorboard", "--relabel", str(path)]) == 0
    digest = file_digest(path)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["data"]["relabel"], cfg["data"]["relabel_digest"]) == (str(path.resolve()), digest), cfg["data"]
    truth = list(csv.DictReader(open(run / "val_predictions.csv")))
    assert truth and all(labels.decode(int(r["true"]))[1] == 0 for r in truth), "val labels are not corrected"
    ck = load_checkpoint(run / "best.pt")
    fixed, _ = read_train_dir(synth_root / "train", relabel=path)
    assert ck["data_fingerprint"] == fingerprint(fixed, digest), ck["data_fingerprint"]
    assert ck["data_fingerprint"].endswith(f"+relabel:{digest}") and ck["config"]["data"]["relabel_digest"] == digest

    from export.cli import main as export_main
    from maskdata.artifact import read_metadata

    onnx_path = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(run / "best.pt"), "--out", str(onnx_path)]) == 0
    sources = read_metadata(onnx_path).sources
    assert sources[0]["fingerprint"] == ck["data_fingerprint"], "the exported model must say its labels were corrected"

    path.write_text(path.read_text() + f"{sorted(by_person)[0]},,age,30\n")   # the file changes under the run
    assert train_main(["--resume", str(run / "last.pt"), "--epochs", "2", "--no-progress"]) == 2
    assert "changed since the run was configured" in capsys.readouterr().err
