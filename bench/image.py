"""The Docker image and the bento's image, timed: runs tests/test_image.py (buildah builds, podman runs;
see that file) and records what it measured.

    python -m bench.image            # needs buildah, podman, debootstrap (Debian packages) and root

Records the Dockerfile's build time and image size, seconds from `podman run` to the image's own
HEALTHCHECK passing, the first and a typical later /predict latency, the restart-survival result
(images done when the container was stopped, and whether the resumed task's CSV equals an
uninterrupted run's), and the same build/size/start figures for ``bentoml containerize``'s image.
Build times count what the builder's layer cache already held: run after ``podman rmi -a`` (and
``buildah rm -a``) for a cold build, which the record then says. Writes ``bench/results/image.json`` and re-renders
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common
from bench.fmt import f as _f, table as _table


def local_images() -> int:
    """How many images (intermediate layers included) the local store holds: 0 means a cold build."""
    out = subprocess.run(["podman", "images", "-a", "-q"], capture_output=True, text=True)
    return len(out.stdout.split()) if out.returncode == 0 else -1


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    started = common.utc_now()
    cold = local_images() == 0
    with tempfile.TemporaryDirectory(prefix="mask-bench-image-") as tmp:
        figures = Path(tmp) / "image.json"
        env = {**os.environ, "MASK_IMAGE_REPORT": str(figures)}
        with common.CpuMonitor() as monitor:
            rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/test_image.py"], cwd=common.REPO_ROOT, env=env).returncode
        if rc != 0:
            raise ValueError(f"tests/test_image.py failed (exit {rc}); nothing recorded")
        result = json.loads(figures.read_text())
    config = {"builder": result.pop("builder"), "cold_store": cold}
    common.save_run("image", argv, started, monitor, False, config, result, args.out)


def _mb(n: int) -> str:
    return _f(n / 1e6, 0) + " MB"


def section(result: dict | None) -> str:
    """docs/benchmarks.md's part for this run (bench.report calls it)."""
    head = "## The image and the bento's image (`docker build` / `bentoml containerize`)\n\n"
    if not result:
        return head + "Not measured: run `python -m bench.image`.\n"
    m, r = result["machine"], result["restart"]
    rows = [["Dockerfile (`buildah build`)", _f(result["dockerfile_build_s"], 1), _mb(result["dockerfile_image_bytes"]),
             _f(result["dockerfile_start_to_healthy_s"], 2) + " (HEALTHCHECK)"],
            ["bento (`bentoml containerize --backend buildah`)", _f(result["bento_containerize_s"], 1),
             _mb(result["bento_image_bytes"]), _f(result["bento_start_to_ready_s"], 2) + " (/readyz)"]]
    made = result.get("base_debootstrap_s")
    base = (f"made with debootstrap in {_f(made, 1)} s before the builds" if made is not None
            else "reused from an earlier run")
    return (head + _table(["image", "build s", "size (uncompressed)", "run to ready, s"], rows) + "\n\n"
            f"First `/predict` on the Dockerfile's image {_f(result['dockerfile_first_request_ms'], 1)} ms, then "
            f"{_f(result['dockerfile_next_requests_ms'], 1)} ms (the median of the next four). A `/submission` "
            f"task of {r['images']:,} images stopped after {r['done_when_stopped']} and finished by a new "
            f"container on the same volume wrote {'the same CSV as' if r['csv_equal'] else 'another CSV than'} "
            f"an uninterrupted run. Both on a Debian bookworm base standing in for the CUDA base (no registry "
            f"here; {base}), {m['cpu']} ({m['usable_cpus']} CPUs; {', '.join(m['cpu_flags'])}), "
            f"{result['finished'][:10]}, {result['config']['builder']}; "
            + ("built from an empty image store (no layer cache). " if result["config"].get("cold_store")
               else "build times count what the layer cache already held. ")
            + "Command: `" + result["command"] + "`.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.image", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "image.json", help="result JSON")
    p.add_argument("--no-report", action="store_true", help="do not re-render docs/benchmarks.md")
    args = p.parse_args(argv)
    common.setup_logging()
    return common.run_part(lambda: run(args, argv), args.no_report)


if __name__ == "__main__":
    sys.exit(main())
