"""The install is split by what it is for: the base is the serving runtime, each other command's
packages come with an extra, and the files that list them say the same thing."""
from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from maskdata.extras import EXTRAS, install_hint, missing

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TRAINING_STACK = {"torch", "torchvision", "timm", "onnx", "onnxscript", "tensorboard", "matplotlib", "triton",
                  "ray", "optuna", "cleanlab", "pyarrow", "moto", "selenium", "pytest"}


def _requirements(lines) -> set[str]:
    return {str(Requirement(ln)) for ln in lines}


def _file_requirements(path: Path) -> set[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return _requirements(ln for ln in lines if ln)


def _extra_distributions(extra: str) -> set[str]:
    """The distributions an extra names, following its ``mask-classifier[...]`` references."""
    names, todo, seen = set(), [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for req in map(Requirement, PROJECT["optional-dependencies"][current]):
            if canonicalize_name(req.name) == "mask-classifier":
                todo.extend(e for e in req.extras if e not in seen)
            else:
                names.add(canonicalize_name(req.name))
    return names


def test_serving_requirements_are_the_base_dependencies():
    assert _file_requirements(REPO / "serving" / "requirements.txt") == _requirements(PROJECT["dependencies"]), \
        "serving/requirements.txt (the bento's and the image's list) and pyproject's dependencies differ"


def test_the_base_install_has_no_training_stack():
    base = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert base & TRAINING_STACK == set(), f"the serving install pulls in {sorted(base & TRAINING_STACK)}"
    assert {"bentoml", "onnxruntime-gpu", "onnxruntime", "pillow", "numpy", "pydantic"} <= base, sorted(base)


def test_each_extra_brings_the_modules_its_commands_check_for():
    """maskdata.extras names modules; pyproject names distributions: every module a command checks
    for must come from a distribution its extra installs, or the hint would send users to the wrong extra."""
    providers = metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        dists = _extra_distributions(extra)
        for module in modules:
            by = {canonicalize_name(d) for d in providers.get(module, [])}
            assert by & dists, f"extra {extra!r} checks for {module!r} (from {sorted(by)}) but installs {sorted(dists)}"


def test_dev_is_every_extra_and_the_test_tools():
    dev = _extra_distributions("dev")
    for extra in set(PROJECT["optional-dependencies"]) - {"dev"}:
        assert _extra_distributions(extra) <= dev, f"make test would not install the {extra!r} extra"
    assert {"pytest", "selenium", "schemathesis"} <= dev, sorted(dev)


def test_the_version_has_one_source():
    import maskdata
    from serving.contract import INFO

    assert metadata.version("mask-classifier") == maskdata.__version__ == INFO["version"], \
        "pyproject reads the version from maskdata.__version__; reinstall (pip install -e .) after changing it"


def test_a_missing_extra_is_named_with_its_install_command():
    assert missing("train") == [], "the dev install has every extra"
    hint = install_hint("train", "mask-train", ["torch"])
    assert hint == "mask-train needs the 'train' extra (torch is not installed): pip install 'mask-classifier[train]'"
