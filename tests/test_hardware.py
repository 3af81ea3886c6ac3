"""fd.fast_dtype: bf16 on a CPU exactly where a bf16 matrix product measures at least
MIN_BF16_SPEEDUP times as fast as fp32 (DESIGN §10: bf16 where the hardware is fast at it)."""
from __future__ import annotations

import math

import pytest
import torch

import fluentdream as fd
from fluentdream.models import hardware
from fluentdream.models.hardware import BF16_CPU_FLAGS, cpu_flags, cpu_name


@pytest.mark.parametrize("speedup, dtype", [(2.0, "bfloat16"), (1.2, "bfloat16"), (1.19, "float32"),
                                            (0.5, "float32")])
def test_fast_dtype_is_bf16_exactly_where_bf16_measured_fast_enough(monkeypatch, speedup, dtype):
    # 2.0 and 0.5: what an AMD EPYC and an Intel Xeon, both AVX512-BF16 without AMX, measured
    monkeypatch.setattr(hardware, "bf16_speedup", lambda threads: speedup)
    assert fd.fast_dtype("cpu") == dtype


def test_the_measured_speedup_is_a_ratio_of_times_on_the_threads_asked_for():
    before = torch.get_num_threads()
    speedup = hardware.bf16_speedup.__wrapped__(1)       # uncached: a fresh measurement
    assert math.isfinite(speedup) and speedup > 0
    assert torch.get_num_threads() == before             # the caller's threads are restored
    assert fd.fast_dtype("cpu") == ("bfloat16" if hardware.bf16_speedup(before)
                                    >= hardware.MIN_BF16_SPEEDUP else "float32")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = cpu_flags()
    text = open("/proc/cpuinfo").read()
    assert flags and all(f" {f}" in text for f in list(flags)[:20])


def test_cpu_name_is_the_model_name_with_its_bf16_flags():
    lines = open("/proc/cpuinfo").read().splitlines()
    model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    bf16 = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    assert cpu_name() == f"{model} ({', '.join(bf16) or 'no bf16 flags'})"
