"""One source for every default: parser defaults == dataclass fields, --config
YAML for mask-train and mask-export, RUN/config.yaml reruns a run, and OMP_WAIT_POLICY set by the
console-script entry point before torch is imported (``import training`` itself has no side effect)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export import parity
from export.cli import build_parser as export_parser
from export.cli import main as export_main
from training.cli import build_parser, main
from training.config import CLI_FIELDS, NEGATED, RunConfig, field_default

BIN = Path(sys.executable).parent
TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "32", "24", "--workers", "0", "--no-progress"]


def test_every_mask_train_default_is_its_field():
    defaults = vars(build_parser().parse_args([]))
    for dest, (sec, name) in CLI_FIELDS.items():
        want = field_default(sec, name)
        got = defaults[dest]
        if isinstance(want, tuple):
            got = tuple(int(v) for v in str(got).split(",") if v)
        assert got == want, f"--{dest.replace('_', '-')} defaults to {got!r}, its field {sec}.{name} to {want!r}"
    for dest, (sec, name) in NEGATED.items():
        assert defaults[dest] is (not field_default(sec, name)), f"--{dest} disagrees with {sec}.{name}"
    assert tuple(defaults["resize"]) == (field_default("data", "height"), field_default("data", "width"))
    for dest in ("mean", "std"):   # given as R,G,B text; None = ImageNet's or the pretrained weights' own
        assert defaults[dest] is None and field_default("data", dest) is None, f"--{dest} disagrees with data.{dest}"
    assert set(defaults) == {*CLI_FIELDS, *NEGATED, "resize", "config", "mean", "std", "list_models"}, \
        "an option without a field"


def test_parsed_defaults_build_the_dataclass_defaults(tmp_path):
    from training.cli import config_from_args

    cfg = config_from_args(build_parser().parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path)]))
    fresh = RunConfig(data=type(cfg.data)(data_dir=cfg.data.data_dir), train=type(cfg.train)(out=cfg.train.out))
    assert cfg == fresh, "the CLI's defaults and the dataclasses' defaults disagree"


def test_every_mask_export_default_is_its_constant():
    d = vars(export_parser().parse_args(["--checkpoint", "x.pt"]))
    assert (d["atol"], d["min_agreement"], d["max_images"]) == (
        parity.DEFAULT_ATOL, parity.DEFAULT_MIN_AGREEMENT, parity.DEFAULT_MAX_IMAGES), d


def _yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_config_file_sets_defaults_flags_win_and_is_written_back(synth_root, tmp_path):
    cfg = _yaml(tmp_path / "recipe.yaml",
                {"model": "tiny_cnn", "epochs": 3, "age_bins": [30, 58], "lr": 0.01, "weighted_sampler": True,
                 "loss": "focal:0.6,f1:0.4"})
    run = tmp_path / "run"
    assert main(["--config", str(cfg), "--data-dir", str(synth_root / "train"), "--out", str(run), *TINY,
                 "--epochs", "1"]) == 0
    rec = json.loads((run / "config.json").read_text())
    assert rec["train"]["epochs"] == 1, "a flag on the command line must win over the file"
    assert rec["data"]["age_bins"] == [30, 58] and rec["optim"]["lr"] == 0.01 and rec["data"]["sampler"] == "weighted"
    assert rec["loss"]["criterion"] == "focal:0.6,f1:0.4", "alias loss: -> criterion"
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["age_bins"] == [30, 58] and written["model"] == "tiny_cnn" and written["epochs"] == 1, written

    again = tmp_path / "again"
    assert main(["--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    rec2 = json.loads((again / "config.json").read_text())
    rec2["train"]["out"] = rec["train"]["out"]
    assert rec2 == rec, "mask-train --config RUN/config.yaml must rerun the same configuration"
    # train_img_s and seconds are timings; every other column must repeat
    def untimed(d):
        rows = list(csv.DictReader((d / "metrics.csv").open()))
        return [{k: v for k, v in r.items() if k not in ("train_img_s", "seconds")} for r in rows]
    a, b = untimed(run), untimed(again)
    assert a == b, f"the rerun's metrics differ:\n{a}\n{b}"


@pytest.mark.parametrize("tool", ["mask-train", "mask-export"])
def test_unknown_config_key_is_a_one_line_error(tmp_path, capsys, tool):
    cfg = _yaml(tmp_path / "bad.yaml", {"modle": "resnet18"})
    entry = main if tool == "mask-train" else export_main
    argv = ["--config", str(cfg)] + (["--checkpoint", "x.pt"] if tool == "mask-export" else [])
    assert entry(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'modle'" in err[0] and "valid keys:" in err[0], err
    assert ("model" if tool == "mask-train" else "atol") in err[0], err


def test_config_loader_reads_what_the_command_line_gave():
    from maskdata.yamlconfig import explicit_dests, parser_dests

    assert explicit_dests(build_parser, ["--epochs", "3", "--no-cache", "--resize", "32", "24"]) == \
        {"epochs", "no_cache", "resize"}, "only the options on the command line count as given"
    assert explicit_dests(build_parser, []) == set(), "defaults are not given options"
    assert explicit_dests(export_parser, ["--checkpoint", "a.pt", "b.pt", "--no-explain"]) == {"checkpoint", "explain"}
    dests = parser_dests(export_parser())
    assert {"checkpoint", "import_onnx", "tta", "int8_min_agreement", "config"} <= set(dests) and "help" not in dests, dests


def test_mask_export_takes_its_options_from_a_config_file(tmp_path, capsys):
    cfg = _yaml(tmp_path / "export.yaml", {"checkpoint": [str(tmp_path / "missing.pt")], "out": "m.onnx",
                                            "atol": 0.001})
    assert export_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err, f"the checkpoint from the config file was not used: {err}"


def _fresh_env() -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    return env


def torch_import_probe(run: str) -> str:
    """A ``python -c`` program that prints ``AT_TORCH_IMPORT <OMP_WAIT_POLICY>`` the moment ``import torch``
    starts, then runs ``run`` (code that starts an entry point)."""
    return ("import os, sys\n"
            "class Probe:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            print('AT_TORCH_IMPORT', os.environ.get('OMP_WAIT_POLICY', '<unset>'), flush=True)\n"
            "            sys.meta_path.remove(self)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Probe())\n" + run)


@pytest.mark.slow
def test_console_script_sets_omp_wait_policy_before_torch_is_imported():
    """Runs the installed ``mask-train`` script in a fresh interpreter and records the environment at
    the moment ``import torch`` starts."""
    probe = torch_import_probe("import runpy\n"
                               "sys.argv = ['mask-train', '--help']\n"
                               f"runpy.run_path({str(BIN / 'mask-train')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_fresh_env(), timeout=120)
    assert "AT_TORCH_IMPORT PASSIVE" in proc.stdout, f"rc {proc.returncode}\n{proc.stdout[:500]}\n{proc.stderr[-2000:]}"
    proc = subprocess.run([sys.executable, "-c", "import os, training; print(os.environ.get('OMP_WAIT_POLICY'))"],
                          capture_output=True, text=True, env=_fresh_env(), timeout=60)
    assert proc.stdout.strip() == "None", f"import training must not change the environment: {proc.stdout}"


@pytest.mark.slow
def test_mask_export_entry_point_sets_omp_wait_policy_before_torch_is_imported():
    """The entry point pyproject names for ``mask-export`` (read from pyproject.toml, so a stale installed
    script cannot hide a change) sets the policy before ``import torch`` starts, as ``mask-train``'s does."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["mask-export"].split(":")
    assert module.split(".")[0] == "export", f"mask-export must enter through export/, not {module}"
    probe = torch_import_probe("import importlib\n"
                               f"sys.exit(getattr(importlib.import_module({module!r}), {func!r})(['--help']))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_fresh_env(), timeout=120)
    assert proc.returncode == 0 and "usage: mask-export" in proc.stdout, f"rc {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "AT_TORCH_IMPORT PASSIVE" in proc.stdout, proc.stdout[:500]


def test_loader_workers_default_to_this_process_when_images_are_cached(monkeypatch):
    """Unset --workers: 0 with the decode cache (a worker process only competes with the training
    threads), CPUs - 1 (at most 4) when every epoch decodes again; a given value always wins."""
    import dataclasses

    from training.config import DataConfig

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cfg = build_parser().parse_args(["--data-dir", "x"])
    assert cfg.workers is None, f"--workers must default to unset, got {cfg.workers!r}"
    assert build_parser().parse_args(["--workers", "3"]).workers == 3, "--workers parses as an int"
    cached = DataConfig()
    assert cached.workers is None and cached.loader_workers == 0, cached.loader_workers
    assert dataclasses.replace(cached, cache=False).loader_workers == 4, "8 CPUs, no cache: CPUs - 1, at most 4"
    assert dataclasses.replace(cached, workers=2).loader_workers == 2, "a given --workers wins"
