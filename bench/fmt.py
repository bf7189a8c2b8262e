"""Number, table and verdict formatting shared by the docs/benchmarks.md renderers (report, targets,
budget and REST sections): one spelling of "not measured", percentages and Markdown tables."""
from __future__ import annotations

# CPU flags that make each reduced precision fast (from /proc/cpuinfo, as bench.common records them):
# INT8 matmuls need VNNI (AVX-512 or AVX) or AMX-INT8; bf16 needs AVX-512 BF16 or AMX-BF16.
INT8_FAST_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FAST_FLAGS = ("avx512_bf16", "amx_bf16")


def f(x, digits: int = 1, unit: str = "") -> str:
    return "–" if x is None else f"{x:,.{digits}f}{unit}"


def pct(x, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def flags(result: dict) -> list[str]:
    return list((result.get("machine") or {}).get("cpu_flags") or [])


def has_any(result: dict, wanted: tuple[str, ...]) -> bool:
    return bool(set(flags(result)) & set(wanted))
