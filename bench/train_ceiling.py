"""The training ceiling: a bare training step vs the full ``mask-train`` run, and where the difference goes.

Bare step: forward + cross-entropy + backward + Adam on one random uint8 NHWC batch held in memory,
the same ``MaskNet`` (``training.models.create_model``), input size, batch, precision and torch
threads as the run; memory format as ``mask-train`` leaves it on a CPU (weights NCHW; the input is
channels-last already, since the model permutes uint8 NHWC), plus a channels-last-weights row for
comparison. It is measured before and after the full runs and the faster of the two is the ceiling.

Full run: ``mask-train`` (``training.cli.main``) in this process, so the same threads apply, with its
parts timed by wrapping them (exclusive times, nothing nested is counted twice):
the training loop (``engine.train_one_epoch``) split into *waiting for the next batch* and the rest
(the steps themselves plus per-step bookkeeping), validation (``engine.evaluate``), the decode cache
(``data.decode_all``), checkpoints/plots/CSV (``trainer._write_epoch``), TensorBoard, the temperature
fit, and the remainder (start-up: reading the layout, building the model and loaders).

    python -m bench.train_ceiling --data-dir data/bench/synth120/train --epochs 2

Writes ``bench/results/train_ceiling.json`` (rendered into docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as mask-train's entry point does, before torch loads

from bench import common  # noqa: E402
from bench.train_baseline import BATCH, LR, SIZE, mask_train_argv  # noqa: E402

log = logging.getLogger(__name__)
DTYPES = {"off": None, "bf16": "bfloat16"}


def bare_step(amp: str, channels_last: bool, steps: int, seed: int = 0, arch: str = "resnet18") -> dict:
    """img/s (wall) and images per CPU-second of the bare step."""
    import torch

    from maskdata.preprocess import Preprocess
    from training.loop.engine import autocast
    from training.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, "single", Preprocess(*SIZE))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x = torch.randint(0, 256, (BATCH, *SIZE, 3), dtype=torch.uint8)
    y = torch.randint(0, 18, (BATCH,))
    dtype = getattr(torch, DTYPES[amp]) if DTYPES[amp] else None
    cpu = torch.device("cpu")

    def step() -> None:
        with autocast(cpu, dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()   # warm-up: first-call allocations and kernel selection
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {"img_s": BATCH * steps / wall, "img_per_cpu_s": BATCH * steps / cpu_s, "steps": steps,
            "loadavg": round(os.getloadavg()[0], 2)}


class Timers:
    """Exclusive wall seconds per key of wrapped callables (a nested wrapped call counts for itself only)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[float] = []
        self.patched: list[tuple[object, str, object]] = []

    def wrap(self, key: str, fn):
        def inner(*a, **kw):
            t0 = time.perf_counter()
            self.stack.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                child, dt = self.stack.pop(), time.perf_counter() - t0
                self.totals[key] += dt - child
                if self.stack:
                    self.stack[-1] += dt
        return inner

    def patch(self, owner, name: str, key: str) -> None:
        orig = getattr(owner, name)
        self.patched.append((owner, name, orig))
        setattr(owner, name, self.wrap(key, orig))

    def restore(self) -> None:
        for owner, name, orig in reversed(self.patched):
            setattr(owner, name, orig)
        self.patched.clear()


TRAIN_WAIT = "loop: waiting for the next batch"


class _TimedLoader:
    """A DataLoader whose ``next()`` is timed as waiting for data (inside the training loop or validation)."""

    def __init__(self, loader, timers: Timers, in_loop: dict):
        self.loader, self.in_loop = loader, in_loop
        self.waits = {True: timers.wrap(TRAIN_WAIT, next), False: timers.wrap("validation: waiting for batches", next)}

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            try:
                yield self.waits[self.in_loop["active"]](it)
            except StopIteration:
                return


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def full_run(data_dir: Path, out: Path, epochs: int, amp: str) -> dict:
    """mask-train in this process with its parts timed; seconds per part, loop img/s, run img/s."""
    from training import cli, data
    from training.loop import calibration, engine, trainer
    from training.loop.tensorboard import RunLogger

    timers, loop = Timers(), {"images": 0, "seconds": 0.0, "cpu_s": 0.0, "active": False}
    orig_train, orig_loader = engine.train_one_epoch, data.make_loader

    def train_one_epoch(*a, **kw):
        loop["active"] = True
        c0 = _cpu_s()
        try:
            r = orig_train(*a, **kw)
        finally:
            loop["active"] = False
        loop["cpu_s"] += _cpu_s() - c0   # this process's threads plus the loader workers reaped at the epoch's end
        loop["images"] += r["images"]
        loop["seconds"] += r["seconds"]
        return r

    engine.train_one_epoch = train_one_epoch
    data.make_loader = lambda *a, **kw: _TimedLoader(orig_loader(*a, **kw), timers, loop)
    timers.patch(engine, "train_one_epoch", "loop: steps and bookkeeping")
    for owner, name, key in ((engine, "evaluate", "validation"), (data, "decode_all", "decode cache"),
                             (trainer, "_write_epoch", "checkpoints, CSV, plots"),
                             (calibration, "calibrate_best", "temperature fit"), (RunLogger, "epoch", "TensorBoard"),
                             (RunLogger, "report", "TensorBoard"), (RunLogger, "close", "TensorBoard")):
        timers.patch(owner, name, key)
    argv = mask_train_argv(data_dir, out, 0, epochs, amp)[2:]
    argv.remove("--no-tensorboard")   # the default run logs to TensorBoard: part of what it pays
    t0 = time.perf_counter()
    try:
        rc = cli.main(argv)
    finally:
        wall = time.perf_counter() - t0
        timers.restore()
        engine.train_one_epoch, data.make_loader = orig_train, orig_loader
    if rc != 0:
        raise ValueError(f"mask-train exited {rc}")
    parts = {k: round(v, 2) for k, v in timers.totals.items()}
    parts["start-up and the rest"] = round(wall - sum(timers.totals.values()), 2)
    wait = timers.totals.get(TRAIN_WAIT, 0.0)
    return {"amp": amp, "epochs": epochs, "wall_s": round(wall, 2), "train_images": loop["images"],
            "loop_s": round(loop["seconds"], 2), "loop_img_s": loop["images"] / loop["seconds"],
            "loop_img_per_cpu_s": loop["images"] / max(loop["cpu_s"], 1e-9),
            "loop_img_s_without_waits": loop["images"] / max(loop["seconds"] - wait, 1e-9),
            "run_img_s": loop["images"] / wall, "parts_s": parts,
            "command": "mask-train " + " ".join(argv).replace(str(out), "RUN")}


def measure(data_dir: Path, epochs: int, steps: int) -> dict:
    import torch

    amps = ("off", "bf16")
    bare = {amp: [bare_step(amp, False, steps)] for amp in amps}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="train_ceiling_") as tmp:
        for amp in amps:
            runs[amp] = full_run(data_dir, Path(tmp) / amp, epochs, amp)
            log.info("mask-train --amp %s: loop %.1f img/s, run %.1f img/s", amp, runs[amp]["loop_img_s"],
                     runs[amp]["run_img_s"])
    for amp in amps:
        bare[amp].append(bare_step(amp, False, steps))
    channels_last = {amp: bare_step(amp, True, steps) for amp in amps}
    rows = {}
    for amp in amps:
        ceiling = max(b["img_s"] for b in bare[amp])
        run = runs[amp]
        rows[amp] = {"bare_step": bare[amp], "ceiling_img_s": ceiling, "bare_channels_last_weights": channels_last[amp],
                     "full_run": run, "loop_share_of_ceiling": run["loop_img_s"] / ceiling,
                     "loop_share_without_waits": run["loop_img_s_without_waits"] / ceiling,
                     "ceiling_img_per_cpu_s": max(b["img_per_cpu_s"] for b in bare[amp]),
                     "loop_cpu_share_of_ceiling": run["loop_img_per_cpu_s"] / max(b["img_per_cpu_s"] for b in bare[amp]),
                     "run_share_of_ceiling": run["run_img_s"] / ceiling}
        log.info("--amp %s: ceiling %.1f img/s, loop %.0f %% of it", amp, ceiling, 100 * rows[amp]["loop_share_of_ceiling"])
    return {"torch_threads": torch.get_num_threads(), "precisions": rows,
            "bf16_over_fp32": {"ceiling": rows["bf16"]["ceiling_img_s"] / rows["off"]["ceiling_img_s"],
                               "loop": runs["bf16"]["loop_img_s"] / runs["off"]["loop_img_s"],
                               "ceiling_per_cpu_s": rows["bf16"]["ceiling_img_per_cpu_s"] / rows["off"]["ceiling_img_per_cpu_s"],
                               "loop_per_cpu_s": runs["bf16"]["loop_img_per_cpu_s"] / runs["off"]["loop_img_per_cpu_s"]}}


def bare_only(archs: list[str], steps: int, rounds: int) -> dict:
    """FP32 vs bf16 bare steps per architecture, alternating ``rounds`` times (no full run)."""
    import statistics

    import torch

    out = {}
    for arch in archs:
        got = {amp: [] for amp in DTYPES}
        for _ in range(rounds):
            for amp in DTYPES:
                got[amp].append(bare_step(amp, False, steps, arch=arch))
        med = {amp: {k: statistics.median(m[k] for m in ms) for k in ("img_s", "img_per_cpu_s")}
               for amp, ms in got.items()}
        out[arch] = {"median": med, "all": got,
                     "bf16_over_fp32": {k: med["bf16"][k] / med["off"][k] for k in ("img_s", "img_per_cpu_s")}}
        log.info("%s: bf16/FP32 %.2fx wall, %.2fx per CPU-s", arch, out[arch]["bf16_over_fp32"]["img_s"],
                 out[arch]["bf16_over_fp32"]["img_per_cpu_s"])
    return {"torch_threads": torch.get_num_threads(), "archs": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="DIR/train (train.csv and images/); required unless --bare-only")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each full run (default %(default)s)")
    p.add_argument("--steps", type=int, default=4, help="timed bare steps per measurement (default %(default)s)")
    p.add_argument("--bare-only", nargs="+", metavar="ARCH",
                   help="only FP32 vs bf16 bare steps of these models, alternating --rounds times, into "
                        "bench/results/train_bare.json (with --threads: torch threads)")
    p.add_argument("--rounds", type=int, default=3, help="--bare-only: alternations (default %(default)s)")
    p.add_argument("--threads", type=int, help="--bare-only: torch.set_num_threads (default: torch's own)")
    p.add_argument("--out", type=Path, help="default bench/results/train_ceiling.json (train_bare.json with --bare-only)")
    args = p.parse_args(argv)
    common.setup_logging()
    if args.bare_only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        out = args.out or common.RESULTS_DIR / "train_bare.json"

        def bare_body() -> None:
            started = common.utc_now()
            with common.CpuMonitor() as monitor:
                result = bare_only(args.bare_only, args.steps, args.rounds)
            common.save_run("train_ceiling", argv, started, monitor, False,
                            {"steps": args.steps, "rounds": args.rounds, "batch": BATCH, "input": list(SIZE)}, result, out)

        return common.run_part(bare_body, no_report=True)
    args.out = args.out or common.RESULTS_DIR / "train_ceiling.json"

    def body() -> None:
        if args.data_dir is None or not (args.data_dir / "train.csv").is_file():
            raise FileNotFoundError(f"no train.csv in {args.data_dir} (--data-dir DIR/train)")
        started = common.utc_now()
        with common.CpuMonitor() as monitor:
            result = measure(args.data_dir, args.epochs, args.steps)
        config = {"epochs": args.epochs, "steps": args.steps, "data_dir": str(args.data_dir), "batch": BATCH,
                  "input": list(SIZE), "model": "resnet18 MaskNet, single head, random init"}
        common.save_run("train_ceiling", argv, started, monitor, False, config, result, args.out)

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
