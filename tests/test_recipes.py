"""Every shipped recipe (recipes/*.yaml): its keys are mask-train dest names, it validates, and one
optimizer step runs on tiny synthetic data with a test-only override of size, epochs and pretrained.

The runs go through ``mask-train --config RECIPE`` itself (flags on the command line win); the
defaults check also turns a recipe into ``--key value`` flags, an independent reading of the file.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from training.cli import build_parser, config_from_args
from training.cli import main as train_main

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
# test-only: small input, one epoch, one holdout split, no weights (none offline), one batch per epoch
OVERRIDE = ["--resize", "64", "48", "--epochs", "1", "--folds", "0", "--batch-size", "64", "--workers", "0",
            "--amp", "off", "--no-progress", "--no-tensorboard"]


def _options() -> dict:
    # argparse has no public map from dest to option string; _actions is the documented-by-use way
    return {a.dest: a for a in build_parser()._actions if a.option_strings}


def recipe_argv(path: Path) -> list[str]:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(recipe, dict) and recipe, f"{path.name}: not a mapping"
    options = _options()
    unknown = sorted(set(recipe) - set(options))
    assert not unknown, f"{path.name}: unknown key(s) {unknown}; valid: mask-train's dest names"
    argv: list[str] = []
    for key, value in recipe.items():
        flag = options[key].option_strings[-1]
        if isinstance(value, bool):
            assert options[key].nargs == 0, f"{path.name}: {key} is not a switch"
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, *map(str, value)] if options[key].nargs else [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def test_recipes_exist_and_name_their_source():
    names = {p.stem for p in RECIPES}
    assert {"cpu_demo", "resnext50_focal_f1_kfold", "efficientnet_b0_label_smoothing",
            "multihead_efficientnet_b3"} <= names, names
    for p in RECIPES:
        head = [line for line in p.read_text().splitlines() if line.startswith("#")]
        text = " ".join(head)
        assert "Source" in text or "source" in text, f"{p.name}: no comment naming its source"
        assert "score not published" in text.lower() or "F1 0." in text, f"{p.name}: give the score or say none"


def test_cpu_demo_recipe_is_mask_train_default(tmp_path):
    base = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    recipe = config_from_args(build_parser().parse_args(base + recipe_argv(RECIPES[0].with_name("cpu_demo.yaml"))))
    default = config_from_args(build_parser().parse_args(base))
    assert recipe == default, "recipes/cpu_demo.yaml must stay what `make serve` trains (the defaults)"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from maskdata.synth import generate

    root = tmp_path_factory.mktemp("recipe_data")
    generate(root, people=8, eval_people=0, seed=1)
    return root / "train"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if "resnext101" in p.stem else p
                                  for p in RECIPES], ids=lambda p: p.stem)  # resnext101: ~30 s on 2 CPUs
def test_recipe_runs_one_optimizer_step(path, tiny_data, tmp_path):
    out = tmp_path / "run"
    recipe_argv(path)   # every key is a mask-train option
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe["pretrained"] = False   # test-only: no weights offline; a switch has no --no- form on the command line
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    argv = ["--config", str(copy), "--data-dir", str(tiny_data), "--out", str(out), *OVERRIDE]
    assert train_main(argv) == 0, f"{path.name} failed: {argv}"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0, rows
    assert (out / "best.pt").is_file()


def test_unknown_recipe_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: plain_cnn\nlearning_rate: 0.1\n")
    with pytest.raises(AssertionError, match=r"unknown key\(s\) \['learning_rate'\]"):
        recipe_argv(bad)
    assert train_main(["--config", str(bad), "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'learning_rate'" in err[0] and "valid keys:" in err[0], err
