"""Which dtype is fast on this machine (DESIGN §10: bf16 where the hardware is fast at it), which
CPU it is (`cpu_name`, which the speed benchmarks record with their timings), and whether a
device exists here (`check_device`, before a model is loaded onto it).

    dtype = fd.fast_dtype("cpu")     # "bfloat16" where a bf16 matrix product is measured faster
    lm = fd.load_model("embedded", dtype=dtype)
    check_device("cuda:3")           # fd.UserError where this machine has no such device

On CUDA GPUs from Ampere on bf16 matrix products run several times faster than fp32. On a CPU the
flags do not tell: with AVX512-BF16 and no AMX, bf16 products ran 2x faster than fp32 on an AMD
EPYC (Zen 4) and 2x slower on an Intel Xeon (LOG.md, 2026-12-08), so a CPU's choice is measured.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# bf16 costs precision (DESIGN §10), so a CPU runs it only where it clearly pays: the two CPUs
# measured so far gave 2.0x and 0.5x, far on either side of this.
MIN_BF16_SPEEDUP = 1.2


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


@functools.lru_cache(maxsize=None)
def bf16_speedup(threads: int) -> float:
    """fp32's time over bf16's for a (1024 x 512) @ (512 x 1024) product on this CPU with
    `threads` threads: the fastest of 5 tries each, the two dtypes alternating so that a load
    from elsewhere slows both alike (about 50 ms in all)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        pairs = {dt: (torch.randn(1024, 512, generator=gen).to(dt),
                      torch.randn(512, 1024, generator=gen).to(dt))
                 for dt in (torch.float32, torch.bfloat16)}
        best = dict.fromkeys(pairs, float("inf"))
        for round_ in range(6):              # round 0 builds the kernels: not counted
            for dt, (a, b) in pairs.items():
                start = time.perf_counter()
                a @ b
                if round_:
                    best[dt] = min(best[dt], time.perf_counter() - start)
        return best[torch.float32] / best[torch.bfloat16]
    finally:
        torch.set_num_threads(before)


def fast_dtype(device: str | torch.device = "cpu") -> str:
    """"bfloat16" where `device` computes bf16 fast (a CUDA GPU that supports it; a CPU where
    bf16_speedup is at least MIN_BF16_SPEEDUP), else "float32"; logged with the reason."""
    kind = torch.device(device).type
    if kind == "cuda":
        fast, why = torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "CUDA bf16"
    else:
        speedup = bf16_speedup(torch.get_num_threads())
        fast = speedup >= MIN_BF16_SPEEDUP
        why = f"a bf16 matrix product measured {speedup:.2f}x as fast as fp32 on {cpu_name()}"
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
