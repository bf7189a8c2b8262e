"""mask-data synth --mask-swap: swapped mask files and the per-field record of every wrong label."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskdata import labels, synth
from maskdata.cli import main


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "synth_summary.json"}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("swaps")
    kw = dict(people=8, eval_people=1, seed=5, label_noise=0.3, workers=1)
    plain = synth.generate(root / "plain", **kw)
    swapped = synth.generate(root / "swapped", mask_swap=0.45, **kw)
    return root / "plain", plain, root / "swapped", swapped


def test_swaps_write_each_picture_under_the_other_name(pair):
    plain_root, _, root, summary = pair
    masks = summary["wrong_labels"]["mask"]
    assert masks and len(masks) % 2 == 0, masks
    for m in masks:
        assert m["recorded"] != m["true"], m
        assert m["recorded"] == labels.MASK_NAMES[labels.mask_from_filename(m["image"])], m
        here = root / "train" / "images" / m["person"] / m["image"]
        partner = next(o for o in masks if o["person"] == m["person"] and o["image"] != m["image"])
        drawn_as = plain_root / "train" / "images" / m["person"] / partner["image"]
        same_name = plain_root / "train" / "images" / m["person"] / m["image"]
        # the picture under this name is the one the partner's name holds without swaps (up to encoding)
        assert np.abs(_pixels(here) - _pixels(drawn_as)).mean() < 4, m
        assert np.abs(_pixels(here) - _pixels(same_name)).mean() > 1, f"{m}: picture not swapped"
    swapped_people = {m["person"] for m in masks}
    a, b = _files(plain_root), _files(root)
    assert a.keys() == b.keys()
    changed = {k for k in a if a[k] != b[k]}
    assert all(Path(k).parent.name in swapped_people for k in changed), "a swap touched another person"
    assert a["train/train.csv"] == b["train/train.csv"] and a["eval/answers.csv"] == b["eval/answers.csv"]


def test_every_wrong_label_is_recorded_per_field(pair):
    plain_root, plain, root, summary = pair
    recorded = json.loads((root / "synth_summary.json").read_text())
    assert recorded["wrong_labels"] == summary["wrong_labels"] and recorded["mask_swap"] == 0.45
    wrong = summary["wrong_labels"]
    noisy = set(summary["noisy_label_folders"])
    assert noisy and {w["person"] for w in wrong["gender"] + wrong["age"]} == noisy, (wrong, noisy)
    for w in wrong["gender"]:
        assert w["recorded"] != w["true"] and f"_{w['recorded']}_" in w["person"], w
    for w in wrong["age"]:
        assert labels.age_group(w["recorded_age"]) != labels.age_group(w["true_age"]), w
        assert w["person"].endswith(f"_{w['recorded_age']}"), w
    plain_recorded = json.loads((plain_root / "synth_summary.json").read_text())
    assert "wrong_labels" not in plain_recorded and "mask_swap" not in plain_recorded, \
        "at rate 0 the summary file keeps the bytes it had before swaps existed"
    assert plain["wrong_labels"]["mask"] == [] and plain["wrong_labels"]["gender"] == wrong["gender"]


def test_cli_mask_swap(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--people", "6", "--eval-people", "0", "--workers", "1",
                 "--mask-swap", "0.45", "--seed", "5"]) == 0
    assert "people with two mask files swapped" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "t"), "--people", "2", "--mask-swap", "0.6"]) == 2
    assert "mask swap rate must be in [0, 0.5)" in capsys.readouterr().err
