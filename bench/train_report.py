"""docs/benchmarks.md sections for training: the bare-step ceiling and the competition's training loop."""
from __future__ import annotations

import statistics

from bench.budget_report import _flags, _load
from bench.fmt import f as _f, pct as _pct, table as _table

PRECISION = {"off": "FP32", "bf16": "bf16 autocast"}


def ceiling_section(result: dict | None) -> str:
    if not result:
        return "## Training ceiling\n\nNot measured yet: `python -m bench.train_ceiling`.\n"
    p = result["precisions"]
    rows = []
    for amp, r in p.items():
        run = r["full_run"]
        rows.append([PRECISION[amp], " / ".join(_f(b["img_s"]) for b in r["bare_step"]),
                     _f(r["bare_channels_last_weights"]["img_s"]), _f(run["loop_img_s"]),
                     _pct(r["loop_share_of_ceiling"], 0), _f(r["ceiling_img_per_cpu_s"]), _f(run["loop_img_per_cpu_s"]),
                     _pct(r["loop_cpu_share_of_ceiling"], 0), _f(run["run_img_s"])])
    parts = sorted({k for r in p.values() for k in r["full_run"]["parts_s"]})
    part_rows = [[k, *(_f(r["full_run"]["parts_s"].get(k), 2) for r in p.values())] for k in parts]
    part_rows.append(["whole run (wall)", *(_f(r["full_run"]["wall_s"], 2) for r in p.values())])
    ratio = result["bf16_over_fp32"]
    return "\n".join([
        "## Training ceiling: bare step vs the full `mask-train` run", "",
        f"`{result['command']}` — SIMD: {_flags(result)}; {_load(result)}; torch threads {result['torch_threads']}. "
        f"Same model (resnet18 `MaskNet`, single head, random init), {result['config']['input'][0]}×"
        f"{result['config']['input'][1]}, batch {result['config']['batch']}, Adam; the full run is "
        f"`{next(iter(p.values()))['full_run']['command']}` with `--amp` as in the row, "
        f"{result['config']['epochs']} epoch(s), in the same process. Bare step: random uint8 NHWC batch in "
        "memory, measured before and after the runs (the faster is the ceiling). *per CPU-s*: images per "
        "second of CPU time this process (and its loader workers) used — the figure that holds when other "
        "jobs share the cores; wall img/s fall with the machine's load.", "",
        _table(["precision", "bare step img/s (before / after)", "bare, channels-last weights", "loop img/s",
                "loop / ceiling", "bare img per CPU-s", "loop img per CPU-s", "loop / ceiling (CPU)",
                "whole run img/s"], rows), "",
        f"bf16 / FP32: ceiling {_f(ratio['ceiling'], 2)}× (per CPU-s {_f(ratio['ceiling_per_cpu_s'], 2)}×), "
        f"loop {_f(ratio['loop'], 2)}× (per CPU-s {_f(ratio['loop_per_cpu_s'], 2)}×).", "",
        "Where the whole run's wall time goes (seconds, exclusive: nothing nested counts twice):", "",
        _table(["part", *(PRECISION[a] for a in p)], part_rows), ""])


def _spread(values: list[float]) -> str:
    return (f"{_f(statistics.mean(values), 4)} ({', '.join(_f(v, 4) for v in values)})" if values else "–")


def baseline_section(result: dict | None) -> str:
    if not result:
        return "## Training: the competition's loop\n\nNot measured yet: `python -m bench.train_baseline`.\n"
    rows = []
    for r in result["runs"]:
        rows.append([r["variant"], r["seed"], _f(r["train_img_s"]), _f(r["train_s_per_epoch"], 1), _f(r["wall_s"], 1),
                     _f(r["cpu_s"], 0), _f(r["max_rss_mb"], 0), _f(r["best_val_f1"], 4), _f(r["last_val_f1"], 4)])
    base_cpu = {r["seed"]: r["cpu_s"] for r in result["runs"] if r["variant"].startswith("competition")}
    cpu = {}
    for r in result["runs"]:
        cpu.setdefault(r["variant"], []).append(base_cpu[r["seed"]] / r["cpu_s"])
    speed = [[v, " / ".join(_f(x, 2) for x in xs), " / ".join(_f(x, 2) for x in cpu[v])]
             for v, xs in result["speed_vs_baseline"].items()]
    f1 = [[v, _spread(xs)] for v, xs in result["best_val_f1"].items()]
    c = result["config"]
    parts = result.get("parts") or [result]
    how = "; ".join(f"`{p['command']}` ({p['started']} → {p['finished']} UTC, {_load(p)})" for p in parts)
    return "\n".join([
        "## Training: the competition's loop vs `mask-train`", "",
        f"{how} — SIMD: {_flags(result)}. {len(parts)} invocation(s), run at the same time, each comparing its "
        f"own runs. {c['model']}, {c['input'][0]}×"
        f"{c['input'][1]}, batch {c['batch']}, Adam 1e-3, {c['epochs']} epochs, no augmentation, the same "
        f"person-level split per seed; OMP_WAIT_POLICY={c.get('omp_wait_policy', '?')} for every command. The "
        "baseline decodes and resizes every image with PIL every epoch in one worker process "
        "(`cpu_count() // 2`); `mask-train` decodes once into its cache. Runs interleaved seed by seed. "
        f"`mask-train` command: `{result['commands']['mask-train']}`.", "",
        _table(["run", "seed", "train img/s", "train s / epoch", "whole run s", "CPU s", "peak RSS MB",
                "best val F1", "last val F1"], rows), "",
        "Relative to the baseline run of the same seed: training img/s (wall), and the whole run's CPU "
        "seconds (baseline's / this run's: decoding, training, validation and writing included). The runs of "
        "one seed follow each other, so a change in the machine's load between them moves the wall ratio; "
        "the CPU-time ratio depends on it far less (only kernels whose threads wait on each other burn more "
        "CPU on a busy machine).", "",
        _table(["run", "train img/s × baseline (per seed)", "CPU-time economy × baseline (per seed)"], speed), "",
        "Best-epoch validation macro F1, mean (per seed):", "", _table(["run", "val macro F1"], f1), ""])


def bare_section(result: dict | None) -> str:
    if not result:
        return ("## Training step: FP32 vs bf16 per model\n\nNot measured yet: "
                "`python -m bench.train_ceiling --bare-only plain_cnn resnet18 --threads 1`.\n")
    rows = []
    for arch, r in result["archs"].items():
        m, ratio = r["median"], r["bf16_over_fp32"]
        rows.append([arch, _f(m["off"]["img_s"]), _f(m["bf16"]["img_s"]), _f(ratio["img_s"], 2),
                     _f(m["off"]["img_per_cpu_s"]), _f(m["bf16"]["img_per_cpu_s"]), _f(ratio["img_per_cpu_s"], 2)])
    c = result["config"]
    return "\n".join([
        "## Training step: FP32 vs bf16 per model", "",
        f"`{result['command']}` — SIMD: {_flags(result)}; {_load(result)}; torch threads {result['torch_threads']}. "
        f"Bare step (forward + cross-entropy + backward + Adam, random uint8 batch of {c['batch']} at "
        f"{c['input'][0]}×{c['input'][1]}, single head), FP32 and bf16 autocast alternating {c['rounds']} times; "
        "medians. Images per CPU-second is the figure that survives other jobs on the cores.", "",
        _table(["model", "FP32 img/s", "bf16 img/s", "bf16 / FP32", "FP32 img per CPU-s", "bf16 img per CPU-s",
                "bf16 / FP32 (CPU)"], rows), ""])
