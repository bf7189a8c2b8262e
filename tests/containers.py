"""Daemonless image builds and runs for tests/test_image.py: buildah builds, podman runs (Debian's
packages; .ci/run installs them), on a base made with debootstrap in the CUDA base's place.

Everything here that only machines like CI's need stays here and out of the README's commands:
* ``--isolation chroot``: the build cannot make the namespaces buildah's default runtime wants;
* ``--format docker``: OCI image configs have no HEALTHCHECK, and the Dockerfile's is under test;
* ``--runtime runc`` and explicit ``--ulimit``s: podman's default limits are above what this machine
  lets a process raise its own to;
* ``--health-interval disable``: podman runs healthchecks from systemd timers, and there is no
  systemd; the test runs the image's HEALTHCHECK itself with ``podman healthcheck run``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from servers import free_port

TOOLS = ("buildah", "podman", "debootstrap")
BASE = "localhost/mask-test-base:bookworm"
BASE_PYTHON = "3.11"      # Debian bookworm's python3; the CUDA base's is 3.12
DEBIAN_MIRROR = os.environ.get("MASK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_FLAGS = ["--isolation", "chroot", "--format", "docker", "--layers"]


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def sh(*cmd: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure the error carries the command and the tail of its output."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{(out.stdout + out.stderr)[-4000:]}")
    return out


def ensure_base() -> float | None:
    """The stand-in for nvidia/cuda: Debian bookworm minbase with ca-certificates, imported into the
    local image store as :data:`BASE` once and reused by later runs. Seconds it took, None if reused."""
    if sh("podman", "image", "exists", BASE, check=False).returncode == 0:
        return None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mask-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        sh("debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(rootfs),
           DEBIAN_MIRROR, timeout=900)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh("podman", "import", "-", BASE, stdin=tar.stdout, timeout=300)
        tar.wait()
    return time.monotonic() - t0


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts (a proxy's CA included, where HTTPS is re-signed)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def image_inspect(tag: str) -> dict:
    """podman's view of the image: ``Config`` (Env, User, Volumes ...), ``Healthcheck``, ``Size`` ..."""
    return json.loads(sh("podman", "image", "inspect", tag).stdout)[0]


def run_flags() -> list[str]:
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    return ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=8192:8192",
            "--health-interval", "disable"]


class Container:
    """One ``podman run -d`` of an image, its port 3000 published on a free loopback port."""

    def __init__(self, image: str, *args: str, name: str | None = None):
        self.image, self.args = image, list(args)
        self.name = name or f"mask-test-{os.getpid()}-{time.monotonic_ns()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = 0.0

    def start(self) -> "Container":
        self.started = time.monotonic()
        sh("podman", "run", "-d", "--name", self.name, *run_flags(), "-p", f"127.0.0.1:{self.port}:3000",
           *self.args, self.image)
        return self

    def running(self) -> bool:
        out = sh("podman", "inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return out.stdout.strip() == "true"

    def logs(self) -> str:
        out = sh("podman", "logs", self.name, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def wait_healthy(self, timeout: float = 180) -> float:
        """Seconds from start until the image's own HEALTHCHECK passes."""
        return self._wait(lambda: sh("podman", "healthcheck", "run", self.name, check=False).returncode == 0,
                          timeout, "its HEALTHCHECK to pass")

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds from start until ``/readyz`` answers 200 (for images without a HEALTHCHECK)."""
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        return self._wait(ready, timeout, "/readyz to answer 200")

    def _wait(self, ok, timeout: float, what: str) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if ok():
                return time.monotonic() - self.started
            if not self.running():
                raise AssertionError(f"{self.name} exited before {what}:\n{self.logs()}")
            time.sleep(0.25)
        raise AssertionError(f"{self.name}: no {what} in {timeout} s:\n{self.logs()}")

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("podman", "exec", self.name, *cmd, check=check)

    def stop(self, grace_s: int = 10) -> None:
        sh("podman", "stop", "-t", str(grace_s), self.name, check=False)

    def remove(self) -> None:
        """Gone, with the anonymous volume the image's VOLUME gave it (named volumes stay)."""
        sh("podman", "rm", "-f", "-v", "-t", "0", self.name, check=False)

    def __enter__(self) -> "Container":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()


def in_image(image: str, script: str, user: str | None = None) -> str:
    """stdout of ``sh -c SCRIPT`` in a throwaway container of the image (its CMD bypassed)."""
    extra = ["--user", user] if user else []
    return sh("podman", "run", "--rm", *run_flags(), *extra, "--entrypoint", "sh", image, "-c", script).stdout


def distributions(image: str) -> dict[str, str]:
    """{normalised name: version} of every Python distribution the image's python sees."""
    script = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
              "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
    return json.loads(in_image(image, f"python -c \"{script}\"").strip().splitlines()[-1])
