"""Every URL the README, the docs, a ``--help`` or the `make serve` banner shows works on a real server.

The URLs are read from the text itself (README.md, docs/*.md, bench/README.md, each console script's
``--help``, and what ``demo.ready.wait_ready`` prints), not listed here, so a doc that gains a wrong
URL fails this test. Each one is requested against a real ``bentoml serve`` on a loopback port: a URL
on its own (prose, a client's base URL) must answer 200 to a GET; a ``curl`` line is replayed as
written (``-F name=@file`` uploads become the same multipart POST, with real images, info.csv and zip
standing in for the example file names; ``$task`` is the id the documented submit returned) and
must answer 200. BentoML 1.4 serves its Swagger UI at ``/`` and the schema at ``/docs.json``: a
documented ``/docs`` answers 404 and fails here.
"""
from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from servers import serve_env as _env, bentoml_serve
from test_service import submission_inputs

REPO = Path(__file__).resolve().parents[1]
DOC_HOST = "http://localhost:3000"
URL = re.compile(r"https?://(?:localhost|127\.0\.0\.1)(?::\d+)?[^\s`\"'<>()|]*")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]


def _url(raw: str) -> str:
    return raw.rstrip(".,;:")


def url_lines(text: str) -> list[str]:
    """Lines of ``text`` naming a local server URL, shell continuations (``\\``) joined."""
    text = re.sub(r"\\\n\s*", " ", text)
    return [line for line in text.splitlines() if re.search(r"https?://(localhost|127\.0\.0\.1)[:/]", line)]


def requests_of(line: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(method, url, [(form field, file named)]) for each request a line shows: a curl command is
    replayed as written, a bare URL is a GET."""
    if "curl " not in line:
        return [("GET", _url(u), []) for u in URL.findall(line)]
    cmd = line[line.index("curl ") + 5:].split(" | ")[0]
    tokens = [t.rstrip(")") for t in shlex.split(cmd, comments=True)]
    url, files, skip = None, [], False
    for i, tok in enumerate(tokens):
        if skip:
            skip = False
        elif tok == "-F":
            name, _, path = tokens[i + 1].partition("=@")
            files.append((name, path))
            skip = True
        elif tok in ("-o", "-H", "-X", "-d"):
            assert tok != "-X" and tok != "-d", f"unsupported curl option {tok} in: {line}"
            skip = True
        elif URL.fullmatch(tok):
            url = tok
    assert url, f"no URL in the curl command: {line}"
    return [("POST" if files else "GET", _url(url), files)]


def documented() -> list[tuple[str, str]]:
    """(where, line) for every doc line naming a local URL."""
    return [(f"{p.relative_to(REPO)}", line) for p in DOCS for line in url_lines(p.read_text())]


def help_texts() -> dict[str, str]:
    """``--help`` of every console script in pyproject and of ``python -m demo``."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {name: ref for name, ref in scripts.items()} | {"python -m demo": "demo.build:main"}
    out = {}
    for name, ref in targets.items():
        module, func = ref.split(":")
        r = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}(['--help']))"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{name} --help failed: {r.stderr[-1000:]}"
        out[name] = r.stdout
    return out


def test_no_document_points_at_the_404_docs_path():
    bad = [(where, line) for where, line in documented() if re.search(r"://[^/\s]+/docs(?![.\w/])", line)]
    assert bad == [], f"/docs is a 404 on BentoML 1.4 (Swagger UI is at /, the schema at /docs.json): {bad}"


def test_curl_lines_are_read_as_written():
    got = requests_of('task=$(curl -s -F info=@data/eval/info.csv -F archive=@x.zip '
                      'http://localhost:3000/submission/submit | python -c "print(1)")')
    assert got == [("POST", "http://localhost:3000/submission/submit", [("info", "data/eval/info.csv"),
                                                                         ("archive", "x.zip")])], got
    assert requests_of('curl -o s.csv "http://localhost:3000/submission/get?task_id=$task"') == \
        [("GET", "http://localhost:3000/submission/get?task_id=$task", [])]
    assert requests_of("API docs at `http://localhost:3000/`, schema at `http://localhost:3000/docs.json`.") == \
        [("GET", "http://localhost:3000/", []), ("GET", "http://localhost:3000/docs.json", [])]


class Replayer:
    """Sends the documented requests to ``server`` with real files in place of the example names."""

    def __init__(self, client: httpx.Client, synth_root: Path, image: Path):
        self.client, self.image = client, image
        _, self.info, self.archive = submission_inputs(synth_root, n=3)
        self.task: str | None = None

    def upload(self, name: str, path: str) -> tuple[str, bytes, str]:
        if name == "info":
            return "info.csv", self.info, "text/csv"
        if name == "archive":
            return "images.zip", self.archive, "application/zip"
        if path.lower().endswith(".png"):
            buf = io.BytesIO()
            with Image.open(self.image) as im:
                im.save(buf, "PNG")
            return "image.png", buf.getvalue(), "image/png"
        real = Path(path) if Path(path).is_file() else self.image
        return real.name, real.read_bytes(), "image/jpeg"

    def _task_done(self, server: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.client.get(f"{server}/submission/status", params={"task_id": self.task}).json()["status"]
            if status != "in_progress":
                assert status == "completed", f"documented submission task ended {status}"
                return
            time.sleep(0.2)
        raise AssertionError("documented submission task still running after 60 s")

    def send(self, method: str, url: str, files: list[tuple[str, str]], server: str) -> httpx.Response:
        url = url.replace(DOC_HOST, server)
        assert url.startswith(server), f"{url} is not this server's"
        if "$task" in url:
            assert self.task, f"{url} needs the task id of a documented /submission/submit before it"
            self._task_done(server)
            url = url.replace("$task", self.task)
        if method == "GET":
            return self.client.get(url)
        r = self.client.post(url, files=[(name, self.upload(name, path)) for name, path in files])
        if url.endswith("/submission/submit") and r.status_code == 200:
            self.task = r.json()["task_id"]
        return r


@pytest.fixture(scope="module")
def server(onnx_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("urls_home")
    env = _env(MASK_MODEL=str(onnx_model), BENTOML_HOME=str(home))
    with bentoml_serve(sys.executable, env, home / "serve.log") as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_printed_url_answers_200(server, synth_root, tmp_path, capsys):
    from demo.ready import wait_ready

    image = sorted((synth_root / "eval" / "images").iterdir())[0]
    workdir = tmp_path / "demo"  # what `make serve` finds after the demo build: .demo/data/eval/images/
    (workdir / "data" / "eval" / "images").mkdir(parents=True)
    (workdir / "data" / "eval" / "images" / image.name).write_bytes(image.read_bytes())
    assert wait_ready(server, workdir, timeout=30) == 0
    banner = capsys.readouterr().out
    sources = [*documented(), *(("make serve banner", line) for line in url_lines(banner)),
               *((f"{name} --help", line) for name, text in help_texts().items() for line in url_lines(text))]
    checked, failures = [], []
    with httpx.Client(timeout=60) as client:
        replay = Replayer(client, synth_root, image)
        for where, line in sources:
            for method, url, files in requests_of(line):
                r = replay.send(method, url, files, server)
                checked.append((where, method, url))
                if r.status_code != 200:
                    failures.append(f"{where}: {method} {url} -> {r.status_code} {r.text[:200]}")
    assert failures == [], "\n".join(failures)
    paths = {u.replace(DOC_HOST, "").replace(server, "").split("?")[0] for _, _, u in checked}
    assert {"", "/", "/docs.json", "/predict", "/predict_batch", "/model", "/submission/submit",
            "/submission/status", "/submission/get"} <= paths, sorted(paths)
    assert sum(w == "make serve banner" for w, _, _ in checked) >= 4, f"banner URLs not read:\n{banner}"
    # the curl line, the page, the API docs and the schema
    assert sum(w == "README.md" for w, _, _ in checked) >= 4, [c for c in checked if c[0] == "README.md"]
