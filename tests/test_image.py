"""The Docker image and the bento's image, built and run for real with Debian's daemonless tools
(buildah, podman; see tests/containers.py for the flags only machines like CI's need), on a
debootstrap base in the CUDA base's place.

* the Dockerfile image: healthy by its own HEALTHCHECK, /predict and /submission answer what the
  model answers in-process, non-root, no torch; the demo model and a custom one bake in with the
  documented ``--build-arg MODEL=...``;
* build secrets (a CA bundle, a pip config) reach pip and are in no layer; no build leftovers;
* a /submission task survives the container: stopped mid-job, a new container on the same volume
  finishes it and its CSV equals an uninterrupted run's;
* a mounted BentoML store owned by any uid serves with ``--user``;
* ``bentoml containerize --backend buildah`` builds the bento into an image with the same Python,
  the same packages and the same ONNX Runtime build as the Dockerfile's.

``python -m bench.image`` runs this file and records what it measures (build times, sizes, start to
healthy, first request, the restart) in bench/results/image.json and docs/benchmarks.md.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

import containers as c
from serving.tasks import STATUS_FILE
from servers import serve_env as _env
from test_task_server import submit, wait_final
from test_tasks import synthetic_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = "demo/model.onnx"
IMAGE = "localhost/mask-classifier:test"
BENTO_IMAGE = "localhost/mask-classifier-bento:test"
RESTART_PEOPLE = 220      # 1,540 images: a job of several seconds, long enough to stop part-way


@pytest.fixture(scope="module")
def report():
    """What the tests measure; written to $MASK_IMAGE_REPORT when set (``python -m bench.image`` does)."""
    measured: dict = {}
    yield measured
    if os.environ.get("MASK_IMAGE_REPORT") and not c.missing_tools():
        measured["builder"] = c.sh("buildah", "--version").stdout.strip()
        Path(os.environ["MASK_IMAGE_REPORT"]).write_text(json.dumps(measured, indent=2) + "\n")


@pytest.fixture(scope="module")
def base(report):
    missing = c.missing_tools() + (["root (rootful podman, debootstrap)"] if os.geteuid() != 0 else [])
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {missing} (.ci/run)")
        pytest.skip(f"needs {missing} (apt-get install buildah podman runc netavark iptables debootstrap)")
    made_s = c.ensure_base()
    report["base_debootstrap_s"] = None if made_s is None else round(made_s, 1)
    return c.BASE


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    """(token, ca file, pip config): the machine's CA bundle and a pip config, each marked with a
    token that must appear in no layer of the image."""
    folder = tmp_path_factory.mktemp("secrets")
    token = f"mask-image-secret-{uuid.uuid4().hex}"
    ca = folder / "ca.pem"
    bundle = c.host_ca_bundle()
    ca.write_text((bundle.read_text() if bundle else "") + f"\n# {token}\n")
    pipconf = folder / "pip.conf"
    pipconf.write_text(f"[global]\n# {token}\ntimeout = 120\n")
    return token, ca, pipconf


def build(tag: str, context: Path, *build_args: str, secrets=None) -> float:
    flags = [a for kv in build_args for a in ("--build-arg", kv)]
    if secrets:
        flags += ["--secret", f"id=ca,src={secrets[1]}", "--secret", f"id=pipconf,src={secrets[2]}"]
    t0 = time.monotonic()
    c.sh("buildah", "build", *c.BUILD_FLAGS, "-f", str(REPO / "Dockerfile"), "-t", tag,
         "--build-arg", f"CUDA_IMAGE={c.BASE}", "--build-arg", f"PYTHON_VERSION={c.BASE_PYTHON}", *flags,
         str(context), timeout=1800)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def image(base, secrets, report):
    """The Dockerfile built from the repository with the shipped demo model, the documented way."""
    report["dockerfile_build_s"] = round(build(IMAGE, REPO, f"MODEL={DEMO_MODEL}", secrets=secrets), 1)
    report["dockerfile_image_bytes"] = c.image_inspect(IMAGE)["Size"]
    return IMAGE


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """(folder of eval images, info.csv bytes, zip bytes) of 140 synthetic images."""
    root = tmp_path_factory.mktemp("image_eval")
    _, info, archive = synthetic_job(root, 20, seed=3)
    return root / "eval" / "images", info, archive


def expected(model: Path, images: list[Path]) -> dict[str, int]:
    from serving.predictor import Predictor

    return {p.name: r["class"] for p, r in zip(images, Predictor(model).predict(images))}


def csv_answers(text: str) -> dict[str, int]:
    return {row["ImageID"]: int(row["ans"]) for row in csv.DictReader(io.StringIO(text))}


def test_the_image_serves_the_demo_model_healthy_non_root_without_torch(image, eval_set, report, tmp_path):
    folder, info, archive = eval_set
    photos = sorted(folder.iterdir())
    want = expected(REPO / DEMO_MODEL, photos)
    with c.Container(image) as box:
        report["dockerfile_start_to_healthy_s"] = round(box.wait_healthy(), 2)
        with httpx.Client(base_url=box.url, timeout=60) as client:
            latencies = []
            for photo in photos[:5]:
                t0 = time.perf_counter()
                r = client.post("/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
                assert r.json()["class"] == want[photo.name], (photo.name, r.json(), want[photo.name])
            report["dockerfile_first_request_ms"] = round(latencies[0] * 1000, 1)
            report["dockerfile_next_requests_ms"] = round(statistics.median(latencies[1:]) * 1000, 1)
            r = client.post("/submission", files={"info": ("info.csv", info, "text/csv"),
                                                  "archive": ("images.zip", archive, "application/zip")})
            assert r.status_code == 200, r.text
            assert csv_answers(r.text) == want, "the /submission CSV differs from the model's answers"
            served = client.get("/model").json()
        assert served["source"] == "model.onnx" and served["provider"] == "CPUExecutionProvider", served
        uid = box.exec("id", "-u").stdout.strip()
        assert uid == "10001", f"the service runs as uid {uid}, not the image's unprivileged user"
        probe = box.exec("python", "-c", "import importlib.util as u; print(u.find_spec('torch'))").stdout.strip()
        assert probe == "None", f"torch is importable in the serving image: {probe}"
    inspected = c.image_inspect(image)
    assert any("/readyz" in part for part in inspected["Healthcheck"]["Test"]), inspected["Healthcheck"]
    assert "/var/lib/mask-classifier" in inspected["Config"]["Volumes"], inspected["Config"]


def test_build_secrets_and_build_files_are_in_no_layer(image, secrets, tmp_path):
    token = secrets[0].encode()
    archive = tmp_path / "image.tar"
    c.sh("podman", "save", "--format", "docker-archive", "-o", str(archive), image, timeout=600)
    found, tail = False, b""
    with archive.open("rb") as f:
        while chunk := f.read(1 << 24):
            if token in tail + chunk:
                found = True
                break
            tail = chunk[-len(token):]
    archive.unlink()
    assert not found, "a build secret (the CA bundle or the pip config handed to the build) is in a layer"
    left = c.in_image(image, "find /tmp /root/.cache /run/mask-build /context /out -mindepth 1 2>/dev/null; "
                             "ls /opt/model", user="0")
    assert left.split() == ["model.onnx"], f"build leftovers in the image: {left}"
    env = dict(kv.split("=", 1) for kv in c.image_inspect(image)["Config"]["Env"])
    assert not {"DEBIAN_FRONTEND", "PIP_CERT", "PIP_CONFIG_FILE", "PYTHON_VERSION", "MODEL"} & env.keys(), env


def restamp(source: Path, dest: Path, exported_at: str) -> None:
    """``source`` written to ``dest`` with its self-description's export time set to ``exported_at``."""
    import onnx

    proto = onnx.load(str(source))
    stamp = next(p for p in proto.metadata_props if p.key == "mask.exported_at")
    stamp.value = json.dumps(exported_at)
    onnx.save(proto, str(dest))


def test_a_custom_model_bakes_in_the_same_way_and_a_missing_one_is_one_line(base, onnx_model, tmp_path):
    context = tmp_path / "context"
    for part in ("maskdata", "serving"):
        shutil.copytree(REPO / part, context / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "bentofile.yaml", context)
    (context / "models").mkdir()
    shutil.copy(onnx_model, context / "models" / "mine.onnx")
    tag = "localhost/mask-classifier-custom:test"
    from serving.predictor import Predictor

    # built twice from the same path: the second build must bake in the new file, not a cached layer
    for exported_at in (Predictor(onnx_model).info()["exported_at"], "2001-02-03T04:05:06+00:00"):
        restamp(onnx_model, context / "models" / "mine.onnx", exported_at)
        build(tag, context, "MODEL=models/mine.onnx")
        with c.Container(tag) as box:
            box.wait_healthy()
            served = httpx.get(f"{box.url}/model", timeout=30).json()
        assert served["exported_at"] == exported_at, f"the image serves another model than models/mine.onnx: {served}"
    with pytest.raises(AssertionError) as failed:
        build("localhost/mask-classifier-nomodel:test", context, "MODEL=models/absent.onnx")
    assert "MODEL=models/absent.onnx is not a file in the build context" in str(failed.value)


def test_a_task_survives_a_container_restart_on_its_volume(image, tmp_path_factory, report):
    ids, info, archive = synthetic_job(tmp_path_factory.mktemp("restart"), RESTART_PEOPLE, seed=4)
    volume = f"mask-test-tasks-{uuid.uuid4().hex[:8]}"
    mount = ["-v", f"{volume}:/var/lib/mask-classifier"]
    try:
        first = c.Container(image, *mount).start()
        try:
            first.wait_healthy()
            with httpx.Client(base_url=first.url, timeout=120) as client:
                task = submit(client, info, archive)
                done_at_stop = wait_part_way(client, task, len(ids))
            first.stop()          # SIGTERM, then SIGKILL after the grace period: the job is cut off
        finally:
            first.remove()
        on_volume = c.sh("podman", "volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip()
        # read as the file it is: the folder belongs to the container's user, whom TaskStore insists on
        between = json.loads((Path(on_volume) / "tasks" / task / STATUS_FILE).read_text())
        assert between["status"] == "in_progress", f"the task was not interrupted by the stop: {between}"
        second = c.Container(image, *mount).start()
        try:
            second.wait_healthy()
            with httpx.Client(base_url=second.url, timeout=120) as client:
                status = wait_final(client, task)
                assert status["status"] == "completed", status
                resumed = client.get("/submission/get", params={"task_id": task}).text
                fresh = submit(client, info, archive)
                assert wait_final(client, fresh)["status"] == "completed"
                uninterrupted = client.get("/submission/get", params={"task_id": fresh}).text
        finally:
            second.remove()
    finally:
        c.sh("podman", "volume", "rm", "-f", volume, check=False)
    assert resumed == uninterrupted, "the task finished after the restart writes another CSV than a run never stopped"
    assert len(csv_answers(resumed)) == len(ids)
    report["restart"] = {"images": len(ids), "done_when_stopped": done_at_stop, "csv_equal": True}


def wait_part_way(client: httpx.Client, task: str, total: int, timeout: float = 120) -> int:
    """Images done once the task has made progress and is not finished (the moment to stop it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/submission/status", params={"task_id": task}).json()
        assert status["status"] == "in_progress", f"the task ended before it could be interrupted: {status}"
        done = (status.get("progress") or {}).get("done", 0)
        if 0 < done < total:
            return done
        time.sleep(0.1)
    raise AssertionError(f"task {task} made no progress in {timeout} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A BentoML home whose store holds the demo model (what `make serve` imports)."""
    home = tmp_path_factory.mktemp("image_store")
    out = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, env=_env(BENTOML_HOME=str(home)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return home


def test_a_mounted_store_of_any_owner_serves_with_user(image, store, tmp_path, eval_set):
    owned = tmp_path / "bentoml"
    shutil.copytree(store, owned, symlinks=True)
    for path in [owned, *owned.rglob("*")]:
        os.lchown(path, 4242, 4242)
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)      # as BentoML leaves its model folders: only the owner may enter
    photo = sorted(eval_set[0].iterdir())[0]
    with c.Container(image, "--user", "4242:4242", "-v", f"{owned}:/home/app/bentoml:ro",
                     "-e", "MASK_MODEL=mask-classifier:latest") as box:
        box.wait_healthy()
        served = httpx.get(f"{box.url}/model", timeout=30).json()
        r = httpx.post(f"{box.url}/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                       timeout=60)
    assert served["source"].startswith("mask-classifier:"), served
    assert r.status_code == 200, r.text
    assert r.json()["class"] == expected(REPO / DEMO_MODEL, [photo])[photo.name]


@pytest.fixture(scope="module")
def bento_image(base, store, tmp_path_factory, report):
    """`bentoml build` + `bentoml containerize --backend buildah` of bentofile.yaml, on the stand-in base.

    Two lines differ from bentofile.yaml, as they must on a Debian base: its Python (3.11; the CUDA
    base's is 3.12) and so that Python's apt packages. The CA bundle this machine's HTTPS needs is
    bind-mounted over the base's for the build only (BentoML's containerize passes one --volume)."""
    spec = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    cuda_python = spec["docker"]["python_version"]
    spec["docker"]["python_version"] = c.BASE_PYTHON
    spec["docker"]["system_packages"] = [p.replace(f"python{cuda_python}", f"python{c.BASE_PYTHON}")
                                         for p in spec["docker"]["system_packages"]]
    bentofile = tmp_path_factory.mktemp("bentofile") / "bentofile.yaml"
    bentofile.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = _env(BENTOML_HOME=str(store))
    bentoml = [sys.executable, "-m", "bentoml"]
    out = subprocess.run([*bentoml, "build", "-f", str(bentofile), "--output", "tag", "."], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    opts = ["--opt", "isolation=chroot", "--opt", "format=docker", "--opt", "layers", "--opt", f"from={c.BASE}"]
    bundle = c.host_ca_bundle()
    if bundle:
        opts += ["--opt", f"volume={bundle}:/etc/ssl/certs/ca-certificates.crt:ro"]
    t0 = time.monotonic()
    out = subprocess.run([*bentoml, "containerize", tag, "--backend", "buildah", "-t", BENTO_IMAGE, *opts],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    report["bento_containerize_s"] = round(time.monotonic() - t0, 1)
    report["bento_image_bytes"] = c.image_inspect(BENTO_IMAGE)["Size"]
    return BENTO_IMAGE


def test_the_bento_image_has_the_dockerfile_images_python_packages_and_runtime(bento_image, image, eval_set,
                                                                                report):
    python = "python -c 'import sys; print(sys.version.split()[0])'"
    assert c.in_image(bento_image, python) == c.in_image(image, python), "two Pythons for one service"
    tools = {"pip", "setuptools", "wheel", "uv"}      # the venvs' installers, not the service's
    ours = {k: v for k, v in c.distributions(image).items() if k not in tools}
    bentos = {k: v for k, v in c.distributions(bento_image).items() if k not in tools}
    assert bentos == ours, {k: (ours.get(k), bentos.get(k)) for k in ours.keys() | bentos.keys()
                            if ours.get(k) != bentos.get(k)}
    assert "onnxruntime-gpu" in ours and "torch" not in ours, sorted(ours)
    photo = sorted(eval_set[0].iterdir())[0]
    with c.Container(bento_image) as box:
        report["bento_start_to_ready_s"] = round(box.wait_ready(), 2)
        r = httpx.post(f"{box.url}/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                       timeout=60)
        provider = httpx.get(f"{box.url}/model", timeout=30).json()["provider"]
    assert r.status_code == 200, r.text
    assert r.json()["class"] == expected(REPO / DEMO_MODEL, [photo])[photo.name]
    assert provider == "CPUExecutionProvider", provider      # no GPU on this machine
    offered = "python -c 'import onnxruntime as o; print(o.get_available_providers())'"
    bentos_offer, ours_offer = c.in_image(bento_image, offered), c.in_image(image, offered)
    assert bentos_offer == ours_offer, ("the two images offer different execution providers", bentos_offer, ours_offer)
    assert "CUDAExecutionProvider" in ours_offer, ours_offer       # the GPU build of ONNX Runtime in both
