"""The benchmark's baseline is the same algorithm as fd.epo, and the benchmark script runs (tiny
settings; speed itself is measured by `make bench`, never asserted here)."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np

import fluentdream as fd
from conftest import REPO
from fluentdream.models.hardware import cpu_name

sys.path.insert(0, str(REPO / "benchmarks"))
from plain_epo import plain_epo  # noqa: E402
import sections  # noqa: E402


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_baseline_follows_the_same_trajectory(tiny_lm):
    cfg = fd.EPOConfig(iters=6, population_size=4, explore_per_pop=8, topk=16, restart_frequency=4)
    target = fd.Neuron(1, 4)
    fast, plain = fd.epo(tiny_lm, target, cfg), plain_epo(tiny_lm, target, cfg)
    assert np.array_equal(fast.arrays()["ids"], plain.arrays()["ids"])
    assert np.array_equal(fast.arrays()["kept"], plain.arrays()["kept"])
    np.testing.assert_allclose(fast.arrays()["xentropy"], plain.arrays()["xentropy"], atol=1e-4)


def test_benchmark_script_writes_its_report(tmp_path):
    run = _load_run()
    out, js = tmp_path / "BENCH.md", tmp_path / "results.json"
    first = "## Time to quality against the reference implementation: x\n\n| kept first |\n"
    other = "## A section of no known kind\n\n| kept last |\n"
    out.write_text("# old report\n\n" + other + "\n" + first)
    run.main(["--quick", "--threads", "1", "--out", str(out), "--json", str(js)])
    text = out.read_text()
    assert text.startswith("# old report\n\n" + first) and text.endswith(other)   # others stay
    assert text.count(run.SECTION) == 1 and "### 1 intra-op thread(s)" in text
    assert "| plain | float32 |" in text and "| fluentdream | bfloat16 |" in text
    assert "What limits the rest" in text or "what limits the rest" in text
    rows = json.loads(js.read_text())
    assert {r["method"] for r in rows} == {"plain:float32", "fluentdream:float32", "fluentdream:bfloat16",
                                           "fluentdream+batched:float32", "fluentdream+batched:bfloat16"}
    assert "| fluentdream (1 runs batched, per run) | bfloat16 |" in text
    assert all(r["sec_per_iter"] > 0 and len(r["quality"]) == 1 for r in rows)


def test_benchmarks_md_keeps_one_order_whatever_order_the_scripts_run_in(tmp_path):
    """Single-run latency first (issue 29), then the pilot, the ablation, per-iteration speed and
    the profile; a replaced section stays in its place among those of its kind."""
    out = tmp_path / "BENCH.md"
    def put(heading, word):
        sections.replace_section(out, heading + "\n", f"{heading}\n\n{word}\n")
    put("## Where an iteration's time goes on a real model", "phases")
    put("## Unknown kind", "unknown")
    put("## Speed per iteration against the plain algorithm", "run")
    put("## Ablation against the reference: embedded", "ablation-1")
    put("## Ablation against the reference: smollm2-135m", "ablation-2")
    put("## Time to quality against the reference implementation: embedded", "ttq")
    put("## Ablation against the reference: embedded", "ablation-1b")
    text = out.read_text()
    assert text.startswith(sections.HEADER)
    words = [line for line in text.splitlines() if line and not line.startswith("#")][1:]
    assert words == ["ttq", "ablation-1b", "ablation-2", "run", "phases", "unknown"]
    assert sections.split(text)[1] == sorted(sections.split(text)[1], key=sections.rank)


def test_benchmark_script_runs_the_pythia_configuration_shrunk(tmp_path):
    run = _load_run()
    out = tmp_path / "BENCH.md"
    run.main(["--quick", "--threads", "1", "--model-config", str(REPO / "benchmarks/configs/pythia-1.4b.json"),
              "--config-override", "num_hidden_layers=2,hidden_size=64,intermediate_size=256,num_attention_heads=4",
              "--methods", "fluentdream", "--dtypes", "float32", "--out", str(out),
              "--json", str(tmp_path / "r.json")])
    assert "pythia-1.4b" in out.read_text()


def test_phase_profile_adds_up(tiny_model_dir, tmp_path):
    """benchmarks/phases.py on a tiny model: every phase measured, the parts of scoring within
    it, and the section written into a report file beside another section."""
    spec = importlib.util.spec_from_file_location("bench_phases", REPO / "benchmarks" / "phases.py")
    phases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phases)
    report = tmp_path / "BENCH.md"
    report.write_text("# Benchmarks\n\n## Other\nkept\n")
    phases.main(["--model", str(tiny_model_dir), "--target", "L1.N3", "--dtype", "float32", "--iters", "2",
                 "--warmup", "1", "--peak-size", "64", "--threads", "1", "--report", str(report),
                 "--json", str(tmp_path / "phases.json")])
    m = json.loads((tmp_path / "phases.json").read_text())
    sec = m["seconds"]
    parts = sum(sec.get(f"score/{p}", 0.0) for p in ("attention", "MLP", "unembedding + CE"))
    assert 0 < parts < sec["score/total"] and sec["gradients/total"] > 0
    assert sec["score/total"] + sec["gradients/total"] < m["wall"]
    assert sec["gradients/attention"] > 0 and m["tokens"] > 0 and m["unembedded_rows"] > 0
    text = report.read_text()
    assert "## Other\nkept" in text and text.count(phases.SECTION) == 1
    assert f"{phases.SECTION} on {cpu_name()}\n" in text and m["cpu"] == cpu_name()
    assert "| gradient pass (2 layers, forward + backward) |" in text
