"""Smoke runs of experiments 01-04 on a tiny model, and the rules they use to pick analogs."""
import json
import keyword
import math
import re

import numpy as np
import pytest

from conftest import load_experiment

_SMOKE: dict = {}


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory, tiny_model_dir):
    """<results>/smoke/ after 01, 02, 03 and 04 (04 with --target: there is no 05 here; in two
    shards).
    Memoized in the module, so test_figures_a reuses the same runs."""
    if "dir" not in _SMOKE:
        results = tmp_path_factory.mktemp("results")
        common = ["--preset", "smoke", "--results", str(results), "--model", str(tiny_model_dir)]
        for name in ("01_fluency_calibration", "02_token_logits", "03_six_neurons"):
            load_experiment(name).main(common)
        for shard in ("1/2", "0/2"):         # as the Makefile runs it: processes share the seeds
            load_experiment("04_seed_variance").main(common + ["--target", "L1.N3", "--shard", shard])
        _SMOKE["dir"] = results / "smoke"
    return _SMOKE["dir"]


def read(path):
    return json.loads(path.read_text())


def complete_runs(exp_dir):
    return sorted(d for d in exp_dir.iterdir() if (d / "summary.json").exists())


def test_calibration_writes_table_and_limits(smoke_results):
    out = smoke_results / "01_fluency_calibration"
    rows = read(out / "fluency.json")["rows"]
    assert [r["n"] for r in rows] == [2, 4, 8, 12, 16]
    assert all(r["mean"] > 0 and r["sd"] > 0 for r in rows)
    lim = read(out / "thresholds.json")
    row12 = next(r for r in rows if r["n"] == 12)
    assert lim["in_distribution"] == pytest.approx(row12["mean"] + 2 * row12["sd"])
    z100 = (math.log(100) - 3.7) / 1.1
    assert lim["perplexity_100"] == pytest.approx(row12["mean"] + z100 * row12["sd"])
    assert lim["perplexity_100"] < lim["ce_5"] < lim["ce_6"]


def test_paper_limits_map_to_themselves_under_the_paper_calibration():
    exp = load_experiment("01_fluency_calibration")
    for c in (4.6, 5.0, 6.0):
        assert exp.paper_limit_analog(c, 3.7, 1.1) == pytest.approx(c)
    assert exp.paper_limit_analog(3.7, 2.0, 0.5) == pytest.approx(2.0)


def test_calibration_skips_when_done(smoke_results, tiny_model_dir, capsys):
    before = (smoke_results / "01_fluency_calibration" / "thresholds.json").read_text()
    load_experiment("01_fluency_calibration").main(
        ["--preset", "smoke", "--results", str(smoke_results.parent), "--model", str(tiny_model_dir)])
    assert "already done" in capsys.readouterr().out
    assert (smoke_results / "01_fluency_calibration" / "thresholds.json").read_text() == before


def test_token_logits_runs_and_bans_the_word(smoke_results):
    out = smoke_results / "02_token_logits"
    words = read(out / "targets.json")["words"]
    assert len(words) == 2
    for w in words:
        assert re.fullmatch(r" [a-z]{4,}", w) and not keyword.iskeyword(w.strip())
    runs = complete_runs(out)
    assert len(runs) == 2
    for d in runs:
        word = read(d / "config.json")["target"].split(":", 1)[1].strip()
        assert all(word not in p["text"].lower() for p in read(d / "frontier.json"))


def test_common_words_follow_the_rule(tmp_path, tokenizer):
    exp = load_experiment("02_token_logits")
    from fluentdream.data.mining import DataSource
    text = ("the return value is self and the return value of the function is the value "
            "returned by the function when called with self\n") * 20
    (tmp_path / "corpus.txt").write_text(text)
    words = exp.common_words(tokenizer, DataSource(str(tmp_path / "corpus.txt")), 2)
    assert len(words) == 2
    for w in words:
        assert re.fullmatch(r" [a-z]{4,}", w)
        assert w.strip() not in {"return", "self", "the"} | exp.STOPWORDS
        assert len(tokenizer.encode(w)) == 1
    counts = [text.count(w + " ") + text.count(w + "\n") for w in words]
    assert counts[0] >= counts[1]


def test_ladder_rule():
    exp = load_experiment("03_six_neurons")
    assert exp.ladder(4) == ["L0.N0", "L1.N1", "L1.N2", "L2.N3", "L2.N4", "L3.N5"]
    assert exp.ladder(36)[0] == "L0.N0" and exp.ladder(36)[-1] == "L35.N5"


def test_six_neurons_runs_and_attributes(smoke_results):
    out = smoke_results / "03_six_neurons"
    neurons = read(out / "targets.json")["neurons"]
    assert neurons == load_experiment("03_six_neurons").ladder(2)
    assert len(complete_runs(out)) == 6
    prompts = read(out / "attribution.json")["prompts"]
    assert {p["neuron"] for p in prompts} == set(neurons)
    for p in prompts:
        assert len(p["tokens"]) == len(p["max_drop"]) == 12
        assert np.all(np.array(p["max_drop"]) >= np.array(p["min_drop"]) - 1e-6)
    assert max(sum(p["neuron"] == n for p in prompts) for n in neurons) <= 3


def test_six_neurons_needs_calibration(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="01_fluency_calibration"):
        load_experiment("03_six_neurons").main(
            ["--preset", "smoke", "--results", str(tmp_path), "--model", str(tiny_model_dir)])


def test_seed_variance_runs_every_seed(smoke_results):
    out = smoke_results / "04_seed_variance"
    study = read(out / "study.json")
    assert study["target"] == "L1.N3" and study["seeds"] == [0, 1, 2]
    assert study["checkpoints"] == [1, 2, 6]       # 20/40/100/300 of 300, scaled to 6 iterations
    runs = complete_runs(out)
    assert sorted(read(d / "config.json")["seed"] for d in runs) == [0, 1, 2]
    assert len({read(d / "summary.json")["best_target"] for d in runs}) > 1   # seeds differ


def test_seed_variance_needs_a_neuron_choice(tmp_path, tiny_model_dir):
    exp = load_experiment("04_seed_variance")
    common = ["--preset", "smoke", "--results", str(tmp_path), "--model", str(tiny_model_dir)]
    with pytest.raises(ValueError, match="05_dream_vs_dataset"):
        exp.main(common)
    choices = tmp_path / "smoke" / "05_dream_vs_dataset" / "neuron_choices.json"
    choices.parent.mkdir(parents=True)
    choices.write_text(json.dumps({"example_neuron": "L0.N7", "polysemantic_neuron": "L0.N8"}))
    exp.main(common + ["--seeds", "1", "--iters", "2"])
    assert read(tmp_path / "smoke" / "04_seed_variance" / "study.json")["target"] == "L0.N7"


def test_seed_variance_shard_runs_its_seeds_only(tmp_path, tiny_model_dir):
    exp = load_experiment("04_seed_variance")
    common = ["--preset", "smoke", "--results", str(tmp_path), "--model", str(tiny_model_dir),
              "--target", "L0.N7", "--seeds", "5", "--iters", "2"]
    exp.main(common + ["--shard", "1/3"])
    out = tmp_path / "smoke" / "04_seed_variance"
    assert sorted(read(d / "config.json")["seed"] for d in complete_runs(out)) == [1, 4]
    assert read(out / "study.json")["seeds"] == [0, 1, 2, 3, 4]      # the study, not the shard
    with pytest.raises(ValueError, match="--shard must be k/K"):
        exp.main(common + ["--shard", "3/3"])
