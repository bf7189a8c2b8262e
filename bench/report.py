"""Render ``bench/results/*.json`` into ``docs/benchmarks.md`` and the ``docs/bench_*.png`` plots
(the figures themselves are drawn by :mod:`bench.plots`).

Every benchmark script calls this when it finishes, so the document always shows the latest
results of each part side by side with the machine and the exact command that produced them.
Nothing here measures or estimates anything: a missing result is written as "not measured".

    python -m bench.report                     # re-render from bench/results/
    python -m bench.report --results DIR --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import budget_report, common, memory_report, rest_report, train_report
from bench.fmt import f as _f, pct as _pct, table as _table
from bench.targets_report import REST_CLIENTS, model_label as _model_label, targets_section
from bench.targets_report import rest_level as _rest_level, rest_modes as _rest_modes
from bench.plots import plot_latency, plot_stages, plot_throughput
from maskdata.io import atomic_write_text

log = logging.getLogger(__name__)

SHARED_ABOVE = 0.2  # cores' worth of other processes' CPU time during a run that we call "shared"


# ----------------------------------------------------------------------------- sections

def machine_section(results: dict[str, dict]) -> str:
    if not results:
        return "## Machine\n\nNo results yet: run `make bench`.\n"
    # the newest part's machine heads the section; each part's own CPU is in its row (parts can come
    # from different machines: results are committed and re-run one at a time)
    first = max(results.values(), key=lambda r: r.get("finished", ""))["machine"]
    v = first.get("versions", {})
    lines = ["## Machine", "",
             f"- CPU: {first['cpu']} ({first['usable_cpus']} usable of {first['logical_cpus']} logical CPUs), "
             f"SIMD: {', '.join(first.get('cpu_flags') or []) or 'unknown'}; memory {first.get('memory_gib')} GiB; "
             f"GPU: {', '.join(first.get('gpus') or []) or 'none'}",
             f"- {first['os']}, Python {first['python']}; "
             + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
             "", "Each part ran at its own time; `other cores` is how many cores' worth of CPU time *other* "
             "processes used while it ran (all CPUs' busy time minus the benchmark's own and its reaped "
             f"children's, from /proc/stat). Above {SHARED_ABOVE} the machine was shared and absolute "
             "figures are low; ratios measured within one run hold better.", ""]
    rows = []
    for name, r in results.items():
        m = r.get("cpu_monitor", {})
        other = m.get("other_cores")
        cpu = r.get("machine", {})
        rows.append([name, f"{cpu.get('cpu', '?')} ({cpu.get('usable_cpus', '?')} CPUs; "
                           f"{', '.join(cpu.get('cpu_flags') or []) or 'flags unknown'})",
                     r["started"], r["finished"], _f(m.get("wall_s"), 0, " s"), _f(other, 2),
                     "shared" if other is not None and other > SHARED_ABOVE else "quiet",
                     " / ".join(_f(x, 1) for x in m.get("loadavg_start", [])[:1] + m.get("loadavg_end", [])[:1]),
                     "yes" if r.get("quick") else "no"])
    lines.append(_table(["part", "CPU (SIMD)", "started (UTC)", "finished (UTC)", "wall", "other cores", "machine",
                         "load avg start / end", "--quick"], rows))
    return "\n".join(lines) + "\n"


def commands_section(results: dict[str, dict]) -> str:
    lines = ["## Commands", "", "Everything: `make bench` (from the repository root). The runs shown here:", "",
             "```"]
    lines += [r["command"] for r in results.values()] or ["# none yet"]
    lines += ["```", ""]
    for r in results.get("batch_job", {}).get("runs", []):
        cmds = [r[k]["command"] for k in ("baseline", "submit", "submit_no_draft", "submit_int8") if k in r]
        lines += [f"Batch job commands ({_model_label(r)}), each timed end to end by "
                  f"`{r.get('bench_command', 'bench.batch_job')}`"
                  + (f" (training recorded in `{r['train_config']}`)" if r.get("train_config") else "") + ":",
                  "", "```", *cmds, "```", ""]
    for m in results.get("rest", {}).get("modes", [])[:2]:
        env = " ".join(f"{k}={v}" for k, v in (m.get("env") or {}).items())
        lines += [f"REST server ({m['mode']}): `MASK_MODEL={results['rest']['config']['model']} {env} "
                  f"{m.get('server_command', '')}`", ""]
    return "\n".join(lines)


def _machine_note(r: dict) -> str:
    """'quiet' / 'shared (x.xx)' from a batch-job row's own CPU monitor."""
    other = (r.get("cpu_monitor") or {}).get("other_cores")
    if other is None:
        return "not recorded"
    return f"shared ({other:.2f})" if other > SHARED_ABOVE else f"quiet ({other:.2f})"


def _variant_labels(r: dict) -> list[tuple[str, str]]:
    """(key, description) of the reference mask-submit runs present in a batch-job row."""
    out = []
    for key in r:
        if key == "submit_no_draft":
            out.append((key, "mask-submit with JPEG draft decoding off (bench-made metadata variant)"))
        elif key.startswith("submit_draft_scale_"):
            out.append((key, f"mask-submit with draft_scale={key.rsplit('_', 1)[1]} (bench-made metadata variant)"))
        elif key == "submit_int8":
            out.append((key, "mask-submit on the INT8 export (`mask-export --int8`)"))
    return out


def model_only_section(mo: dict | None) -> str:
    if not mo:
        return "## 1. Model only\n\nNot measured yet: `python -m bench.model_only`.\n"
    cells: dict[tuple, dict[str, dict]] = {}
    for r in mo["cpu_rows"]:
        cells.setdefault((r["arch"], r["height"], r["width"], r["batch"]), {})[r["backend"]] = r

    def cell(r: dict | None, ratio: bool = True) -> str:
        if not r:
            return "not measured"
        if r.get("status") != "measured":
            return f"{r.get('status')}: {r.get('error') or r.get('reason', '')}"
        text = f"{r['img_per_s']:,.1f}"
        if ratio and r.get("ratio_to_eager") is not None:
            text += f" ({r['ratio_to_eager']:.2f}×)"
        return text

    rows = [[a, f"{h}×{w}", b, cell(c.get("torch_eager"), False), cell(c.get("ort_fp32")), cell(c.get("ort_int8")),
             max((x.get("repeats", 0) for x in c.values()), default=0)]
            for (a, h, w, b), c in cells.items()]
    cfg = mo["config"]
    lines = ["## 1. Model only", "",
             "Images per second of the network alone on in-memory uint8 NHWC batches (random init; random "
             "pixels), with the ratio to PyTorch eager of the same arch, size and batch in brackets. "
             "PyTorch runs in `eval()` under `torch.inference_mode()`; the ORT rows run the product's "
             "exported graph through `serving.predictor.Predictor` (CPUExecutionProvider, graph "
             "optimizations on); INT8 is `export.variants.to_int8` (static QDQ, per-channel, "
             f"{cfg['calib_images']} random calibration images). Each cell: 1 warm-up call, then the median of "
             f"at least {cfg['min_repeats']} timed calls or {cfg['budget_s']:g} s, capped at {cfg['cap_s']:g} s "
             f"(so the slowest cells rest on 1–2 calls). torch threads: {mo.get('torch_threads')}; ORT intra-op "
             "threads: its default (one per physical core). `mobilenet_v3` is `mobilenet_v3_large` "
             "(`--archs mobilenet_v3_small` adds the small one).", "",
             _table(["arch", "H×W", "batch", "PyTorch eager img/s", "ORT FP32 img/s (× eager)",
                     "ORT INT8 img/s (× eager)", "calls"], rows), "",
             "![throughput vs batch size](bench_throughput.png)", "", "### GPU", ""]
    gpu = mo.get("gpu", {})
    if gpu.get("measured"):
        gcells: dict[tuple, dict[str, dict]] = {}
        for r in mo["gpu_rows"]:
            gcells.setdefault((r["arch"], r["height"], r["width"], r["batch"]), {})[r["backend"]] = r
        lines += [f"Device: {', '.join(gpu.get('device') or [])}.", "",
                  _table(["arch", "H×W", "batch", "PyTorch FP16 img/s", "ORT CUDA FP16 (× torch)",
                          "ORT TensorRT FP16 (× torch)"],
                         [[a, f"{h}×{w}", b, cell(c.get("torch_fp16"), False), cell(c.get("ort_cuda_fp16")),
                           cell(c.get("ort_tensorrt_fp16"))] for (a, h, w, b), c in gcells.items()])]
    else:
        sizes = ", ".join(f"{h}×{w}" for h, w in cfg["gpu_sizes"])
        lines += [f"**Not measured** ({gpu.get('reason', 'no CUDA device')}): PyTorch FP16, ORT CUDA FP16 and "
                  f"ORT TensorRT FP16 at batch {', '.join(map(str, cfg['gpu_batches']))} ({sizes}) run only where "
                  "`torch.cuda.is_available()`; no figure here is estimated. (That code path, `gpu_cells` in "
                  "`bench/model_only.py`, has not yet run on a GPU machine.)"]
    return "\n".join(lines) + "\n"


def _pre(p: dict | None) -> str:
    if not p:
        return "not recorded"
    draft = f"JPEG draft on, scale {p.get('draft_scale', 1)}" if p.get("jpeg_draft") else "JPEG draft off"
    return f"{p['height']}×{p['width']}, {p.get('resize_filter')}, {draft}"


def _dominant(fractions: dict[str, float]) -> str:
    if not fractions:
        return "–"
    k = max(fractions, key=fractions.get)
    return f"{k} ({fractions[k]:.0%})"


def _shortfall(r: dict) -> list[str]:
    """Where each precision's end-to-end share of its ceiling goes: start-up vs the loop itself."""
    out = []
    for key, label in (("submit", "FP32"), ("submit_int8", "INT8")):
        v = r.get(key) or {}
        if v.get("share_of_ceiling") is None or not v.get("loop_s"):
            continue
        start = v["wall_s"] - v["loop_s"]
        out.append(f"- {label}: {_pct(v['share_of_ceiling'], 0)} of its ceiling end to end, its loop "
                   f"{_pct(v['loop_share_of_ceiling'], 0)}; the difference is start-up (interpreter, imports, "
                   f"model load, output): {_f(start, 2)} s of {_f(v['wall_s'], 2)} s "
                   f"({_pct(start / v['wall_s'], 0)}), which a 12,600-image run spreads six times thinner.")
    return out


def decode_all_cores(ceilings: dict) -> float:
    """The decode ceiling taken with one thread per core; results written before the key said so
    call it ``decode_img_per_s_2_threads`` (taken with all cores as well)."""
    return ceilings.get("decode_img_per_s_all_cores", ceilings.get("decode_img_per_s_2_threads"))


def _batch_run_lines(r: dict) -> list[str]:
    """One batch-job run's stage breakdown, ceilings and variant rows."""
    st = r["stages"]
    names = ["read", "decode", "resize", "to_tensor", "infer", "write"]
    srows = []
    for k in names:
        b, s = st["baseline"]["seconds"].get(k), st["submit"]["seconds"].get(k)
        if b is None and s is None:
            continue
        srows.append([k, f"{_f(b, 2, ' s')} ({_pct(st['baseline']['fraction'].get(k))})" if b is not None else "–",
                      f"{_f(s, 2, ' s')} ({_pct(st['submit']['fraction'].get(k))})" if s is not None else "– (uint8 goes in as is)"])
    c = r["ceilings"]
    dec_all, cores = decode_all_cores(c), c.get("cores", "all")
    sub_loop = r["submit"].get("loop_img_per_s")
    lines: list[str] = []
    lines += [f"### Stages and ceilings: {_model_label(r)}", "",
              f"Stage breakdown from an instrumented *serial* pass of each pipeline over {st['images']} of the "
              "images (each stage timed alone; the share is of the pass's total; the baseline's pass runs in a "
              "fresh process like its real run). mask-submit overlaps decoding (its decode workers, one per core) with inference, so "
              "its real wall time is below its serial sum. The ceilings are measured over all images right "
              "after the two commands.", "",
              _table(["stage", "baseline", "mask-submit (serial)"], srows), "",
              f"- Dominant stage: baseline **{_dominant(st['baseline']['fraction'])}**, "
              f"mask-submit **{_dominant(st['submit']['fraction'])}**.",
              f"- Binding ceiling: **{'inference' if c['infer_img_per_s'] <= dec_all else 'decoding'}** "
              f"({_f(min(c['infer_img_per_s'], dec_all))} img/s); mask-submit's loop "
              f"reaches {_pct(sub_loop / min(c['infer_img_per_s'], dec_all) if sub_loop else None, 0)} "
              "of it (ceilings and job measured separately, so figures near 100 % mean \"at the ceiling\" "
              "within run-to-run noise).",
              f"- Inference ceiling (ORT alone, batch 64, in-memory uint8): {_f(c['infer_img_per_s'])} img/s "
              f"(loop at {_pct(sub_loop / c['infer_img_per_s'] if sub_loop else None, 0)}). Preprocessing ceiling "
              f"(pure read + draft decode + resize loop): {_f(dec_all)} img/s with {cores} threads (all "
              f"cores), {_f(c['decode_img_per_s_1_thread'])} with 1 (loop at "
              f"{_pct(sub_loop / dec_all if sub_loop else None, 0)} of the all-cores figure).",
              *_shortfall(r),
              f"- Identical predictions: {_pct(r['identical'], 2)} as shipped (preprocessing recorded in the "
              f"model: {_pre(r.get('preprocess'))}); what remains with JPEG draft off "
              f"({_pct(r.get('identical_without_draft'), 2)}) is what ONNX Runtime vs PyTorch changes.", ""]
    vrows = [[label, _f(r[key]["img_per_s"]), f"{r[key]['ratio']:.2f}×", _pct(r[key]["identical"], 2)]
             for key, label in _variant_labels(r)]
    if vrows:
        lines += ["Reference runs of `mask-submit` on variants of the same model (same images, same baseline):",
                  "", _table(["variant", "img/s end to end", "× baseline", "identical to baseline"],
                             [["as shipped", _f(r["submit"]["img_per_s"]), f"{r['ratio']:.2f}×",
                               _pct(r["identical"], 2)], *vrows]), ""]
    return lines


def batch_section(job: dict | None) -> str:
    if not job:
        return "## 2. Batch job\n\nNot measured yet: `python -m bench.batch_job`.\n"
    lines = ["## 2. Batch job: competition baseline loop vs `mask-submit`", "",
             "Same checkpoint on both sides (the `--checkpoint` given — `make bench` passes the default recipe's `runs/default/best.pt` — or else trained briefly with `mask-train` on the synthetic train split; "
             "exported with `mask-export`), same synthetic 384×512 JPEGs, both run as commands on a warm page "
             "cache (files read and libraries imported once before timing), interleaved "
             f"{job.get('config', {}).get('repeats', 1)}× with the fastest run of each counting. *End to end* includes "
             "interpreter start, imports and model load; "
             "*loop* is each job's own decode+infer+write time. The baseline is `bench/baseline.py`, written "
             "the way the competition's starter `inference.py` is: `Image.open` → `Resize((H, W), BILINEAR)` → "
             "`ToTensor()` → `Normalize()` per image in a `Dataset`, `DataLoader(batch_size=1000, "
             "num_workers=cpu_count() // 2, shuffle=False)` (its defaults: decoding in worker processes beside "
             "the model), eager PyTorch in `eval()` under `no_grad`; batch 1000 is the headline, batch 64 is "
             "shown beside it. `mask-submit` runs with its defaults (decode threads niced by 10, batch 64, JPEG draft "
             "decoding, ONNX Runtime). *Ceiling* = 1 / (1/model-only + 1/decode-only), both measured on all "
             "cores in the same run after the commands; *share* is `mask-submit`'s end-to-end img/s over it. "
             "Predictions can differ where the two resizes differ (full decode + "
             "PIL resize vs draft decode + PIL resize); the share of identical predictions is measured, not assumed.",
             ""]
    rows = []
    for r in job["runs"]:
        acc, c = r.get("accuracy", {}), r["ceilings"]
        b64, i8 = r.get("baseline_b64", {}), r.get("submit_int8", {})
        base = r["baseline"]["img_per_s"]
        lr = f", lr {r['train_lr']:g}" if r.get("train_lr") else ""
        of = f" of {r['train_epochs']}" if r.get("train_epochs") else ""
        rows.append([f"{r['arch']} (best at ep. {r.get('trained_epochs', '?')}{of}{lr}, val F1 {_f(r.get('val_f1'), 2)})",
                     f"{r['input_size'][0]}×{r['input_size'][1]}", r["images"],
                     f"{_f(base)} / {_f(b64.get('img_per_s'))}",
                     f"{_f(r['submit']['img_per_s'])} (**{r['ratio']:.2f}×**)",
                     f"{_f(c.get('combined_img_per_s'))} ({_pct(r['submit'].get('share_of_ceiling'), 0)})",
                     _pct(r["identical"], 2),
                     f"{_f(i8.get('img_per_s'))} (**{_f(i8.get('ratio'), 2)}×**)",
                     f"{_f(c.get('combined_int8_img_per_s'))} ({_pct(i8.get('share_of_ceiling'), 0)})",
                     _pct(i8.get("identical_to_fp32"), 2),
                     f"{_pct(acc.get('baseline'))} / {_pct(acc.get('submit'))}", _machine_note(r)])
    lines += [_table(["model", "input", "images", "baseline img/s (batch 1000 / 64)",
                      "mask-submit FP32 img/s (× baseline 1000)", "FP32 ceiling (share)", "FP32 identical to baseline",
                      "INT8 img/s (× baseline 1000)", "INT8 ceiling (share)", "INT8 identical to FP32",
                      "accuracy vs truth (baseline / submit)", "machine (other cores)"], rows), "",
              "Each row is measured at its own time (`--append` keeps the others); *machine* is that row's "
              "own CPU monitor, as in the Machine section.", ""]
    for r in job["runs"]:
        lines += _batch_run_lines(r)
    lines += ["![stage breakdown](bench_stages.png)", ""]
    return "\n".join(lines)


def _model_share(rest: dict, mo: dict | None, off: dict) -> str | None:
    """How much of a request the model is: arithmetic on measured figures only (model-only rows of
    the served arch and size vs the batching-off server's req/s at 32 clients)."""
    inp = next((m.get("input") for m in rest["modes"] if m.get("input")), None)
    arch = next((m.get("arch") for m in rest["modes"] if m.get("arch")), None)
    o32 = _rest_level(off, REST_CLIENTS)
    if not (mo and inp and arch and o32 and o32["req_per_s"]):
        return None
    h, w = inp["shape"][1], inp["shape"][2]
    ort = {r["batch"]: r["img_per_s"] for r in mo["cpu_rows"] if r["arch"] == arch and r["height"] == h
           and r["width"] == w and r["backend"] == "ort_fp32" and r.get("status") == "measured"}
    if 1 not in ort or len(ort) < 2:
        return None
    big = max(ort)
    cores = rest["machine"]["usable_cpus"]
    per_request = 1000 * cores / o32["req_per_s"]
    t1, tb = 1000 / ort[1], 1000 / ort[big]
    return (f"- Where the time goes: the served model ({arch}, {h}×{w}) takes {t1:.2f} ms per image at batch 1 "
            f"and {tb:.2f} ms at batch {big} (model-only ORT FP32 rows; single head, same backbone), while a request "
            f"costs at most {per_request:.1f} ms of CPU ({cores} cores ÷ {o32['req_per_s']:.0f} req/s with batching "
            f"off at {REST_CLIENTS} clients, the load generator's share included). The model is roughly "
            f"{t1 / per_request:.0%} of a request, so batching the model call alone cannot buy much; the rest is "
            "per-request work outside the model (e.g. HTTP and multipart parsing, the upload's temporary file, "
            "JPEG decode, thread hand-offs, JSON) that batching does not touch.")


def rest_section(rest: dict | None, model_only: dict | None = None) -> str:
    if not rest:
        return "## 3. REST\n\nNot measured yet: `python -m bench.rest`.\n"
    cfg = rest["config"]
    lines = ["## 3. REST: `bentoml serve` under load", "",
             f"Closed-loop clients (`bench/loadgen.py`, asyncio + httpx, on the same machine as the server) post "
             f"{cfg['images']} real synthetic JPEGs in turn to `POST /predict` on loopback; each level runs "
             f"{cfg['warmup_s']:g} s unmeasured then {cfg['duration_s']:g} s measured (requests *started* in the "
             f"window count). Model: `{cfg['model']}`. Errors are non-200 answers, timeouts and connection errors. "
             "*batching_on* is the service as shipped (`bentoml serve` with `bentofile.yaml`; dynamic batching "
             "with the `MASK_MAX_BATCH_SIZE` / `MASK_BATCH_WAIT_MS` / `MASK_MAX_QUEUE` defaults); *batching_off* is the same "
             "server with `MASK_BATCHING=0` (one model call per request). Each mode is confirmed on "
             "`GET /model` (`limits.batching`) and, after the run, on `/metrics` (batched model calls). The load "
             "generator shares the 2 cores with the server, so high-concurrency figures include its own CPU use.",
             ""]
    rows = []
    for m in rest["modes"]:
        if m.get("status") != "measured":
            rows.append([m["mode"], "–", m.get("status", "not measured"), "–", "–", "–", "–", m.get("reason", "")])
            continue
        for lv in m["levels"]:
            rows.append([m["mode"], lv.get("label", lv["clients"]), _f(lv["req_per_s"]), _f(lv["p50_ms"], 0), _f(lv["p95_ms"], 0),
                         _f(lv["p99_ms"], 0), lv["errors"], ", ".join(f"{k}: {v}" for k, v in lv["error_kinds"].items())])
    lines += [_table(["mode", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "error kinds"], rows), ""]
    for m in rest["modes"]:
        lim = m.get("limits") or {}
        bb = m.get("bentoml_batching")
        lines.append(f"- {m['mode']}: GET /model limits: batching={lim.get('batching', 'not reported')}, "
                     f"max_batch_size={lim.get('max_batch_size')}, batch_wait_ms={lim.get('batch_wait_ms')}, "
                     f"max_queue={lim.get('max_queue')}; "
                     f"provider {m.get('provider')}; /metrics after the run: "
                     + (f"{bb['model_calls']} batched model calls, mean batch {bb['mean_batch_size']:.2f} "
                        f"(`{bb['metric']}`)" if bb else "no batched model call"))
    modes = _rest_modes(rest)
    on, off = modes.get("batching_on"), modes.get("batching_off")
    if on and off and on.get("status") == off.get("status") == "measured":
        ratios = []
        for lv in (v for v in on["levels"] if "after" not in v.get("label", "")):
            o = _rest_level(off, lv["clients"])
            if o and o["req_per_s"]:
                ratios.append(f"{lv['clients']} client{'s' if lv['clients'] > 1 else ''} "
                              f"{lv['req_per_s'] / o['req_per_s']:.2f}×")
        lines.append(f"- req/s batching on ÷ off: {', '.join(ratios)}.")
        on1, off1 = _rest_level(on, 1), _rest_level(off, 1)
        if on1 and off1:
            diff = on1["p50_ms"] - off1["p50_ms"]
            lines.append(f"- With 1 client (no batch can form) p50 is {_f(on1['p50_ms'], 1)} ms on vs "
                         f"{_f(off1['p50_ms'], 1)} ms off: "
                         + (f"{diff:.1f} ms is the fixed cost of the batching path per request." if diff > 0.5 else
                            "the batching path adds no measurable fixed cost."))
        share = _model_share(rest, model_only, off)
        if share:
            lines.append(share)
    lines += ["", "![latency vs concurrency](bench_latency.png)", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point

def _first_run_section(result: dict | None) -> str:
    from bench import first_run   # the first-run part renders its own section

    return first_run.section(result)


def _ray_section(result: dict | None) -> str:
    from bench import ray_job   # the Ray part renders its own section

    return ray_job.section(result)


def _image_section(result: dict | None) -> str:
    from bench import image   # the image part renders its own section

    return image.section(result)


def render(results: dict[str, dict], docs_dir: Path) -> str:
    if "model_only" in results:
        plot_throughput(results["model_only"], docs_dir / "bench_throughput.png")
    if "rest" in results:
        plot_latency(results["rest"], docs_dir / "bench_latency.png")
    if "batch_job" in results:
        plot_stages(results["batch_job"], docs_dir / "bench_stages.png")
    parts = ["# Benchmarks", "",
             "Generated by `bench/report.py` from `bench/results/*.json`; do not edit by hand — rerun "
             "`make bench` (or one of the scripts below) instead. Every figure was measured by the command "
             "shown, on the machine described; nothing is estimated, and a part that did not run says so. "
             "Machines here are shared and noisy: absolute times move between runs, ratios measured within "
             "one run hold better. How to run and read these: [bench/README.md](../bench/README.md). The "
             "synthetic images and the briefly trained checkpoints live in `data/bench/` (not in git; "
             "`bench.batch_job` makes them when missing).", "",
             targets_section(results), machine_section(results), commands_section(results),
             _first_run_section(results.get("first_run")), _image_section(results.get("image")),
             model_only_section(results.get("model_only")), batch_section(results.get("batch_job")),
             rest_section(results.get("rest"), results.get("model_only")),
             budget_report.thread_budget_section(results.get("thread_budget")),
             budget_report.int8_section(results.get("int8_calibration")),
             budget_report.int8_isa_section(results.get("int8_isa")),
             budget_report.bf16_section(results.get("bf16")),
             budget_report.eval_scale_section(results.get("eval_scale")),
             memory_report.section(results.get("memory_soak")),
             train_report.bare_section(results.get("train_bare")),
             train_report.ceiling_section(results.get("train_ceiling")),
             train_report.baseline_section(results.get("train_baseline")),
             rest_report.compare_section(results.get("rest"), docs_dir), _ray_section(results.get("ray_job"))]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=common.RESULTS_DIR, help="folder of result JSON files")
    p.add_argument("--out", type=Path, default=common.DOCS_DIR / "benchmarks.md", help="Markdown file to write")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        common.setup_logging()
    try:
        if not args.results.is_dir():
            raise FileNotFoundError(f"results folder not found: {args.results}")
        text = render(common.load_results(args.results), args.out.parent)
        atomic_write_text(args.out, text)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
