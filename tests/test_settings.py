"""serving/settings.py is the one source of the serving defaults: its documented table matches its
fields, mask-submit's flags and the bento take their defaults from it, and a changed environment is
seen without re-importing anything."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import serving.settings as settings_module
from serving.settings import JOB_DEFAULTS, Settings, env_name, get_settings

ROOT = Path(__file__).resolve().parent.parent
# Defaults the table describes in words rather than as a value (all "empty" in the settings).
IN_WORDS = {"providers": "auto", "checkpoint": "–", "api_key": "–", "uncertain_below": "the artifact's",
            "aspect": "– (as recorded)", "tasks_dir": "– (a temp folder)"}


def documented_table() -> dict[str, str]:
    """{field: default cell} from the settings module's docstring table."""
    rows = re.findall(r"^\| ``(MASK_\w+)`` \| (.+?) \| .+ \|$", settings_module.__doc__, flags=re.M)
    return {name[len("MASK_"):].lower(): cell.strip() for name, cell in rows}


def test_the_documented_table_lists_every_field_once():
    table = documented_table()
    fields = set(Settings.model_fields)
    assert set(table) == fields, (f"documented but not a field: {sorted(set(table) - fields)}; "
                                  f"a field without a row: {sorted(fields - set(table))}")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_the_documented_default_is_the_fields_default(field):
    cell = documented_table()[field]
    default = Settings.from_env({}).model_dump()[field]
    if field in IN_WORDS:
        assert cell == IN_WORDS[field] and not default, f"{env_name(field)}: documented {cell!r}, default {default!r}"
        return
    literal = re.fullmatch(r"``([^`]+)``", cell)
    assert literal, f"{env_name(field)}: the table's default {cell!r} should be one ``value``"
    value = os.path.expanduser(literal.group(1))
    parsed = Settings.from_env({env_name(field): value}).model_dump()[field]
    assert parsed == default, f"{env_name(field)}: the table says {value!r} (= {parsed!r}), the field says {default!r}"


def test_get_settings_sees_a_changed_environment(monkeypatch):
    """Nothing is frozen at import: the next call reads the environment again."""
    monkeypatch.setenv("MASK_MAX_FILES", "3")
    assert get_settings().max_files == 3
    monkeypatch.setenv("MASK_MAX_FILES", "5")
    assert get_settings().max_files == 5
    monkeypatch.setenv("MASK_MAX_FILES", "zero")
    with pytest.raises(ValueError, match="MASK_MAX_FILES='zero' is not an integer"):
        get_settings()


def test_mask_submit_flags_default_to_the_settings():
    from serving.local_engine import SubmitOptions
    from serving.submit_cli import build_parser

    args = build_parser().parse_args(["--info", "i.csv", "--images", "d", "--out", "o.csv"])
    assert (args.batch_size, args.workers, args.worker_kind, args.on_error) == \
        (JOB_DEFAULTS.batch_size, JOB_DEFAULTS.workers(), JOB_DEFAULTS.worker_kind, JOB_DEFAULTS.on_error), args
    assert args.model == Settings.model_fields["model"].default, args.model
    opts = SubmitOptions()
    assert (opts.batch_size, opts.workers, opts.worker_kind, opts.on_error) == \
        (JOB_DEFAULTS.batch_size, JOB_DEFAULTS.workers(), JOB_DEFAULTS.worker_kind, JOB_DEFAULTS.on_error), opts


@pytest.mark.parametrize("cpus, expected", [(None, 1), (1, 1), (2, 2), (6, 6), (64, JOB_DEFAULTS.max_workers)])
def test_decode_workers_are_one_per_core_up_to_the_cap(cpus, expected, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert JOB_DEFAULTS.workers() == expected, f"{cpus} CPUs should give {expected} decode workers"


def test_the_ray_engine_defaults_to_the_same_grid():
    import inspect

    from serving.ray_engine import run_ray_submission

    params = inspect.signature(run_ray_submission).parameters
    assert params["batch_size"].default == JOB_DEFAULTS.batch_size, "the Ray grid must be the local one"
    assert params["on_error"].default == JOB_DEFAULTS.on_error


def test_bentofile_does_not_repeat_a_default():
    """An environment value in bentofile.yaml is there to change a default, never to restate it (a
    restated value silently stops following the settings)."""
    import yaml

    envs = yaml.safe_load((ROOT / "bentofile.yaml").read_text()).get("envs") or []
    defaults = Settings.from_env({}).model_dump()
    for env in envs:
        name = env["name"]
        if not name.startswith("MASK_"):
            continue
        field = name[len("MASK_"):].lower()
        value = Settings.from_env({name: str(env["value"])}).model_dump()[field]
        assert value != defaults[field], f"bentofile.yaml sets {name}={env['value']}, the settings' default already"


def test_schema_example_limits_are_the_defaults():
    from serving.schemas import ModelInfo

    example = ModelInfo.model_config["json_schema_extra"]["example"]["limits"]
    defaults = Settings.from_env({}).model_dump()
    assert example == {k: defaults[k] for k in example}, example


def test_an_explicit_mapping_ignores_the_process_environment(monkeypatch):
    monkeypatch.setenv("MASK_MAX_FILES", "4")
    assert Settings.from_env({}).max_files == Settings.model_fields["max_files"].default, \
        "from_env(mapping) must read the mapping only, not os.environ"
    assert Settings.from_env({"MASK_MAX_FILES": "7"}).max_files == 7
    assert Settings.from_env().max_files == 4, "from_env() with no mapping reads the environment"


# --- one read of the environment per process ------------------------------------------------------
ENTRY_POINTS = {"serving/service.py": 1, "serving/submit_cli.py": 1}   # the service's declaration, mask-submit's main


def test_only_the_entry_points_read_the_settings_from_the_environment():
    """get_settings() (or Settings.from_env() without a mapping) is called where a process starts,
    once; every other module gets its Settings handed down or uses Settings.defaults()."""
    reads = {}
    for package in ("serving", "export", "training", "maskdata"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "serving/settings.py":
                continue
            code = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
            n = len(re.findall(r"\bget_settings\(\)|\bSettings\.from_env\(\)", code))
            n += len(re.findall(r"os\.(?:environ|getenv)\W+[\"']MASK_", code))
            if n:
                reads[rel] = n
    assert reads == ENTRY_POINTS, f"MASK_* read from the environment at {reads}; expected only {ENTRY_POINTS}"


def test_importing_the_service_reads_nothing_and_declaring_it_reads_once(tmp_path):
    """A bad MASK_* value does not break `import serving.service`; the first access of
    MaskClassifier (what `bentoml serve` does) reads the environment and reports it in one line."""
    import subprocess
    import sys

    code = ("import serving.service as s\n"
            "print('imported')\n"
            "try:\n    s.MaskClassifier\nexcept ValueError as e:\n    print('declared:', e)\n")
    env = {**os.environ, "MASK_MAX_FILES": "many", "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert lines[:1] == ["imported"], (out.stdout, out.stderr[-2000:])
    assert lines[1:] == ["declared: MASK_MAX_FILES='many' is not an integer"], (out.stdout, out.stderr[-2000:])


def test_settings_travel_as_field_values_without_the_api_key():
    """to_fields() is what a job process (task.json) and a Ray actor get; from_fields() reads it back."""
    sent = Settings.from_fields({"max_files": 9, "threads": 2, "api_key": "secret", "providers": ("CPUExecutionProvider",)})
    fields = sent.to_fields()
    assert "api_key" not in fields and "secret" not in str(fields), fields
    back = Settings.from_fields(fields)
    assert back == sent.replace(api_key=""), (back, sent)
