"""The Dockerfile, bentofile.yaml and the serving lock agree, read as files (fast; tests/test_image.py
builds and runs them): one CUDA base, one Python, one hashed lock that covers serving/requirements.txt,
and an onnxruntime-gpu pin built for the CUDA major of that base."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pathspec
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "serving" / "requirements.lock.txt"
DOCKERFILE = (REPO / "Dockerfile").read_text()
BENTOFILE = yaml.safe_load((REPO / "bentofile.yaml").read_text())


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert m, f"the Dockerfile has no default for ARG {name}"
    return m.group(1)


def lock_pins() -> dict[str, list[tuple[str, str, int]]]:
    """{name: [(version, marker, number of hashes)]}: a package may be pinned once per marker."""
    pins: dict[str, list[tuple[str, str, int]]] = {}
    for entry in re.split(r"\n(?=\S)", LOCK.read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        head = entry.split("\\")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)(?:\s*;\s*(.+))?", head)
        assert m, f"not a pinned requirement in the lock: {head!r}"
        pins.setdefault(m.group(1).lower(), []).append((m.group(2), m.group(3) or "", entry.count("--hash=sha256:")))
    return pins


def test_the_lock_pins_every_package_with_hashes():
    pins = lock_pins()
    assert len(pins) > 40, f"the lock has {len(pins)} packages: not the whole closure of the serving runtime"
    unhashed = [name for name, entries in pins.items() for _, _, hashes in entries if hashes == 0]
    assert not unhashed, f"lock entries without a hash: {unhashed}"
    assert "make lock" in LOCK.read_text().splitlines()[1], "the lock says how to regenerate it"


def test_the_lock_covers_the_serving_requirements():
    pins = lock_pins()
    for line in (REPO / "serving" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        entries = pins.get(req.name.lower())
        assert entries, f"{req.name} is in serving/requirements.txt and not in the lock: run `make lock`"
        for version, _, _ in entries:
            assert req.specifier.contains(version, prereleases=True), (
                f"the lock pins {req.name}=={version}, outside {req.specifier}: run `make lock`")


def cuda_major_of_the_pin() -> int:
    """The CUDA major the locked onnxruntime-gpu is built for, from its own metadata (its ``cuda`` extra
    requires the matching nvidia-cuda-runtime wheels)."""
    (pinned, _, _), = [e for e in lock_pins()["onnxruntime-gpu"]]
    installed = importlib.metadata.distribution("onnxruntime-gpu")
    assert installed.version.split(".")[:2] == pinned.split(".")[:2], (
        f"this venv has onnxruntime-gpu {installed.version}, the lock pins {pinned}: reinstall or `make lock`")
    for spec in installed.requires or []:
        req = Requirement(spec)
        if req.name == "nvidia-cuda-runtime":
            return int(str(next(iter(req.specifier)).version).split(".")[0])
    raise AssertionError(f"onnxruntime-gpu {installed.version} names no nvidia-cuda-runtime in its metadata")


def test_the_onnxruntime_gpu_pin_needs_the_cuda_major_of_the_base():
    base = dockerfile_arg("CUDA_IMAGE")
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-cudnn-runtime-ubuntu[\d.]+", base)
    assert m, f"the default base {base} is not a CUDA cuDNN runtime image"
    needed = cuda_major_of_the_pin()
    assert int(m.group(1)) == needed, f"onnxruntime-gpu in the lock needs CUDA {needed}, the base is {base}"


def test_the_bento_and_the_dockerfile_build_one_image():
    docker = BENTOFILE["docker"]
    assert docker["base_image"] == dockerfile_arg("CUDA_IMAGE"), "the bento and the Dockerfile differ in base"
    python = dockerfile_arg("PYTHON_VERSION")
    assert docker["python_version"] == python, f"the bento runs Python {docker['python_version']}, the image {python}"
    assert {f"python{python}", f"python{python}-venv"} <= set(docker["system_packages"]), docker
    assert '"python${PYTHON_VERSION}" -m venv' in DOCKERFILE
    assert BENTOFILE["python"]["requirements_txt"] == "serving/requirements.lock.txt"
    assert BENTOFILE["python"]["lock_packages"] is False, "BentoML would re-resolve (and unpin) the lock"
    assert "--require-hashes" in DOCKERFILE and "source=serving/requirements.lock.txt" in DOCKERFILE


def test_build_only_variables_are_args_and_state_is_a_volume():
    env_names = set()
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.M):
        env_names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", block))
    assert not {"DEBIAN_FRONTEND", "PYTHON_VERSION", "MODEL", "PIP_CERT"} & env_names, env_names
    assert re.search(r"^VOLUME /var/lib/mask-classifier$", DOCKERFILE, re.M)
    assert "MASK_TASKS_DIR=/var/lib/mask-classifier/tasks" in DOCKERFILE


def test_the_demo_model_is_in_the_build_context_and_the_demo_builder_is_not():
    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (REPO / ".dockerignore").read_text().splitlines())
    assert not ignore.match_file("demo/model.onnx"), "--build-arg MODEL=demo/model.onnx would find nothing"
    assert ignore.match_file("demo/build.py") and ignore.match_file(".venv/bin/python")
