"""What a new user's first ``make serve`` costs: a fresh clone of this repository, then ``make serve``
with an empty pip cache and an empty BentoML store, timed until its banner says the server is ready.

    python -m bench.first_run            # clones this repository's HEAD into a temporary folder

Records the seconds from the start of ``make serve`` to the end of the install (the demo's first
stage starting), to the demo model checked and stored, and to the ready banner; the venv's size and
whether torch is in it; and that the banner's curl command (POST /predict of the printed image)
answers 200. Packages come from the indexes pip is configured with (PyPI, and any local index or
wheel folder the machine's pip.conf names), with ``PIP_NO_CACHE_DIR=1`` so nothing is reused from an
earlier install. Writes
``bench/results/first_run.json`` and re-renders docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import common, fmt
from bench.fmt import f as _f, table as _table

log = logging.getLogger(__name__)

# what make serve prints at each stage (demo/build.py, demo/ready.py)
INSTALLED = "==> 1/3"
STORED = re.compile(r"demo model \S+ ready in|model store already has")
READY = re.compile(r"is ready at http://")
CURL = re.compile(r"curl -F image=@(\S+) (http://\S+/predict)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_mb(path: Path) -> float:
    total = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return total / 2**20


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:   # it had already exited
        pass


def watch(proc: subprocess.Popen, started: float, timeout: float) -> dict:
    """Seconds from ``started`` to each stage line of make serve's output, and the banner's curl line.
    A make serve that goes silent is killed at the deadline, which ends the read."""
    marks: dict = {}
    killer = threading.Timer(max(0.0, started + timeout - time.perf_counter()), _stop, (proc,))
    killer.start()
    try:
        return _read_stages(proc, started, marks)
    finally:
        killer.cancel()


def _read_stages(proc: subprocess.Popen, started: float, marks: dict) -> dict:
    for line in proc.stdout:
        now = time.perf_counter() - started
        log.debug("%6.1f %s", now, line.rstrip())
        if INSTALLED in line and "installed_s" not in marks:
            marks["installed_s"] = now
        if STORED.search(line):
            marks["stored_s"] = now
        if READY.search(line) and "ready_s" not in marks:
            marks["ready_s"] = now
        if m := CURL.search(line):
            marks["curl"] = (m.group(1), m.group(2))
            return marks
    raise ValueError(f"make serve printed no ready banner (exit {proc.poll()}, after "
                     f"{time.perf_counter() - started:.0f} s); stages seen: {sorted(marks)}")


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    import httpx

    work = Path(tempfile.mkdtemp(prefix="mask-first-run-"))
    try:
        started_at = common.utc_now()
        with common.CpuMonitor() as monitor:
            t0 = time.perf_counter()
            subprocess.run(["git", "clone", "-q", str(common.REPO_ROOT), str(work / "repo")], check=True)
            clone_s = time.perf_counter() - t0
            repo = work / "repo"
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("MASK_", "BENTOML_", "VIRTUAL_ENV", "PYTHONPATH"))}
            env.update(PIP_NO_CACHE_DIR="1", BENTOML_HOME=str(work / "bentoml"), BENTOML_DO_NOT_TRACK="true")
            port = free_port()
            start = time.perf_counter()
            proc = subprocess.Popen(["make", "serve", f"PORT={port}"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                marks = watch(proc, start, args.timeout)
                image, url = marks["curl"]
                with open(image if os.path.isabs(image) else repo / image, "rb") as f:
                    answer = httpx.post(url, files={"image": ("photo.jpg", f.read(), "image/jpeg")}, timeout=60)
            finally:
                _stop(proc)
                proc.wait(timeout=60)
        if answer.status_code != 200:
            raise ValueError(f"the banner's curl command answered {answer.status_code}: {answer.text[:200]}")
        torch_found = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "import torch"],
                                     capture_output=True).returncode == 0
        result = {"clone_s": clone_s, "installed_s": marks["installed_s"], "stored_s": marks.get("stored_s"),
                  "ready_s": marks["ready_s"], "clone_to_ready_s": clone_s + marks["ready_s"],
                  "venv_mb": folder_mb(repo / ".venv"), "torch_in_venv": torch_found,
                  "predict_status": answer.status_code, "predict_label": answer.json().get("label")}
        log.info("clone -> ready %.1f s (install %.1f s), venv %.0f MB, torch in venv: %s",
                 result["clone_to_ready_s"], result["installed_s"], result["venv_mb"], torch_found)
        common.save_run("first_run", argv, started_at, monitor, False, {"pip_cache": "off"}, result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


TARGET_S = 90   # clone -> ready on a quiet 2-core machine


def section(result: dict | None) -> str:
    """docs/benchmarks.md's part for this run (bench.report calls it)."""
    head = "## First run: a fresh clone to a served prediction (`make serve`)\n\n"
    if not result:
        return head + "Not measured: run `python -m bench.first_run`.\n"
    m = result["machine"]
    cpu = f"{m['cpu']} ({m['usable_cpus']} CPUs; {', '.join(m['cpu_flags'])})"
    rows = [["git clone", _f(result["clone_s"], 1)],
            ["`make serve`: venv + `pip install -e .` (no pip cache)", _f(result["installed_s"], 1)],
            ["... + demo check set, check, store import", _f(result["stored_s"], 1)],
            ["... + server start and warm-up: the ready banner", _f(result["ready_s"], 1)],
            ["**clone to ready**", f"**{_f(result['clone_to_ready_s'], 1)}**"]]
    busy = result["cpu_monitor"].get("other_cores")
    return (head + _table(["stage (seconds since the start of make serve)", "s"], rows) + "\n\n"
            f"Target: clone to ready in at most {TARGET_S} s: {fmt.met(result['clone_to_ready_s'] <= TARGET_S)}. "
            f"The venv holds {_f(result['venv_mb'], 0)} MB; torch in it: {'yes' if result['torch_in_venv'] else 'no'}; "
            f"the banner's curl command answered {result['predict_status']} (`{result['predict_label']}`). "
            f"{cpu}, {result['finished'][:10]}, other processes {_f(busy, 2)} cores. Packages as pip is configured "
            "on that machine, with its cache off. Command: `" + result["command"] + "`.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds (default 900)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "first_run.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    p.add_argument("-v", "--verbose", action="store_true", help="echo make serve's output")
    args = p.parse_args(argv)
    common.setup_logging(args.verbose)
    return common.run_part(lambda: run(args, argv), args.no_report)


if __name__ == "__main__":
    sys.exit(main())
