"""docs/ARCHITECTURE.md's import rules, checked two ways.

1. Each package is imported, module by module, in a fresh interpreter that reports which top-level
   packages every module pulled in: ``maskdata`` never pulls torch; ``serving`` (its optional PyTorch
   backend aside) never pulls torch, ``training`` or ``export``; ``training`` never pulls ``export`` or
   ``serving``; ``demo.ready`` (the `make serve` banner) is standard library only.
2. Every Python file the Dockerfile COPYs (less .dockerignore) or ``bentoml build`` packages
   (bentofile.yaml ``include`` less ``exclude``) is parsed, and none imports torch, ``training``,
   ``export``, ``demo`` or ``bench`` — at module level or inside a function — since Docker has no
   daemon here. ``serving/torch_backend.py`` is left out of both on purpose (and so of this check).
3. No test imports ``bench`` (module level or inside a function): bench/ is the measuring harness,
   so tests run it as ``python -m bench.X`` commands, the way a user does, and judge what it writes.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pathspec
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision", "timm"}
PROJECT = {"maskdata", "training", "export", "serving", "bench", "demo"}
OPTIONAL_BACKEND = "serving.torch_backend"

_PROBE = """
import importlib, json, pkgutil, sys
pkg, skip = sys.argv[1], set(sys.argv[2:])
def top(mods):
    return sorted({m.split(".")[0] for m in mods})
before = set(sys.modules)
root = importlib.import_module(pkg)
pulled = {pkg: top(set(sys.modules) - before)}
names = []
if hasattr(root, "__path__"):
    names = sorted(m.name for m in pkgutil.walk_packages(root.__path__, pkg + ".")
                   if m.name not in skip and not m.name.endswith(".__main__"))
for name in names:
    before = set(sys.modules)
    importlib.import_module(name)
    pulled[name] = top(set(sys.modules) - before)
print(json.dumps(pulled))
"""


def imported_by(package: str, tmp_path: Path, skip: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """{module: top-level packages its import pulled in} for ``package`` and every module under it,
    imported in that order in one fresh interpreter (so each module lists only what is new)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASK_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    out = subprocess.run([sys.executable, "-c", _PROBE, package, *skip], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"importing {package} failed:\n{out.stderr[-3000:]}"
    return {name: set(mods) for name, mods in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _offenders(pulled: dict[str, set[str]], banned: set[str]) -> dict[str, list[str]]:
    return {name: sorted(mods & banned) for name, mods in pulled.items() if mods & banned}


# package, modules left out, what none of its modules may pull in
RULES = [
    ("maskdata", (), TORCH | PROJECT - {"maskdata"}),
    ("serving", (OPTIONAL_BACKEND,), TORCH | {"training", "export", "bench", "demo"}),
    ("training", (), {"export", "serving", "bench", "demo"}),
    ("export", (), {"serving", "bench", "demo"}),
]


@pytest.mark.parametrize("package,skip,banned", RULES, ids=[r[0] for r in RULES])
def test_package_imports_follow_the_architecture(package, skip, banned, tmp_path):
    pulled = imported_by(package, tmp_path, skip)
    assert len(pulled) >= 4, f"only {sorted(pulled)} found under {package}"
    assert _offenders(pulled, banned) == {}, f"{package}: modules that pull in what they must not"


def test_the_make_serve_banner_is_standard_library_only(tmp_path):
    pulled = imported_by("demo.ready", tmp_path)
    third_party = pulled["demo.ready"] - set(sys.stdlib_module_names) - {"demo"}
    assert third_party == set(), f"demo.ready pulls in {sorted(third_party)}"


def test_the_probe_sees_torch_where_it_is(tmp_path):
    """The check above can fail: the optional backend, left out of it, does pull torch and training."""
    pulled = imported_by(OPTIONAL_BACKEND, tmp_path)
    assert {"torch", "training"} <= pulled[OPTIONAL_BACKEND], pulled


# --- what the image and the bento carry ------------------------------------------------------------
def dockerfile_files() -> set[str]:
    """Repository files the Dockerfile COPYs into the image, less what .dockerignore drops."""
    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (REPO / ".dockerignore").read_text().splitlines())
    files: set[str] = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
        if not m:
            continue
        sources = [s for s in m.group(1).split()[:-1] if not s.startswith("--") and "$" not in s]
        for src in sources:
            path = REPO / src
            assert path.exists(), f"Dockerfile copies {src}, which does not exist"
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            files |= {p.relative_to(REPO).as_posix() for p in found}
    return {f for f in files if not ignore.match_file(f)}


def bento_files() -> set[str]:
    """Repository files `bentoml build` packages: bentofile.yaml's include less its exclude."""
    cfg = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    include = pathspec.PathSpec.from_lines("gitwildmatch", cfg["include"])
    exclude = pathspec.PathSpec.from_lines("gitwildmatch", cfg.get("exclude", []))
    files = {p.relative_to(REPO).as_posix() for p in REPO.rglob("*")
             if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts}
    return {f for f in files if include.match_file(f) and not exclude.match_file(f)}


def import_lines(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in the file, module level or nested."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def imports_of(path: Path) -> set[str]:
    """Top-level names of every import in the file, module level or nested (lazy imports count)."""
    return {name for _, name in import_lines(path)}


@pytest.mark.parametrize("packaged", [dockerfile_files, bento_files], ids=["dockerfile", "bentofile"])
def test_packaged_files_never_import_torch_or_training(packaged):
    files = packaged()
    py = sorted(f for f in files if f.endswith(".py"))
    assert {"serving/service.py", "serving/predictor.py", "maskdata/labels.py"} <= set(py), py
    assert "serving/torch_backend.py" not in files, "the optional PyTorch backend must stay out of it"
    assert not any(f.startswith(("demo/", "training/", "export/")) for f in files), sorted(files)
    banned = TORCH | {"training", "export", "demo", "bench"}
    bad = {f: sorted(imports_of(REPO / f) & banned) for f in py if imports_of(REPO / f) & banned}
    assert bad == {}, f"{packaged.__name__}: packaged files that import torch or training"


def test_the_import_parser_sees_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from training.checkpoint import load_checkpoint\n    import torch.nn\n")
    assert imports_of(src) == {"os", "training", "torch"}


def bench_imports(paths: list[Path]) -> list[str]:
    """``file:line: imports bench`` for every import of bench in ``paths``."""
    def shown(p: Path) -> str:
        return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else str(p)

    return [f"{shown(p)}:{line}: imports {name}" for p in paths for line, name in import_lines(p) if name == "bench"]


def test_tests_never_import_bench():
    tests = sorted((REPO / "tests").glob("*.py"))
    assert len(tests) >= 10 and Path(__file__) in tests, [t.name for t in tests]
    bad = bench_imports(tests)
    assert bad == [], ("tests must run bench/ as `python -m bench.X` subprocesses, never import it:\n"
                       + "\n".join(bad))


def test_the_bench_rule_sees_every_form(tmp_path):
    (tmp_path / "t.py").write_text("import os\nimport bench\nfrom bench.loadgen import run_load\n\n"
                                   "def f():\n    import bench.report as r\n    from bench import common\n"
                                   "    x = 'import bench'  # a string is not an import\n")
    found = bench_imports([tmp_path / "t.py"])
    assert [f.split(":")[1] for f in found] == ["2", "3", "6", "7"], found
