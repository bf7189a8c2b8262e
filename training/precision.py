"""Which floating-point precision a run trains and evaluates in (``mask-train --amp``).

    p = resolve("auto", torch.device("cpu"))    # Precision(dtype, name, reason)
    with engine.autocast(device, p.dtype): ...

Modes: ``off`` (FP32), ``auto``, ``bf16``, ``fp16``.

- CUDA: ``auto`` is bf16 where the GPU supports it, else fp16 (with a GradScaler); ``bf16``/``fp16`` as asked.
- CPU: ``auto`` is bf16 where the CPU has native bf16 arithmetic (x86 ``avx512_bf16`` or ``amx_bf16``,
  Arm ``bf16``), else FP32. ``bf16`` always runs under CPU autocast, with a warning where the CPU
  lacks native bf16 (oneDNN then emulates it and a step is slower than FP32). ``fp16`` is refused:
  CPU autocast in float16 has no fast kernels here and no loss scaling in this loop.

Only the forward and backward passes run under autocast: weights, optimizer state and checkpoints
stay FP32, the validation metrics come from logits cast back to FP32, the temperature fit evaluates
the model in FP32 (``training.loop.calibration``), and export writes FP32 graphs.

Native bf16 is read from the CPU's flags in ``/proc/cpuinfo`` (Linux). torch's public
``torch.backends.cpu.get_cpu_capability()`` names only the vector width ("AVX512"), not whether bf16
is among its instructions, so it cannot answer this. Where ``/proc/cpuinfo`` does not exist (macOS,
Windows) the fallback is torch's private ``torch.cpu._is_avx512_bf16_supported()`` — the only query
torch offers for it; tests/test_precision.py pins that it still exists and agrees with the flags.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from maskdata.cpu import cpu_flags  # noqa: F401  (training.precision.cpu_flags: its callers and tests)

log = logging.getLogger(__name__)

MODES = ("off", "auto", "bf16", "fp16")
# x86 flags (AVX-512 BF16, AMX BF16) and the Arm feature name for bf16 arithmetic
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None     # the autocast dtype; None = FP32 without autocast
    name: str                     # "fp32" | "bf16" | "fp16": what the log, config.yaml and checkpoints record
    reason: str                   # one line: why this precision was chosen


def normalize_mode(value) -> str:
    """``--amp`` as recipes write it: a mode name, or the older boolean spelling (true = auto, false = off)."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    text = str(value).strip().lower()
    return {"true": "auto", "yes": "auto", "on": "auto", "false": "off", "no": "off", "none": "off"}.get(text, text)


def native_bf16(flags: set[str] | None = None) -> tuple[bool, str]:
    """(whether the CPU has native bf16 arithmetic, the evidence in words)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        # no /proc/cpuinfo: torch's own (private) query is the only one available; see the module docstring
        query = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        found = bool(query()) if query is not None else False
        return found, f"torch reports avx512_bf16 {'present' if found else 'absent'} (no /proc/cpuinfo)"
    have = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return bool(have), (f"CPU flags {', '.join(have)}" if have else
                        f"no CPU flag among {', '.join(NATIVE_BF16_FLAGS)}")


def _resolve_cuda(mode: str) -> Precision:
    if mode == "auto":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "bf16", "--amp auto: the GPU supports bf16")
        return Precision(torch.float16, "fp16", "--amp auto: the GPU lacks bf16, fp16 with loss scaling")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return Precision(dtype, mode, f"--amp {mode} on CUDA")


def _resolve_cpu(mode: str, flags: set[str] | None) -> Precision:
    if mode == "fp16":
        raise ValueError("--amp fp16 is for CUDA only; on a CPU use --amp bf16 or --amp auto (bf16 where the "
                         "CPU has it natively)")
    has, evidence = native_bf16(flags)
    if mode == "auto":
        if has:
            return Precision(torch.bfloat16, "bf16", f"--amp auto: native bf16 on this CPU ({evidence})")
        return Precision(None, "fp32", f"--amp auto: FP32, this CPU has no native bf16 ({evidence})")
    if not has:
        log.warning("--amp bf16 on a CPU without native bf16 (%s): it runs emulated and will be slower than "
                    "FP32; --amp auto picks FP32 here", evidence)
        return Precision(torch.bfloat16, "bf16", f"--amp bf16 (emulated: {evidence})")
    return Precision(torch.bfloat16, "bf16", f"--amp bf16: native on this CPU ({evidence})")


def resolve(mode, device: torch.device, flags: set[str] | None = None) -> Precision:
    """The precision ``--amp mode`` means on ``device``; ``flags`` (tests) stand in for the CPU's own.

    Raises ValueError (one line) for an unknown mode and for fp16 on a CPU."""
    mode = normalize_mode(mode)
    if mode not in MODES:
        raise ValueError(f"unknown --amp mode {mode!r}; expected one of {list(MODES)}")
    if mode == "off":
        return Precision(None, "fp32", "--amp off")
    if device.type == "cuda":
        return _resolve_cuda(mode)
    if device.type != "cpu":
        return Precision(None, "fp32", f"--amp {mode}: no mixed precision on {device.type}; FP32")
    return _resolve_cpu(mode, flags)


def name_of(dtype: torch.dtype | None) -> str:
    """"fp32" | "bf16" | "fp16" for an autocast dtype (None = FP32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def record_line(mode: str, dtype: torch.dtype | None) -> str:
    """The comment config.yaml ends with: the precision this run used (a rerun resolves --amp anew)."""
    return f"# trained in {name_of(dtype)} (--amp {mode} on this machine; a rerun resolves it on its own)\n"
