"""The side-by-side REST comparison for docs/benchmarks.md: the service as shipped,
``MASK_BATCHING=0``, BentoML's gallery pattern and the no-op ceiling, each at 1, 8, 32, 128
clients and 1 client right after the burst, with the issue's targets judged on ratios from the
same run. Called by :mod:`bench.report`; reads what :mod:`bench.rest` wrote."""
from __future__ import annotations

import re
from pathlib import Path

from bench.fmt import f as _f, met as _met

NAMES = {"batching_on": "as shipped (dynamic batching)", "batching_off": "`MASK_BATCHING=0`",
         "gallery": "BentoML gallery pattern (batchable API, PIL, torch eager)", "noop": "no-op endpoint (ceiling)"}
AFTER_BURST_RATIO, GALLERY_RATIO, CEILING_SHARE, CLIENTS = 1.5, 1.3, 0.5, 32


def _level(mode: dict | None, label: str) -> dict | None:
    if not mode or mode.get("status") != "measured":
        return None
    return next((lv for lv in mode["levels"] if lv.get("label", str(lv["clients"])) == label), None)


def targets(rest: dict) -> list[list[str]]:
    """[target, measured, verdict] rows for the issue's REST targets."""
    modes = {m["mode"]: m for m in rest.get("modes", [])}
    on = modes.get("batching_on")
    after_label = next((lv["label"] for lv in (on or {}).get("levels", []) if "after" in lv.get("label", "")), None)
    fresh, after = _level(on, "1"), _level(on, after_label) if after_label else None
    rows = []
    if fresh and after and fresh["p50_ms"] and after["p50_ms"]:
        r = after["p50_ms"] / fresh["p50_ms"]
        rows.append([f"after a burst: 1-client p50 within {AFTER_BURST_RATIO:g}× of fresh",
                     f"{r:.2f}× ({after['p50_ms']:.1f} vs {fresh['p50_ms']:.1f} ms)", _met(r <= AFTER_BURST_RATIO)])
    else:
        rows.append([f"after a burst: 1-client p50 within {AFTER_BURST_RATIO:g}× of fresh", "not measured", ""])
    burst = _level(on, "128")
    rows.append(["128 clients: 0 errors within the default queue bound",
                 f"{burst['errors']} errors ({burst['requests']} answered)" if burst else "not measured",
                 _met(None if not burst else burst["errors"] == 0)])
    at = {k: _level(modes.get(k), str(CLIENTS)) for k in NAMES}
    mine = at["batching_on"]
    for key, need, text in (("gallery", GALLERY_RATIO, f"≥ {GALLERY_RATIO:g}× the gallery pattern"),
                            ("batching_off", 1.0, "≥ the `MASK_BATCHING=0` figure"),
                            ("noop", CEILING_SHARE, f"≥ {CEILING_SHARE:.0%} of the no-op ceiling")):
        other = at[key]
        if mine and other and other["req_per_s"]:
            r = mine["req_per_s"] / other["req_per_s"]
            rows.append([f"{CLIENTS} clients: {text}",
                         f"{r:.2f}× ({mine['req_per_s']:.1f} vs {other['req_per_s']:.1f} req/s)", _met(r >= need)])
        else:
            rows.append([f"{CLIENTS} clients: {text}", "not measured", ""])
    return rows


def _conditions(rest: dict) -> str:
    cfg, mon = rest.get("config", {}), rest.get("cpu_monitor", {})
    cores = rest.get("machine", {}).get("usable_cpus")
    start, end = (mon.get("loadavg_start") or [None])[0], (mon.get("loadavg_end") or [None])[0]
    text = (f"Model `{cfg.get('model')}`, {cfg.get('warmup_s')} s warm-up + {cfg.get('duration_s')} s measured per "
            f"level. Load average {_f(start, 2)} at the start and {_f(end, 2)} at the end on {cores} usable cores")
    busy = start is not None and cores and max(start, end or 0) > cores
    return text + (": the machine was shared with other jobs during this run, so absolute figures are low and "
                   "noisy; read ratios." if busy else ".")


def compare_section(rest: dict | None, docs_dir: Path) -> str:
    if not rest or not any(m["mode"] in ("gallery", "noop") for m in rest.get("modes", [])):
        return ""
    plot(rest, docs_dir / "bench_rest_compare.png")
    rows = []
    for m in rest["modes"]:
        name = NAMES.get(m["mode"], m["mode"])
        if m.get("status") != "measured":
            rows.append([name, "–", m.get("status", "not measured"), "–", "–", m.get("reason", "")])
            continue
        for lv in m["levels"]:
            kinds = ", ".join(f"{k}: {v}" for k, v in lv["error_kinds"].items())
            rows.append([name, lv.get("label", lv["clients"]), _f(lv["req_per_s"]), _f(lv["p50_ms"]),
                         _f(lv["p99_ms"]), f"{lv['errors']}{' (' + kinds + ')' if kinds else ''}"])
    lines = ["## 4. REST side by side", "",
             "One `python -m bench.rest` run, servers one after another on the same machine: "
             + "; ".join(f"*{NAMES[k]}*" for k in NAMES) + ". \"1 after 128\" is one client started the moment "
             "the 128-client level ends (no warm-up). " + _conditions(rest), "",
             "| server | clients | req/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "| target (ratios within this run) | measured | |", "| --- | --- | --- |"]
    lines += ["| " + " | ".join(r) + " |" for r in targets(rest)]
    for m in rest["modes"]:
        bb = m.get("bentoml_batching")
        if bb:
            lines.append(f"- {NAMES.get(m['mode'], m['mode'])}: {bb['model_calls']} model calls, mean batch "
                         f"{bb['mean_batch_size']:.2f} (`{bb['metric']}` on /metrics)")
    command = re.sub(r"--images( \S+)+?(?= --|$)", lambda m: f"--images <{m.group(0).count(' ')} JPEGs>",
                     rest.get("command", "python -m bench.rest"))
    lines += [f"- Command: `{command}`. Where a request's time goes (guard, "
              "BentoML's parse and temp file, decode, model, answer, the rest): `python -m bench.profile_predict`, "
              "figures in [serving.md](serving.md) (\"Per-request cost\").",
              "", "![side by side](bench_rest_compare.png)", ""]
    return "\n".join(lines)


def plot(rest: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import _save

    modes = [m for m in rest["modes"] if m.get("status") == "measured"]
    labels = list(dict.fromkeys(lv.get("label", str(lv["clients"])) for m in modes for lv in m["levels"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(modes), 1)
    for k, m in enumerate(modes):
        by = {lv.get("label", str(lv["clients"])): lv for lv in m["levels"]}
        xs = [i + k * width for i, lab in enumerate(labels) if lab in by]
        ax1.bar(xs, [by[lab]["req_per_s"] for lab in labels if lab in by], width, label=NAMES.get(m["mode"], m["mode"]).replace("`", ""))
        ax2.bar(xs, [by[lab]["p50_ms"] or 0 for lab in labels if lab in by], width)
    for ax, ylabel in ((ax1, "requests/s"), (ax2, "p50 latency (ms, log)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
        ax.set_xlabel("clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle("POST /predict side by side, one run")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
