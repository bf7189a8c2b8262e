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


@pytest.mark.parametrize("cpus, expected", [(None, 1), (1, 1), (2, 2), (6, 6), (64, JOB_DEFAULTS.max_workers)])
def test_decode_workers_are_one_per_core_up_to_the_cap(cpus, expected, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert JOB_DEFAULTS.workers() == expected, f"{cpus} CPUs should give {expected} decode workers"


JOB_OPTIONS = {"batch_size", "workers", "worker_kind", "on_error", "model", "decode_nice", "prefetch"}


def _literal_defaults(path: Path) -> list[str]:
    """``name=<literal>`` defaults of job options in one file: function parameters, dataclass fields
    and ``add_argument("--name", default=<literal>)`` (None, "no default", is allowed)."""
    import ast

    def literal(node) -> bool:
        return isinstance(node, ast.Constant) and node.value is not None

    found, tree = [], ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            found += [f"{path.name}:{d.lineno} {node.name}({a.arg}=...)" for a, d in pairs
                      if a.arg in JOB_OPTIONS and literal(d)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in JOB_OPTIONS and node.value is not None and literal(node.value):
                found.append(f"{path.name}:{node.lineno} {node.target.id} = ...")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = node.args[0].value if isinstance(node.args[0], ast.Constant) else ""
            name = str(flag).lstrip("-").replace("-", "_")
            found += [f"{path.name}:{k.value.lineno} {flag} default=..." for k in node.keywords
                      if k.arg == "default" and name in JOB_OPTIONS and literal(k.value)]
    return found


def test_job_option_defaults_are_written_only_in_the_settings():
    """mask-submit's parser, both engines, the archive job and the workflow take the batch size, decode
    workers, worker kind, error policy and model from serving/settings.py (JOB_DEFAULTS, Settings),
    never from a number or a name written again beside them."""
    files = [p for d in ("serving", "workflow") for p in sorted((ROOT / d).glob("*.py")) if p.name != "settings.py"]
    found = [hit for p in files for hit in _literal_defaults(p)]
    assert not found, f"job option defaults written outside serving/settings.py: {found}"
    planted = ROOT / "serving" / "settings.py"   # the one place they are written: the scan must see them
    assert _literal_defaults(planted), "the scan finds nothing even in settings.py: it checks nothing"


def _mask_values_set_in_images() -> list[tuple[str, str, str]]:
    """(file, MASK_ name, value) for every MASK_* value bentofile.yaml's ``envs`` or the Dockerfile's
    ``ENV`` sets."""
    import yaml

    found = [("bentofile.yaml", e["name"], str(e["value"]))
             for e in yaml.safe_load((ROOT / "bentofile.yaml").read_text()).get("envs") or []]
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            found += [("Dockerfile", *m.groups()) for m in re.finditer(r"(\w+)=(\S+)", line)]
    return [f for f in found if f[1].startswith("MASK_")]


def test_the_images_set_a_mask_variable_only_to_change_its_default():
    """A MASK_* value in bentofile.yaml or the Dockerfile is there to change a default, never to restate
    it (a restated value silently stops following the settings)."""
    found = _mask_values_set_in_images()
    assert ("Dockerfile", "MASK_TASKS_DIR", "/var/lib/mask-classifier/tasks") in found, \
        f"the Dockerfile's task volume setting should be seen: {found}"
    defaults = Settings.from_env({}).model_dump()
    for where, name, value in found:
        field = name[len("MASK_"):].lower()
        assert field in defaults, f"{where} sets {name}, which is no setting"
        assert Settings.from_env({name: value}).model_dump()[field] != defaults[field], \
            f"{where} sets {name}={value}, the settings' default already"


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
