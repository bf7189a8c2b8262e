"""Helpers every benchmark shares: machine description, CPU-sharing monitor, repeat-timing and the
atomic JSON result files in ``bench/results/`` that ``bench.report`` renders.

Nothing here imports torch, so the REST benchmark stays light.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from maskdata.cpu import cpu_model, simd_flags
from maskdata.io import atomic_write_text

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_DIR = REPO_ROOT / "docs"
PACKAGES = ("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "onnx", "bentoml", "numpy", "pillow",
            "httpx")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_names() -> list[str]:
    """CUDA devices as torch sees them, without importing torch when it is not loaded already."""
    if "torch" not in sys.modules:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "cpu_flags": simd_flags(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "memory_gib": memory_gib(), "os": platform.platform(), "python": platform.python_version(),
            "versions": versions, "gpus": gpu_names(),
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def _proc_stat_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMonitor:
    """How busy the machine was *apart from this benchmark* while it ran.

    ``other_cores`` = (all CPUs' busy time − this process's and its reaped children's CPU time) / wall
    time: 0 on a quiet machine, ~1.0 when another job kept one core busy the whole time. Children
    still running when the monitor stops are not counted as ours, so stop it after they exit.
    """

    def __enter__(self) -> "CpuMonitor":
        self.t0, self.own0, self.stat0 = time.perf_counter(), _own_cpu_seconds(), _proc_stat_jiffies()
        self.load0 = os.getloadavg()
        self.summary: dict = {}
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        own = _own_cpu_seconds() - self.own0
        stat1 = _proc_stat_jiffies()
        summary = {"wall_s": round(wall, 1), "own_cpu_s": round(own, 1),
                   "loadavg_start": [round(x, 2) for x in self.load0],
                   "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
        if self.stat0 and stat1:
            hz = os.sysconf("SC_CLK_TCK")
            busy = (stat1[0] - self.stat0[0]) / hz
            summary["machine_busy_cores"] = round(busy / wall, 2) if wall > 0 else None
            summary["other_cores"] = round(max(0.0, busy - own) / wall, 2) if wall > 0 else None
        self.summary = summary


@dataclass
class Timing:
    """Per-call wall times of one repeated measurement, in seconds."""
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def to_dict(self) -> dict:
        return {"repeats": len(self.times), "median_s": self.median, "min_s": min(self.times),
                "max_s": max(self.times)}


def time_calls(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 50,
               budget_s: float = 2.0, cap_s: float | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then repeatedly: at least ``min_repeats`` times and until
    ``budget_s`` of timed calls have passed, at most ``max_repeats`` times, and never past ``cap_s``
    (after one call) so a slow cell of a large grid costs one or two calls, not minutes. The median
    resists the odd slow call a shared machine produces."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    spent = 0.0
    while len(timing.times) < max_repeats:
        if len(timing.times) >= min_repeats and spent >= budget_s:
            break
        if cap_s is not None and timing.times and spent >= cap_s:
            break
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        timing.times.append(dt)
        spent += dt
    return timing


def command_line(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, args)])


def write_result(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    log.info("wrote %s", path)
    return path


def save_run(name: str, argv: list[str] | None, started: str, monitor: "CpuMonitor", quick: bool,
             config: dict, result: dict, out: Path) -> Path:
    """Write one part's result JSON with what every part records: the command, times, the machine
    and how busy the other cores were."""
    payload = {"name": name, "command": command_line(f"bench.{name}", argv), "started": started,
               "finished": utc_now(), "quick": quick, "machine": machine_info(),
               "cpu_monitor": monitor.summary, "config": config, **result}
    return write_result(out, payload)


# mask-submit's summary line: "wrote X: N images, S s, R img/s; ..."
SUBMIT_SUMMARY = re.compile(r"(\d+) images, ([\d.]+) s")


# Runs argv[1:] as a grandchild and reports its own peak RSS and wall time on stderr's last line.
# Why not os.wait4 on a direct child: Linux carries a forked child's pre-exec RSS high-water mark
# (the parent's whole RSS, torch included) into ru_maxrss across exec, so a big harness would report
# its own size; forked from this small launcher instead, the job's figure is its own
# (tests/test_bench.py pins this).
_RUSAGE_LAUNCHER = r"""
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
sys.stderr.write(f"\nrusage: maxrss_kb={ru.ru_maxrss} wall_s={time.perf_counter() - t0:.6f}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""
_RUSAGE_LINE = re.compile(r"rusage: maxrss_kb=(\d+) wall_s=([\d.]+)\s*$")


def run_measured(cmd: list[str]) -> tuple[str, str, float, float]:
    """(stdout, stderr, wall seconds, peak RSS MB) of one command, its own figures (see above)."""
    proc = subprocess.run([sys.executable, "-c", _RUSAGE_LAUNCHER, *cmd], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    m = _RUSAGE_LINE.search(proc.stderr)
    stderr = proc.stderr[:m.start()].rstrip() if m else proc.stderr
    if proc.returncode != 0 or not m:
        raise ValueError(f"{' '.join(cmd[:3])} exited {proc.returncode}: "
                         f"{(stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout, stderr, float(m.group(2)), int(m.group(1)) / 1024  # Linux: ru_maxrss in KiB


def timed_submit(model: Path, info: Path, images: Path, out: Path, extra: list[str] = ()) -> dict:
    """One mask-submit run as a command: wall seconds, its own loop seconds (its summary line), peak RSS."""
    cmd = [sys.executable, "-m", "serving.submit_cli", "--info", str(info), "--images", str(images),
           "--out", str(out), "--model", str(model), "--no-progress", *extra]
    log.info("running: %s", " ".join(cmd))
    stdout, _, wall, rss = run_measured(cmd)
    m = SUBMIT_SUMMARY.search(stdout)
    n = int(m.group(1)) if m else None
    return {"command": "mask-submit " + " ".join(shlex.quote(c.replace(str(REPO_ROOT) + "/", "")) for c in cmd[3:]),
            "images": n, "wall_s": wall, "loop_s": float(m.group(2)) if m else None,
            "img_per_s": n / wall if n else None, "max_rss_mb": rss}


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """``{"model_only": {...}, "batch_job": {...}, "rest": {...}}`` for whichever files exist."""
    out = {}
    for name in ("model_only", "batch_job", "rest", "ray_job", "thread_budget", "int8_calibration", "int8_isa", "bf16",
                 "eval_scale", "memory_soak", "train_bare", "train_ceiling", "train_baseline", "first_run", "image"):
        p = results_dir / f"{name}.json"
        if p.is_file():
            out[name] = json.loads(p.read_text())
    return out


def measure_and_save(name: str, argv: list[str] | None, args, measure: Callable[[object], dict],
                     extra_config: dict | None = None) -> dict:
    """``measure(args)`` under a :class:`CpuMonitor`, saved with :func:`save_run` to ``args.out``
    (``args``' values as the config, paths as text, plus ``extra_config``); the result."""
    started = utc_now()
    with CpuMonitor() as monitor:
        result = measure(args)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_run(name, argv, started, monitor, args.quick, {**config, **(extra_config or {})}, result, args.out)
    return result


def setup_logging(verbose: bool = False) -> None:
    """INFO for the harness and the product's modules; WARNING for library chatter (the ONNX
    quantizer logs one line per rescaled weight on the root logger)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("__main__", "bench", "export", "serving", "training", "maskdata"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def run_part(body: Callable[[], None], no_report: bool = False) -> int:
    """A bench script's exit: bad input (ValueError, FileNotFoundError) is a one-line error and
    exit code 2; otherwise docs/benchmarks.md is re-rendered unless ``no_report``."""
    try:
        body()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not no_report:
        render_docs()
    return 0


def render_docs() -> None:
    """Re-render docs/benchmarks.md from whatever results exist (each script calls this last), as
    ``python -m bench.report`` in a child process: the report builds on this module, not the reverse."""
    rc = subprocess.run([sys.executable, "-m", "bench.report"], cwd=REPO_ROOT).returncode
    if rc != 0:
        raise RuntimeError(f"python -m bench.report exited {rc}; docs/benchmarks.md was not re-rendered")


def self_check() -> int:
    """The harness's own arithmetic, on no data: :func:`time_calls` makes its warm-up plus its repeat
    count of calls, and :func:`run_measured` reports the command's peak RSS, not this process's
    (a direct child's ``ru_maxrss`` starts from the parent's RSS across exec on Linux)."""
    failures = []
    calls = []
    t = time_calls(lambda: calls.append(1), warmup=2, min_repeats=3, max_repeats=5, budget_s=1e9)
    if len(calls) != 7 or t.to_dict()["repeats"] != 5:
        failures.append(f"time_calls: expected 2 warm-up + 5 timed calls, got {len(calls)} calls, "
                        f"{t.to_dict()['repeats']} timed")
    ballast = bytearray(400 << 20)            # this process holds 400 MB more than the command ever will
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    stdout, _, wall, rss = run_measured([sys.executable, "-c", "x = bytearray(64 << 20); print('ok')"])
    del ballast
    if stdout.strip() != "ok" or wall <= 0:
        failures.append(f"run_measured: stdout {stdout!r}, wall {wall}")
    if not 64 <= rss < 300:
        failures.append(f"run_measured: peak RSS {rss:.0f} MB, expected the 64 MB command plus an interpreter")
    for f in failures:
        print(f"error: self-check: {f}", file=sys.stderr)
    print("self-check: " + ("FAILED" if failures else "ok: time_calls counts, run_measured reports the command's RSS"))
    return 1 if failures else 0


if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(prog="python -m bench.common", description="Helpers every benchmark shares.")
    _p.add_argument("--self-check", action="store_true", help="check the repeat counting and peak-RSS measuring")
    sys.exit(self_check() if _p.parse_args().self_check else (_p.print_help() or 0))
