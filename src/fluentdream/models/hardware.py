"""Which dtype is fast on this machine (DESIGN §10: bf16 where the hardware is fast at it), which
CPU it is (`cpu_name`, which the speed benchmarks record with their timings), and whether a
device exists here (`check_device`, before a model is loaded onto it).

    dtype = fd.fast_dtype("cpu")     # "bfloat16" on CPUs with AMX or AVX512-BF16, else "float32"
    lm = fd.load_model("embedded", dtype=dtype)
    check_device("cuda:3")           # fd.UserError where this machine has no such device

bf16 matrix products run several times faster than fp32 on CUDA GPUs from Ampere on and on CPUs
with AMX or AVX512-BF16 instructions; elsewhere bf16 is emulated and slower than fp32.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo(field: str) -> str:
    """The first `field` line of Linux's /proc/cpuinfo ("" elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    return frozenset(_cpuinfo("flags").split())


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name and its bf16 flags, e.g. "AMD EPYC (avx512_bf16)": what a timing
    ran on (a ratio measured on one CPU need not hold on another)."""
    found = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    return f"{_cpuinfo('model name') or 'unknown CPU'} ({', '.join(found) or 'no bf16 flags'})"


def fast_dtype(device: str | torch.device = "cpu") -> str:
    """"bfloat16" where `device` computes bf16 natively and fast, else "float32"; logged."""
    kind = torch.device(device).type
    if kind == "cuda":
        fast, why = torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "CUDA bf16"
    else:
        found = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
        fast, why = bool(found), "CPU flags " + ", ".join(found) if found else "no bf16 CPU flags"
    dtype = "bfloat16" if fast else "float32"
    log.info("fast dtype on %s: %s (%s)", kind, dtype, why)
    return dtype


def check_device(device: str | None) -> None:
    """Raise UserError for a device string torch does not parse, or a device this machine lacks
    (before a model is loaded onto it)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise UserError(f"device {device!r}: CUDA is not available ({why}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {device!r} does not exist; this machine has {n} CUDA "
                            f"device(s): cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device type {dev.type!r} is not supported; allowed: cpu, cuda, cuda:N, mps")
