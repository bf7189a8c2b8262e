"""docs/benchmarks.md sections for the thread budget, INT8 calibration, INT8 across CPUs and bf16 parts (bench.report calls them)."""
from __future__ import annotations

from bench import fmt
from bench.fmt import f as _f, pct as _pct, table as _table


def _flags(result: dict) -> str:
    return ", ".join(fmt.flags(result)) or "unknown"


def _load(result: dict) -> str:
    m = result.get("cpu_monitor", {})
    return (f"load average {m.get('loadavg_start', ['–'])[0]} → {m.get('loadavg_end', ['–'])[0]}, "
            f"other processes used {m.get('other_cores', '–')} cores on average")


def thread_budget_section(result: dict | None) -> str:
    if not result:
        return "## Thread budget\n\nNot measured yet: `python -m bench.thread_budget`.\n"
    lines = ["## Thread budget: decode workers × ONNX Runtime threads × spinning", "",
             f"`{result['command']}` — SIMD: {_flags(result)}; {_load(result)}. Each cell is one `mask-submit` "
             "run end to end over the eval set (interpreter start and model load included; *loop* is its own "
             "summary time). Ceiling = 1 / (1/model-only + 1/decode-only), both on all cores in the same run "
             "(model only: ORT on in-memory uint8 batches of 64, its fastest call, the better of spinning off/on "
             "and of one measurement before and one after the grid; decode only: read + draft decode + resize "
             "in one thread per core, the better of before/after).", ""]
    for m in result["models"]:
        mo = m["model_only_img_per_s"]
        lines += [f"**{m['model']}** ({m['images']} images): model only {_f(mo['spinning_off'])} img/s "
                  f"(spinning off) / {_f(mo['spinning_on'])} (on); decode only {_f(m['decode_only_img_per_s'])}; "
                  f"combined ceiling **{_f(m['combined_ceiling_img_per_s'])}** img/s. Grid cells at `--decode-nice` "
                  f"{m.get('grid_decode_nice', 'not recorded')}.", ""]
        rows = [[r["workers"], r["threads"], r["spinning"], _f(r["img_per_s"]), _f(r["loop_img_per_s"]),
                 _pct(r["share_of_ceiling"], 0), _pct(r["loop_share_of_ceiling"], 0)] for r in m["rows"]]
        lines += [_table(["--workers", "--threads", "--ort-spinning", "img/s end to end", "img/s loop",
                          "share of ceiling", "loop share"], rows), ""]
        lines += _sweep(m.get("batch_rows"), "batch_size", "--batch-size",
                        "At the defaults (`--workers` one per core, `--threads 0`: ONNX Runtime's own count, "
                        "spinning off), by `--batch-size`:")
        lines += _sweep(m.get("nice_rows"), "decode_nice", "--decode-nice",
                        "At the defaults, by `--decode-nice` (the decode workers' priority below the model's; "
                        "0: the same):")
        lines += _sweep(m.get("contended_nice_rows"), "decode_nice", "--decode-nice",
                        f"The same, while {m.get('contention')} other processes at the default priority keep "
                        f"{m.get('contention')} cores busy (another user's job; the ceiling is still the quiet "
                        "one):")
    return "\n".join(lines)


def _sweep(rows: list[dict] | None, key: str, flag: str, intro: str) -> list[str]:
    """One knob swept at the defaults: its value, img/s end to end and loop, shares of the ceiling."""
    if not rows:
        return []
    cells = [[r[key], _f(r["img_per_s"]), _f(r["loop_img_per_s"]), _pct(r["share_of_ceiling"], 0),
              _pct(r["loop_share_of_ceiling"], 0)] for r in rows]
    return [intro, "", _table([flag, "img/s end to end", "img/s loop", "share of ceiling", "loop share"], cells), ""]


def int8_section(result: dict | None) -> str:
    if not result:
        return "## INT8 calibration\n\nNot measured yet: `python -m bench.int8_calibration`.\n"
    rows = [[r["method"], "per channel" if r["per_channel"] else "per tensor",
             "int8" if r.get("quantize_heads", True) else "float", r["calibration_images"],
             r["check_images"], f"**{_pct(r['argmax_agreement'], 2)}**",
             f"{_f(r['f1_int8'], 4)} vs {_f(r['f1_fp32'], 4)}", f"{_f(r['speedup_batch_256'], 2)}×",
             f"{_f(r['quantize_s'], 0)} s"] for r in result["rows"]]
    return "\n".join([
        "## INT8 calibration: agreement with FP32 on held-out images", "",
        f"`{result['command']}` — model `{result['onnx']}`; SIMD: {_flags(result)}; {_load(result)}. "
        "Calibration images are drawn evenly from the training split; agreement is measured on the eval set "
        "(other people). Speed: ORT INT8 vs FP32 on one batch of 256, interleaved medians.", "",
        _table(["calibration", "weights", "Gemm/MatMul heads", "calib. images", "check images", "argmax agreement",
                "macro F1 int8 vs fp32", "speed vs fp32", "quantize time"], rows), ""])


def bf16_section(result: dict | None) -> str:
    if not result:
        return "## bf16\n\nNot measured yet: `python -m bench.bf16`.\n"
    s = result["img_per_s"]
    verdict = ("ships as `--precision bf16`" if result["ships"] else
               "**not shipped**: it must be faster than every FP32 path (PyTorch eager and ONNX Runtime) at ≥ 99 % "
               "agreement")
    return "\n".join([
        "## bf16: PyTorch under `torch.autocast(\"cpu\", dtype=torch.bfloat16)`", "",
        f"`{result['command']}` — SIMD: {_flags(result)}; {_load(result)}; torch threads "
        f"{result['torch_threads']}. Model only, {result['arch']}, batch {result['batch_size']}, in-memory uint8.", "",
        _table(["", "img/s", "argmax agreement with FP32"],
               [["FP32 (eager)", _f(s["fp32"]), "–"],
                *([["FP32, ONNX Runtime (the shipped path)", _f(s["onnx_fp32"]), "–"]] if "onnx_fp32" in s else []),
                ["bf16 autocast", _f(s["bf16"]), f"{_pct(result['argmax_agreement'], 2)} on {result['images']}"]]),
        "", f"bf16 / FP32 speed: {_f(result['bf16_speedup'], 2)}× — {verdict}.", "", *_bf16_e2e(result.get("end_to_end"))])


def _bf16_e2e(e2e: dict | None) -> list[str]:
    if not e2e:
        return []
    rows = [[label, _f(r["wall_s"], 2), _f(r["img_per_s"]), _f(r["max_rss_mb"], 0), f"`{r['command']}`"]
            for label, r in (("ONNX Runtime FP32", e2e["onnx_fp32"]), ("bf16 autocast (PyTorch)", e2e["bf16"]))]
    return ["End to end, `mask-submit` as a command on the same images, one after the other:", "",
            _table(["path", "wall s", "img/s", "peak RSS MB", "command"], rows), "",
            f"bf16 / ONNX Runtime FP32 end to end: {_f(e2e['speedup'], 2)}×, "
            f"{_pct(e2e['identical'], 2)} identical answers.", ""]


def eval_scale_section(result: dict | None) -> str:
    if not result:
        return "## The real eval set's size\n\nNot measured yet: `python -m bench.eval_scale --model M.onnx`.\n"
    rows = [[label, _f(r["images"], 0), _f(r["wall_s"], 1), _f(r["loop_s"], 1), _f(r["img_per_s"]),
             _f(r["max_rss_mb"], 0)] for label, r in (("first rows", result["short"]), ("all rows", result["full"]))]
    return "\n".join([
        "## The real eval set's size: 12,600 images", "",
        f"`{result['command']}` — model `{result['model']}`; SIMD: {_flags(result)}; {_load(result)}. Two "
        "`mask-submit` runs one after the other on a warm page cache, each its own process (peak RSS from "
        "`os.wait4`); the first rows' predictions are checked equal in both.", "",
        _table(["run", "images", "wall s", "loop s", "img/s end to end", "peak RSS MB"], rows), "",
        f"All rows / first rows: img/s {_f(result['img_per_s_ratio'], 2)}×, peak RSS "
        f"{_f(result['max_rss_ratio'], 2)}×.", ""])


def int8_isa_section(result: dict | None) -> str:
    if not result:
        return "## INT8 on every CPU\n\nNot measured yet: `python -m bench.int8_isa`.\n"
    emu = result.get("emulated")
    native = result["native_cpu"]
    rows = []
    for r in result["rows"]:
        em = "not measured (no qemu-user)" if not emu else (
            f"**{_pct(r['agreement_emulated'], 2)}** (native on the same images {_pct(r['agreement_native_same_images'], 2)})")
        same = "–" if not emu else (f"{_pct(r['emulated_vs_native_argmax_same'], 2)}, max \\|Δprob\\| "
                                    f"{r['emulated_vs_native_max_abs_diff']:.2g}")
        rows.append([r["variant"], f"{r['float_convs']} of {r['convs']}", r["exact_on"],
                     f"**{_pct(r['agreement_native'], 2)}** on {r['check_images']}", em, same,
                     f"{_f(r['speedup_batch_64'], 2)}×"])
    ladder = next((r["ladder"] for r in result["rows"] if r["variant"].startswith("mask-export default")), [])
    steps = "; ".join(f"{c['float_convs']} float: {_pct(c['agreement'], 2)}, {_f(c['speedup'], 2)}×" for c in ladder)
    fp32 = "" if not emu or "fp32_max_abs_diff" not in emu else (
        f" FP32 itself under the emulator vs natively, {emu['fp32_images']} images: argmax "
        f"{_pct(emu['fp32_argmax_agreement'], 2)} the same, max |Δprob| {emu['fp32_max_abs_diff']:.2g}.")
    return "\n".join([
        "## INT8 on every CPU: agreement with FP32 on VNNI and on AVX2-only kernels", "",
        f"`{result['command']}` — model `{result['onnx']}`; measured natively on {native['cpu']} (SIMD: "
        f"{', '.join(native['simd']) or 'unknown'}; ORT INT8 kernel: {native['int8_kernel']}); {_load(result)}. "
        + ("AVX2-only column: the same INT8 files run by ONNX Runtime under `qemu-x86_64 -cpu "
           f"{emu['cpu']}` (AVX2 + FMA, no AVX-512, no VNNI: ORT reads the emulated CPUID and runs its real "
           f"AVX2 kernels) on {emu['images']} of the check images, evenly drawn, against the native FP32 answers."
           + fp32 if emu else "AVX2-only column not measured (qemu-user missing).")
        + " Speed is native only (batch of 64, interleaved medians); an emulator's speed says nothing.", "",
        _table(["variant", "convolutions kept float", "integer sums exact on", "agreement, this CPU",
                "agreement, AVX2-only (emulated)", "AVX2 vs this CPU, same INT8 file", "speed vs FP32 (this CPU)"], rows),
        "", f"The default's ladder (`mask-export --int8`): {steps or '–'}.", ""])
