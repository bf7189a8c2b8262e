"""``mask-submit --engine ray`` on a multi-node Ray cluster of this machine, images on local disk or on a
loopback S3 server, beside the local engine — all in one run.

A head node with no CPUs (the driver joins it) and 1, 2 or 3 worker nodes (``ray.cluster_utils.Cluster``,
separate raylets and object stores, all on 127.0.0.1), the same 2,100 images and model as
``bench.ray_job``, the same fixed pool of ``--num-actors`` actors on every cluster size. Every node
shares this machine's cores, so more nodes cannot add speed here: the figures are the *overhead* of
spreading the job over nodes (object transfers between object stores, more raylets), not a speed-up.
The S3 server is moto's (``moto_server``, a single-threaded-per-request Python server on loopback):
it shows the object-store code path's cost, not an S3 service's speed.

Per run: the whole command's wall time, the summary line's loop seconds (read + decode + inference +
gathering) and so the start-up share (interpreter, ``ray.init`` join, model probe, Ray Data plan),
and whether the submission is byte-identical to the local engine's. Cluster start-up (head + nodes
until all are registered) is timed separately.

    python -m bench.ray_cluster                      # data/bench-ray as bench.ray_job makes it
    python -m bench.ray_cluster --nodes 1 2 --no-s3  # a shorter run

Writes ``bench/results/ray_cluster.json`` and prints the Markdown table quoted in docs/submit.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import common
from bench.ray_job import ensure_inputs

log = logging.getLogger(__name__)

NODE_ARGS = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 2**20}
BUCKET = "mask-bench"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
          "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}   # keep the driver on loopback, like the nodes


def start_s3(log_path: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1 (a free port) and its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from moto.server import main; main(sys.argv[1:])",
                             "-H", "127.0.0.1", "-p", str(port)], stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ValueError(f"moto_server did not start: {log_path.read_text()[-500:]}")
            time.sleep(0.2)


def upload(endpoint: str, folder: Path, prefix: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def start_cluster(nodes: int, cpus_per_node: int):
    """(cluster, seconds until head + ``nodes`` workers are registered)."""
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **NODE_ARGS})
    for _ in range(nodes):
        c.add_node(num_cpus=cpus_per_node, **NODE_ARGS)
    c.wait_for_nodes()
    return c, time.perf_counter() - t0


def run(label: str, model: Path, info: Path, images: str, out: Path, extra: list[str], reference: Path | None):
    r = common.timed_submit(model, info, images, out, extra)
    r.update(label=label, startup_s=round(r["wall_s"] - r["loop_s"], 2), wall_s=round(r["wall_s"], 2),
             loop_img_s=round(r["images"] / r["loop_s"], 1),
             identical=None if reference is None else out.read_bytes() == reference.read_bytes())
    log.info("%s: %s", label, r)
    return r


def measure(args, info: Path, images: Path, model: Path, work: Path) -> dict:
    runs, clusters = [], {}
    local = work / "local.csv"
    runs.append(run("local engine, local disk", model, info, str(images), local, [], None))
    s3_images = upload(os.environ["AWS_ENDPOINT_URL"], images, "eval/images") if not args.no_s3 else None
    if s3_images:
        runs.append(run("local engine, S3", model, info, s3_images, work / "local-s3.csv", [], local))
    ray_flags = ["--engine", "ray", "--num-actors", str(args.actors), "--cpus-per-actor", "1",
                 "--batch-size", str(args.batch_size)]
    for n in args.nodes:
        cluster, up_s = start_cluster(n, args.cpus_per_node)
        clusters[n] = round(up_s, 2)
        try:
            flags = ray_flags + ["--ray-address", cluster.address]
            runs.append(run(f"ray, {n} node(s), local disk", model, info, str(images), work / f"ray{n}.csv", flags,
                            local) | {"nodes": n})
            if s3_images:
                runs.append(run(f"ray, {n} node(s), S3", model, info, s3_images, work / f"ray{n}-s3.csv", flags,
                                local) | {"nodes": n})
        finally:
            cluster.shutdown()
    return {"runs": runs, "cluster_start_s": clusters}


def table(result: dict) -> str:
    rows = ["| run | wall s | loop s | loop img/s | start-up s | identical to local |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        same = "—" if r["identical"] is None else ("yes" if r["identical"] else "**no**")
        rows.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['loop_s']:.1f} | {r['loop_img_s']:.0f} | "
                    f"{r['startup_s']:.1f} | {same} |")
    starts = ", ".join(f"{n} node(s): {s:.1f} s" for n, s in result["cluster_start_s"].items())
    return "\n".join(rows) + f"\n\nCluster start-up (head + worker nodes registered): {starts}."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ray_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=common.REPO_ROOT / "data" / "bench-ray")
    p.add_argument("--onnx", type=Path, default=None, help="model to run (default: bench.ray_job's small one)")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="worker-node counts (default 1 2 3)")
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs each worker node offers")
    p.add_argument("--actors", type=int, default=2, help="--num-actors on every cluster size (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-s3", action="store_true", help="skip the object-store runs")
    args = p.parse_args(argv)
    if min(args.nodes) < 1 or args.actors < 1:
        print("error: --nodes and --actors must be at least 1", file=sys.stderr)
        return 2
    common.setup_logging()
    started = common.utc_now()
    work = args.data / "ray-cluster-bench"
    try:
        info, images, model = ensure_inputs(args.data, args.onnx, 300)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.update(S3_ENV)
        s3 = None
        if not args.no_s3:
            s3, endpoint = start_s3(work / "moto.log")
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            with common.CpuMonitor() as monitor:
                result = measure(args, info, images, model, work)
        finally:
            if s3 is not None:
                s3.terminate()
                s3.wait(timeout=30)
    except (ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common.save_run("ray_cluster", argv, started, monitor, False,
                    {"onnx": str(model), "nodes": args.nodes, "actors": args.actors,
                     "cpus_per_node": args.cpus_per_node, "batch_size": args.batch_size},
                    result, common.RESULTS_DIR / "ray_cluster.json")
    print(table(result))
    print(f"load average {os.getloadavg()}, other cores busy {monitor.summary.get('other_cores')}")
    return 0 if all(r["identical"] in (None, True) for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
