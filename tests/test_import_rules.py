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
4. Every ``.py`` file of the project's packages is parsed and every ``import`` / ``from ... import`` in it,
   at module level or inside a function, becomes an edge of a module graph: it has no cycle, and neither
   has the graph of the top-level packages (``training -> export -> training`` through a lazy import is
   one), so no module's import ever waits on a module that imports it back.
"""
from __future__ import annotations

import ast
import itertools
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
PROJECT = {"maskdata", "training", "export", "serving", "workflow", "bench", "demo"}
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
    ("serving", (OPTIONAL_BACKEND,), TORCH | {"training", "export", "workflow", "bench", "demo"}),
    ("training", (), {"export", "serving", "workflow", "bench", "demo"}),
    ("export", (), {"serving", "workflow", "bench", "demo"}),
    ("workflow", (), TORCH | {"bench", "demo"}),   # its steps import their stage when they run
]


@pytest.mark.parametrize("package,skip,banned", RULES, ids=[r[0] for r in RULES])
def test_package_imports_follow_the_architecture(package, skip, banned, tmp_path):
    pulled = imported_by(package, tmp_path, skip)
    assert len(pulled) >= (2 if package == "workflow" else 4), f"only {sorted(pulled)} found under {package}"
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
    """Repository files the Dockerfile COPYs into the image (its last stage: earlier stages reach it only
    through ``COPY --from``), less what .dockerignore drops."""
    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (REPO / ".dockerignore").read_text().splitlines())
    files: set[str] = set()
    lines = (REPO / "Dockerfile").read_text().splitlines()
    last_from = max(i for i, line in enumerate(lines) if re.match(r"\s*FROM\s", line))
    for line in lines[last_from:]:
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


# --- no import cycles, lazy imports included ---------------------------------------------------------
CYCLE_PACKAGES = ("maskdata", "training", "export", "serving", "workflow", "bench", "demo")


def project_modules(root: Path = REPO, packages=CYCLE_PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py under ``packages`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name a ``from`` import names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: project modules it imports anywhere in its file}. ``import a.b`` and ``from a import b``
    point at ``a.b`` when that is a module, else at ``a``; the parent packages Python initialises on the
    way are not edges (every submodule would otherwise be in a cycle with its package's ``__init__``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, path.name == "__init__.py")
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {_owner(t, modules) for t in targets if _owner(t, modules)} - {name}
    return graph


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """``target`` or its nearest enclosing module that is a project file (``a.b.c`` → ``a.b``), or None."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []
    counter = itertools.count()

    def visit(v: str) -> None:   # recursion depth is bounded by the module count (a few hundred)
        index[v] = low[v] = next(counter)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, set(c)) for c in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, by breadth-first search inside it."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    top = lambda m: m.split(".")[0]  # noqa: E731
    out: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        out.setdefault(top(src), set()).update(top(d) for d in dsts if top(d) != top(src))
    return out


def test_no_import_cycles_between_modules():
    modules = project_modules()
    assert len(modules) >= 40, f"only {len(modules)} modules found under {CYCLE_PACKAGES}"
    cycles = find_cycles(import_graph(modules))
    assert cycles == [], f"import cycles (lazy imports included): {'; '.join(' -> '.join(c) for c in cycles)}"


def test_no_import_cycles_between_packages():
    modules_graph = import_graph(project_modules())
    cycles = find_cycles(package_graph(modules_graph))
    witnesses = []   # the module imports behind each package edge of a cycle, so the message says where
    for cycle in cycles:
        for a, b in zip(cycle, cycle[1:]):
            edge = sorted(f"{m} -> {d}" for m, ds in modules_graph.items() if m.split(".")[0] == a
                          for d in ds if d.split(".")[0] == b)
            witnesses.append(f"{a} -> {b} ({', '.join(edge[:3])})")
    assert cycles == [], (f"package import cycles (lazy imports included): "
                          f"{'; '.join(' -> '.join(c) for c in cycles)}; through {'; '.join(witnesses)}")


def test_the_cycle_finder_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("def g():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.sub.c import g\n")
    modules = project_modules(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.sub.c"}, graph
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]], find_cycles(graph)
    assert find_cycles({"x": {"y"}, "y": set()}) == [], "an acyclic graph has no cycle"


# --- training/'s own layers ----------------------------------------------------------------------------
# Each layer may import the ones after it, never one before it: the entry points (entry, __main__) start
# either command; tuning (mask-tune) drives mask-train runs through its parser; mask-train (cli) runs the
# loop; the loop calls distillation for soft targets; distillation builds on the core (models, data,
# augment, losses, soft targets, optimizers, checkpoints, precision, DDP).
TRAINING_LAYERS = (
    ("entry points", {"training.entry", "training.__main__"}),
    ("tuning", {"training.tuning"}),
    ("mask-train", {"training.cli"}),
    ("loop", {"training.loop"}),
    ("distillation", {"training.distillation"}),
    ("core", {"training"}),   # every other module of training/
)


def training_layer(module: str) -> int:
    for rank, (_, members) in enumerate(TRAINING_LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return rank
    raise AssertionError(f"{module} is in no layer")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import (lazy ones too) of a training module by one in a lower layer."""
    out = []
    for src, dsts in sorted(graph.items()):
        if not src.startswith("training"):
            continue
        for dst in sorted(d for d in dsts if d.startswith("training")):
            if training_layer(dst) < training_layer(src):
                out.append(f"{src} ({TRAINING_LAYERS[training_layer(src)][0]}) imports {dst} "
                           f"({TRAINING_LAYERS[training_layer(dst)][0]})")
    return out


def test_training_subpackages_import_only_downwards():
    modules = project_modules(packages=("training",))
    assert {"training.loop.trainer", "training.tuning.run", "training.distillation.teacher"} <= set(modules), \
        sorted(modules)
    found = layer_violations(import_graph(modules))
    assert found == [], "training/ layers imported upwards (docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_the_layer_rule_names_an_upward_import():
    graph = {"training.models": {"training.loop.engine"}, "training.loop.trainer": {"training.models"},
             "training.distillation.pseudo": {"training.tuning.space"}}
    assert layer_violations(graph) == [
        "training.distillation.pseudo (distillation) imports training.tuning.space (tuning)",
        "training.models (core) imports training.loop.engine (loop)"], layer_violations(graph)
