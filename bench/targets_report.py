"""The Targets table at the top of docs/benchmarks.md (bench.report calls :func:`targets_section`).

Each target is judged only on a machine where it can hold: the INT8 figures count toward a target
only where the CPU has the INT8 dot-product instructions (VNNI / AMX-INT8) and the bf16 one only
with AVX-512 BF16 / AMX-BF16 (:data:`bench.fmt.INT8_FAST_FLAGS`, :data:`bench.fmt.BF16_FAST_FLAGS`);
elsewhere the row says "not applicable" beside its measured figure.
"""
from __future__ import annotations

from bench import fmt

BATCH_TARGET_RATIO, IDENTICAL_TARGET, REST_TARGET_RATIO, REST_CLIENTS = 3.0, 0.995, 1.5, 32
CEILING_TARGET = 0.90          # each row's share of its combined ceiling
AGREEMENT_TARGET = 0.99        # a reduced precision must keep this share of FP32's answers
FAST_PRECISION_RATIO = 3.0     # the fastest such precision vs the faithful baseline (batch 1000)
LINEAR_WITHIN = 0.9            # the 12,600-image run keeps >= 90 % of the short run's img/s
FLAT_MEMORY_WITHIN = 1.25      # ... with peak RSS <= 1.25x the short run's


def model_label(r: dict) -> str:
    return f"{r['arch']} {r['input_size'][0]}×{r['input_size'][1]}"


def _not_applicable(what: str, wanted: tuple[str, ...]) -> str:
    return f"not applicable (no {' / '.join(wanted)} on this CPU: {what} is not fast here)"


def _ceiling_targets(r: dict, int8_fast: bool) -> list[list]:
    """Every row at >= 90 % of its combined ceiling; the fastest precision keeping >= 99 % of FP32's
    answers at >= 3x the faithful baseline (batch 1000)."""
    rows = []
    for key, label in (("submit", "FP32"), ("submit_int8", "INT8")):
        share = r.get(key, {}).get("share_of_ceiling")
        if share is None:
            continue
        verdict = fmt.met(share >= CEILING_TARGET)
        if key == "submit_int8" and not int8_fast:
            verdict = _not_applicable("INT8", fmt.INT8_FAST_FLAGS)
        rows.append([f"{model_label(r)} {label}: ≥ {fmt.pct(CEILING_TARGET, 0)} of the combined ceiling",
                     fmt.pct(share, 0), verdict])
    i8 = r.get("submit_int8", {})
    keeps = i8.get("identical_to_fp32") is not None and i8["identical_to_fp32"] >= AGREEMENT_TARGET
    use_int8 = keeps and int8_fast and i8["img_per_s"] > r["submit"]["img_per_s"]
    fastest, name = (i8, "INT8") if use_int8 else (r["submit"], "FP32")
    ratio = fastest["img_per_s"] / r["baseline"]["img_per_s"]
    note = "" if keeps else f" (INT8 kept only {fmt.pct(i8.get('identical_to_fp32'), 2)})"
    if not int8_fast and i8:
        note += " (INT8 not counted: no VNNI / AMX-INT8)"
    rows.append([f"{model_label(r)}: fastest precision keeping ≥ {fmt.pct(AGREEMENT_TARGET, 0)} agreement ≥ "
                 f"{FAST_PRECISION_RATIO:g}× the faithful baseline", f"{name}: {ratio:.2f}×{note}",
                 fmt.met(ratio >= FAST_PRECISION_RATIO)])
    return rows


def batch_targets(job: dict) -> list[list]:
    int8_fast = fmt.has_any(job, fmt.INT8_FAST_FLAGS)
    rows = []
    for r in job.get("runs", []):
        if "share_of_ceiling" in r.get("submit", {}):
            rows += _ceiling_targets(r, int8_fast)
        ok = r["ratio"] >= BATCH_TARGET_RATIO and r["identical"] >= IDENTICAL_TARGET
        rows.append([f"Batch job ({model_label(r)}): mask-submit FP32 ≥ {BATCH_TARGET_RATIO:g}× baseline img/s, "
                     f"≥ {fmt.pct(IDENTICAL_TARGET, 1)} identical",
                     f"{r['ratio']:.2f}× end to end ({r.get('loop_ratio', 0):.2f}× loop only), "
                     f"{fmt.pct(r['identical'], 2)} identical"
                     + (f" (but only {r['distinct_classes_predicted']} distinct classes predicted: agreement says "
                        "little)" if r["distinct_classes_predicted"] < 6 else ""), fmt.met(ok)])
    return rows


def bf16_target(result: dict) -> list:
    """bf16 ships only if faster than every FP32 path (PyTorch eager and ONNX Runtime) at >= 99 %
    agreement: bench.bf16's own ``ships`` verdict, judged where the CPU has native bf16."""
    speed = result.get("img_per_s") or {}
    vs = [f"{speed['bf16'] / speed[k]:.2f}× {name}" for k, name in (("fp32", "PyTorch FP32"),
                                                                      ("onnx_fp32", "ONNX Runtime FP32"))
          if speed.get(k) and speed.get("bf16")]
    e2e = result.get("end_to_end")
    measured = (f"model only {', '.join(vs) or '–'}"
                + (f"; end to end {e2e['speedup']:.2f}× ONNX Runtime FP32" if e2e else "")
                + f"; {fmt.pct(result['argmax_agreement'], 2)} agreement; "
                f"{'ships' if result['ships'] else 'not shipped'} as `--precision bf16`")
    verdict = (fmt.met(bool(result["ships"])) if fmt.has_any(result, fmt.BF16_FAST_FLAGS)
               else _not_applicable("bf16", fmt.BF16_FAST_FLAGS))
    return [f"bf16 autocast: faster than every FP32 path at ≥ {fmt.pct(AGREEMENT_TARGET, 0)} agreement "
            "(ships only then)", measured, verdict]


def scale_target(result: dict) -> list:
    short, full = result["short"], result["full"]
    linear = full["img_per_s"] / short["img_per_s"]
    memory = full["max_rss_mb"] / short["max_rss_mb"]
    ok = linear >= LINEAR_WITHIN and memory <= FLAT_MEMORY_WITHIN
    return [f"{full['images']:,}-image run: linear (≥ {fmt.pct(LINEAR_WITHIN, 0)} of the {short['images']:,}-image img/s), "
            f"flat memory (peak RSS ≤ {FLAT_MEMORY_WITHIN:g}×)",
            f"{fmt.f(full['img_per_s'])} vs {fmt.f(short['img_per_s'])} img/s ({linear:.2f}×), peak RSS "
            f"{fmt.f(full['max_rss_mb'], 0)} vs {fmt.f(short['max_rss_mb'], 0)} MB ({memory:.2f}×)", fmt.met(ok)]


def rest_level(mode: dict | None, clients: int) -> dict | None:
    if not mode or mode.get("status") != "measured":
        return None
    return next((lv for lv in mode.get("levels", []) if lv["clients"] == clients), None)


def rest_modes(rest: dict) -> dict[str, dict]:
    return {m["mode"]: m for m in rest.get("modes", [])}


def rest_target(rest: dict) -> list:
    modes = rest_modes(rest)
    on, off = rest_level(modes.get("batching_on"), REST_CLIENTS), rest_level(modes.get("batching_off"), REST_CLIENTS)
    if on and off:
        ratio = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else None
        ok = ratio is not None and ratio >= REST_TARGET_RATIO and on["errors"] == 0 and off["errors"] == 0
        measured = (f"{fmt.f(ratio, 2)}× ({fmt.f(on['req_per_s'])} vs {fmt.f(off['req_per_s'])} req/s), errors "
                    f"{on['errors']} / {off['errors']}, p99 {fmt.f(on['p99_ms'], 0)} / {fmt.f(off['p99_ms'], 0)} ms")
    elif on:
        off_mode = modes.get("batching_off", {})
        measured = (f"on: {fmt.f(on['req_per_s'])} req/s, {on['errors']} errors, p99 {fmt.f(on['p99_ms'], 0)} ms; "
                    f"off: {off_mode.get('status', 'not run')} ({off_mode.get('reason', '')})")
        ok = None
    else:
        measured, ok = "not measured", None
    return [f"REST at {REST_CLIENTS} clients: batching on ≥ {REST_TARGET_RATIO:g}× req/s of off, 0 errors, "
            "p99 reported", measured, fmt.met(ok)]


def targets_section(results: dict[str, dict]) -> str:
    rows = batch_targets(results["batch_job"]) if "batch_job" in results else [
        ["Batch job ≥ 3× baseline, ≥ 99.5 % identical", "not measured", "not measured"]]
    if "bf16" in results:
        rows.append(bf16_target(results["bf16"]))
    if "eval_scale" in results:
        rows.append(scale_target(results["eval_scale"]))
    rows.append(rest_target(results["rest"]) if "rest" in results else
                [f"REST at {REST_CLIENTS} clients ≥ {REST_TARGET_RATIO:g}× with batching", "not measured",
                 "not measured"])
    return "## Targets\n\n" + fmt.table(["target (2-core CPU)", "measured", ""], rows) + "\n"
