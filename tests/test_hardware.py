"""fd.fast_dtype: bf16 exactly where the CPU reports native bf16 instructions (DESIGN §10)."""
from __future__ import annotations

import fluentdream as fd
from fluentdream.models.hardware import BF16_CPU_FLAGS, cpu_flags, cpu_name


def test_fast_dtype_follows_the_cpu_flags():
    native = bool(set(BF16_CPU_FLAGS) & cpu_flags())
    assert fd.fast_dtype("cpu") == ("bfloat16" if native else "float32")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = cpu_flags()
    text = open("/proc/cpuinfo").read()
    assert flags and all(f" {f}" in text for f in list(flags)[:20])


def test_cpu_name_is_the_model_name_with_its_bf16_flags():
    lines = open("/proc/cpuinfo").read().splitlines()
    model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    bf16 = sorted(set(BF16_CPU_FLAGS) & cpu_flags())
    assert cpu_name() == f"{model} ({', '.join(bf16) or 'no bf16 flags'})"
