"""What the CPU can do, read once from ``/proc/cpuinfo``: its flags, and which INT8 kernel ONNX Runtime runs.

    cpu_flags()                  # {"avx2", "avx512f", "avx512_vnni", ...} or None where unreadable
    simd_flags()                 # the flags that decide inference speed, in a fixed order (bench, demo)
    int8_kernel()                # "vnni" | "pairwise16" | "other": how uint8 x int8 products are summed

Torch-free: training (native bf16), export (what an INT8 artifact was measured on), serving (is this
CPU one of those) and the benchmarks all read the CPU here.

ONNX Runtime's x86 kernels (MLAS) multiply uint8 activations by int8 weights in one of two ways. With
VNNI (AVX-512 VNNI, AVX-VNNI) ``vpdpbusd`` sums four products straight into 32 bits: exact. Without it
(AVX2, AVX-512BW) ``vpmaddubsw`` first adds each *pair* of products into a saturating 16-bit integer:
|a1*w1 + a2*w2| can reach 255 * 128 * 2 = 65,280 and is clipped at 32,767. ORT's quantization docs name
the remedy: weights in a 7-bit range (``reduce_range``), whose pair sums stay within 255 * 64 * 2 =
32,640, or uint8 weights (U8U8, a kernel that widens to 16 bits first). Either gives the same
integer sums on every kernel; full-range int8 weights give them only where VNNI sums them.
"""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# the SIMD features that decide CPU inference and training speed (AVX2/AVX-512/VNNI for INT8, BF16)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_KERNELS = ("vnni", "pairwise16", "other")


def cpu_flags(path: Path = CPUINFO) -> set[str] | None:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo``; None where it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):   # x86 | Arm
            return set(value.split())
    return set()


def simd_flags(flags: set[str] | None = None) -> list[str]:
    """The :data:`SIMD_FLAGS` this CPU has, in that order ([] where the flags are unreadable)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in SIMD_FLAGS if f in (flags or ())]


def cpu_model(path: Path = CPUINFO) -> str:
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def int8_kernel(flags: set[str] | None = None) -> str:
    """How this CPU sums uint8 x int8 products in ONNX Runtime: ``vnni`` (exact 32-bit sums),
    ``pairwise16`` (x86 without VNNI: pairs saturate at 16 bits) or ``other`` (not x86, or unknown)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "other"
    if any(f in flags for f in VNNI_FLAGS):
        return "vnni"
    if "avx2" in flags or "avx512bw" in flags or "ssse3" in flags:
        return "pairwise16"
    return "other"


def describe(flags: set[str] | None = None) -> dict:
    """{"cpu", "simd", "int8_kernel"}: what an artifact records about the machine that measured it."""
    flags = cpu_flags() if flags is None else flags
    return {"cpu": cpu_model(), "simd": simd_flags(flags), "int8_kernel": int8_kernel(flags)}


def int8_on_this_cpu(record: dict, flags: set[str] | None = None) -> dict:
    """Whether an INT8 artifact's measured agreement (its ``quantization`` metadata) holds on this CPU:
    {"int8_kernel": this CPU's, "holds": True/False/None (unknown), "note": one line}."""
    here = int8_kernel(flags)
    measured = (record.get("measured_on") or {}).get("int8_kernel")
    agreement = record.get("agreement")
    said = f"{agreement:.2%} agreement with FP32" if isinstance(agreement, (int, float)) else "its agreement"
    if not record:
        return {"int8_kernel": here, "holds": None,
                "note": "exported before INT8 artifacts recorded their format and CPU: its agreement with FP32 "
                        "may not hold on this CPU (re-export with mask-export --int8)"}
    if record.get("exact_on") == "every CPU":
        return {"int8_kernel": here, "holds": True,
                "note": f"{record.get('format')} weights sum exactly on every kernel: {said} holds here"}
    if here == measured:
        return {"int8_kernel": here, "holds": True, "note": f"measured on this kind of CPU ({here}): {said} holds"}
    return {"int8_kernel": here, "holds": False,
            "note": f"{record.get('format')} weights were measured on a {measured or 'unknown'} CPU, this one sums "
                    f"with {here}: {said} does not carry over (re-export with --int8-format portable)"}
