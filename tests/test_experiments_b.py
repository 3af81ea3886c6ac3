"""Smoke runs of experiments 05-08 (paper §3.3-3.5 and the companion page) on tiny models.

One session-scoped run of every smoke preset into a temporary results root; test_figures_b.py
renders the figures from the same results.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import _tokenizer, build_model, load_experiment


@pytest.fixture(scope="session")
def b_results(tmp_path_factory, tiny_model_dir):
    """results root holding smoke/01 and 05..07 on the tiny GPT-NeoX, smoke/08 on a tiny Phi."""
    root = tmp_path_factory.mktemp("results_b")
    common = ["--preset", "smoke", "--results", str(root), "--model", str(tiny_model_dir)]
    load_experiment("01_fluency_calibration").main(common)     # the CE limits 05-07 read
    for name in ("05_dream_vs_dataset", "06_polysemantic_neuron", "07_residual_directions"):
        assert load_experiment(name).main(common) == 0
    phi = tmp_path_factory.mktemp("tiny_phi")
    build_model("phi").save_pretrained(phi)
    _tokenizer().save_pretrained(phi)
    assert load_experiment("08_companion_phi2").main(
        ["--preset", "smoke", "--results", str(root), "--model", str(phi)]) == 0
    return root


def test_05_mines_chooses_and_dreams(b_results):
    out = b_results / "smoke" / "05_dream_vs_dataset"
    choices = json.loads((out / "neuron_choices.json").read_text())
    stats = pd.read_parquet(out / "neuron_stats.parquet")
    assert choices["layer"] == round(0.28 * (2 - 1))      # the tiny model has 2 layers
    assert {choices["example_neuron"], choices["polysemantic_neuron"]} <= set(stats["target"])
    assert choices["example_neuron"] != choices["polysemantic_neuron"]
    # the example neuron is a top-half neuron with the largest single-word family share
    upper = stats[stats["top_activation"] >= stats["top_activation"].median()]
    chosen = stats.set_index("target").loc[choices["example_neuron"]]
    assert chosen["word_share"] == upper["word_share"].max()
    examples = pd.read_parquet(out / "mining" / "examples.parquet")
    assert examples.groupby("target").size().max() == 8 and examples["window_xentropy"].notna().all()
    runs = sorted((out / "runs").glob("*/summary.json"))
    sample = json.loads((out / "sampled_neurons.json").read_text())["neurons"]
    assert len(sample) == 2 and set(sample) <= set(upper["target"])
    # 2 seeds on the example neuron, seed 0 on each sampled one (shared if it is the same run)
    assert len(runs) == 2 + len(set(sample) - {choices["example_neuron"]})
    assert all(json.loads(r.read_text())["iterations"] == 3 for r in runs)
    assert json.loads((out / "threshold.json").read_text())["threshold"] > 0


def test_05_rerun_skips_finished_work(b_results, tiny_model_dir):
    out = b_results / "smoke" / "05_dream_vs_dataset"
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    stamp[out / "mining" / "summary.json"] = (out / "mining" / "summary.json").stat().st_mtime_ns
    load_experiment("05_dream_vs_dataset").main(
        ["--preset", "smoke", "--results", str(b_results), "--model", str(tiny_model_dir)])
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_06_attributes_frontier_prompts(b_results):
    out = b_results / "smoke" / "06_polysemantic_neuron"
    choices = json.loads((b_results / "smoke" / "05_dream_vs_dataset" / "neuron_choices.json").read_text())
    doc = json.loads((out / "attribution.json").read_text())
    assert doc["target"] == choices["polysemantic_neuron"]
    assert 1 <= len(doc["prompts"]) <= 3
    for a in doc["prompts"]:
        assert len(a["tokens"]) == 12 and len(a["swap_values"][0]) == 4
        assert a["max_drop"][0] >= a["min_drop"][0]
    assert "<!doctype html>" in (out / "attribution.html").read_text()


def test_06_needs_05_first(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="--only-mine"):
        load_experiment("06_polysemantic_neuron").main(
            ["--preset", "smoke", "--results", str(tmp_path), "--model", str(tiny_model_dir)])


def test_06_needs_01s_limits(tmp_path, b_results, tiny_model_dir):
    import shutil
    shutil.copytree(b_results / "smoke" / "05_dream_vs_dataset", tmp_path / "smoke" / "05_dream_vs_dataset")
    with pytest.raises(ValueError, match="01_fluency_calibration.py --preset smoke"):
        load_experiment("06_polysemantic_neuron").main(
            ["--preset", "smoke", "--results", str(tmp_path), "--model", str(tiny_model_dir)])


def test_07_three_sources_per_direction(b_results):
    out = b_results / "smoke" / "07_residual_directions"
    base = pd.read_parquet(out / "random_baseline.parquet")
    assert sorted(base["layer"].unique()) == [1, 2]        # 1..n_layers
    assert len(base) == 4 and (base["sd"] > 0).all() and (base["max"] >= base["mean"]).all()
    assert set(base["target"]) == {"resid:L1:v1000", "resid:L1:v1001", "resid:L2:v2000",
                                   "resid:L2:v2001"}
    mined = pd.read_parquet(out / "mining" / "examples.parquet")
    assert set(mined["target"]) == set(base["target"])
    runs = [json.loads(p.read_text())["target"] for p in out.glob("runs/*/config.json")]
    assert sorted(runs) == sorted(base["target"])


def test_08_companion_smoke_and_embedded_message(b_results, capsys):
    out = b_results / "smoke" / "08_companion_phi2"
    assert len(list(out.glob("runs/*/summary.json"))) == 1
    assert (out / "attribution.html").exists()
    assert load_experiment("08_companion_phi2").main(["--preset", "embedded"]) == 0
    assert "needs Phi-2" in capsys.readouterr().out
