"""benchmarks/time_to_quality.py, the parts that are fluentdream's (no reference checkout needed):
the first iteration reaching a goal equals brute force, the speed-up of hand-made times is their
ratio of medians, and a fluentdream run's clock and fp32 hypervolume mean what they say."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

import fluentdream as fd
from conftest import REPO
from fluentdream.evaluate import Scorer
from fluentdream.ragged import rows


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    path = REPO / "benchmarks" / "time_to_quality.py"
    spec = importlib.util.spec_from_file_location("bench_ttq", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ttq = _load()
import ttq_table  # noqa: E402  (benchmarks/, on the path once ttq is loaded)


@pytest.mark.parametrize("seed", range(20))
def test_first_reaching_is_the_brute_force_first(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, 40))
    curve = np.cumsum(rng.exponential(size=T) * (rng.random(T) < 0.5))   # non-decreasing, flats
    goal = float(rng.uniform(0, curve[-1] * 1.2 + 1e-9))
    hits = [t for t in range(1, T + 1) if curve[t - 1] >= goal]
    assert ttq.first_reaching(lambda t: curve[t - 1], T, goal) == (hits[0] if hits else None)


def _rows(theirs, ours):
    return ([dict(implementation="reference", seconds_to_goal=s) for s in theirs]
            + [dict(implementation="fluentdream", seconds_to_goal=s) for s in ours])


def test_speedup_is_the_ratio_of_median_times_and_counts_runs_that_never_reach():
    s = ttq_table.speedup(_rows([10.0, 12.0, 30.0, None, 11.0], [2.0, 3.0, None, 2.5, 100.0]))
    assert s["ratio"] == pytest.approx(12.0 / 3.0)          # medians: 12 and 3 (None = infinity)
    assert s["reached"] == {"reference": 4, "fluentdream": 4}
    assert s["runs"] == {"reference": 5, "fluentdream": 5}
    assert s["ci"][0] <= s["ratio"] <= s["ci"][1]
    summary = ttq.summarize([dict(r, target="a") for r in _rows([10.0] * 3, [2.0] * 3)]
                            + [dict(r, target="b") for r in _rows([8.0] * 3, [4.0] * 3)])
    assert summary["all"]["geometric_mean"] == pytest.approx(np.sqrt(5.0 * 2.0))
    table = ttq.markdown(summary, 300)
    assert "5.00x" in table and "over the 2 of 2 target(s)" in table


def test_fluentdream_clock_and_fp32_hypervolume(tiny_lm):
    target, cfg = fd.Neuron(1, 4), fd.EPOConfig(iters=4, population_size=4, explore_per_pop=4,
                                                seq_len=5, topk=16, batch_size=64)
    runs = ttq.run_fluentdream(tiny_lm, target, cfg, [0, 1])
    for hist, clock in runs:
        assert clock.shape == (4,) and np.all(np.diff(clock) > 0) and clock[0] > 0
    hist = runs[0][0]
    rules = Scorer(tiny_lm, target)
    _, f, ce = hist.candidates()
    corner = (float(ce.max()) + 0.1, float(f.min()) - 0.1)
    # re-scored frontier of the first t iterations: never above the hypervolume of all their
    # candidates scored afresh (a lower bound), equal here where the dtype is already fp32
    for t in (1, 4):
        ids, _, _ = hist.truncated(t).candidates()
        f_all, ce_all = rules.score(torch.tensor(ids, dtype=torch.long))
        front = fd.pareto_frontier([(ids, f_all.numpy(), ce_all.numpy())])
        everything = fd.frontier_quality(front, *corner)
        assert ttq.fp32_hypervolume(hist, t, rules, corner) == pytest.approx(everything, rel=1e-5)
    early, late = (ttq.fp32_hypervolume(hist, t, None, corner) for t in (1, 4))
    assert early <= late


def test_prompts_of_several_lengths_are_rescored_one_by_one(tiny_lm):
    """fluentdream's own operators (--operators, --min-len, --max-len) make padded prompts of
    several lengths; their fp32 hypervolume must be that of each prompt scored alone."""
    target = fd.Neuron(1, 4)
    cfg = fd.EPOConfig(iters=4, population_size=4, explore_per_pop=4, seq_len=5, topk=16,
                       batch_size=64, operators=dict(swap=0.4, insert=0.3, delete=0.3),
                       min_len=3, max_len=7, restart_mode="frontier", restart_frequency=2)
    hist = ttq.run_fluentdream(tiny_lm, target, cfg, [0])[0][0]
    ids, _, _ = hist.candidates()
    assert len({len(r) for r in rows(ids)}) > 1                    # the run did vary the length
    alone = [Scorer(tiny_lm, target).score(torch.tensor([row]))
             for row in rows(fd.pareto_frontier([hist]).ids)]
    f = np.array([float(a[0][0]) for a in alone])
    ce = np.array([float(a[1][0]) for a in alone])
    corner = (float(np.nanmax(ce)) + 0.1, float(f[np.isfinite(f)].min()) - 0.1)
    keep = np.isfinite(f)
    expected = fd.frontier_quality((f[keep], ce[keep]), *corner)
    assert ttq.fp32_hypervolume(hist, 4, Scorer(tiny_lm, target), corner) == pytest.approx(
        expected, rel=1e-5)


def test_fluentdreams_own_options_are_checked_before_anything_loads(capsys):
    assert ttq.main(["--reference", "/nonexistent", "--operators", "insert=1"]) == 2
    assert "min_len < max_len" in capsys.readouterr().err
    assert ttq.main(["--reference", "/nonexistent", "--operators", "jump=1"]) == 2
    assert "unknown operators ['jump']" in capsys.readouterr().err
    for flag in ("--topk", "--reference-topk"):
        assert ttq.main(["--reference", "/nonexistent", flag, "0"]) == 2
        assert "topk must be a positive integer, got 0" in capsys.readouterr().err


def test_topk_is_each_sides_own_and_the_reference_keeps_the_papers_unless_told():
    cfgs, theirs, ours = ttq.configs(ttq.parser().parse_args(["--topk", "64"]))
    assert (cfgs["reference"].topk, cfgs["fluentdream"].topk) == (512, 64)
    assert (theirs, ours) == ({}, {"topk": 64})
    cfgs, theirs, _ = ttq.configs(ttq.parser().parse_args(["--reference-topk", "64",
                                                            "--restart-mode", "frontier"]))
    assert (cfgs["reference"].topk, cfgs["fluentdream"].topk) == (64, 512)
    assert cfgs["reference"].restart_mode == "collapse" and theirs == {"topk": 64}


def test_unequal_seed_counts_are_reported_per_side_with_quality_and_pace():
    rows = _rows([9.0], [1.0, 3.0, None])
    for r, hv, sec, its in zip(rows, [60.0, 50.0, 70.0, 55.0], [30, 10, 20, 30],
                               [300, 100, 100, 300]):
        r.update(target="a", hypervolume=hv, total_seconds=sec, iterations_run=its)
    summary = ttq.summarize(rows)
    assert summary["a"]["ratio"] == pytest.approx(3.0)                # 9 / median(1, 3, inf)
    assert summary["a"]["hypervolume"] == {"reference": 60.0, "fluentdream": 55.0}
    assert summary["a"]["seconds_per_iteration"] == pytest.approx(
        {"reference": 0.1, "fluentdream": 0.1})                       # median of .1, .2, .1
    assert "| 1 of 1, 2 of 3 | 60.00, 55.00 | 0.100, 0.100 |" in ttq.markdown(summary, 300)


def test_when_no_target_has_a_finite_speedup_the_all_row_says_so():
    rows = _rows([9.0, 7.0, None], [None, None, None])
    for r in rows:
        r.update(target="a", hypervolume=50.0, total_seconds=30, iterations_run=300)
    table = ttq.markdown(ttq.summarize(rows), 300)
    assert "| all targets | | | none: no target of 1 has a finite speed-up |" in table
    assert "nan" not in table


def test_the_corner_is_scored_on_the_prompts_each_run_draws_first(tiny_lm):
    target, cfg = fd.Neuron(1, 4), fd.EPOConfig(iters=1, population_size=4, explore_per_pop=4,
                                                seq_len=5, topk=16, batch_size=64)
    rules = Scorer(tiny_lm, target)
    hists = fd.batched.epo_many(tiny_lm, [(target, cfg.replace(seed=s)) for s in (3, 8)])
    first = torch.cat([torch.tensor(h.ids[0][:4, :5], dtype=torch.long) for h in hists])
    f0, ce0 = rules.score(first)
    assert ttq.initial_corner(tiny_lm, target, cfg, [3, 8], rules) == (
        float(ce0[torch.isfinite(f0)].max()), float(f0[torch.isfinite(f0)].min()))


def test_a_stopped_run_ends_where_stop_says_and_its_clock_covers_it(tiny_lm):
    target, cfg = fd.Neuron(1, 4), fd.EPOConfig(iters=9, population_size=4, explore_per_pop=4,
                                                seq_len=5, topk=16, batch_size=64)
    runs = ttq.run_fluentdream(tiny_lm, target, cfg, [0, 1], stop=lambda h: h.n_iters >= 3)
    assert [h.n_iters for h, _ in runs] == [3, 3]
    assert all(len(clock) == h.n_iters for h, clock in runs)


def test_bad_arguments_are_one_line_errors(capsys):
    assert ttq.main(["--seeds", "2"]) == 2
    assert "give --reference" in capsys.readouterr().err
    assert ttq.main(["--reference", "/nonexistent"]) == 2
    assert "not a checkout" in capsys.readouterr().err
    assert ttq.main(["--reference", "/nonexistent", "--stop-at-goal", "0"]) == 2
    assert "--stop-at-goal must be at least 1" in capsys.readouterr().err


def test_the_report_section_is_replaced_in_place_and_the_rest_kept(tmp_path):
    rows = [dict(r, target="a") for r in _rows([10.0] * 3, [2.0] * 3)]
    meta = dict(command="python benchmarks/time_to_quality.py", model="m", threads=2,
                model_name="embedded", fluentdream_dtype="bfloat16", reference_dtype="bfloat16",
                seeds=[0, 1, 2], reference_seeds=[0, 1, 2], fluentdream_sha="x",
                reference_sha="y", config=dict(iters=300))
    result = dict(meta=meta, summary=ttq.summarize(rows))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Speed\n\nbefore\n\n## Against the reference implementation\n\nkept\n")
    ttq.splice_section(md, result)
    ttq.splice_section(md, result)                          # again: replaced, not appended twice
    text = md.read_text()
    assert text.count(ttq.SECTION) == 1 and "5.00x" in text
    assert text.startswith("# Speed\n\nbefore\n\n## Against the reference implementation\n\nkept\n")
    other = dict(result, meta=dict(meta, model_name="smollm2-135m", stop_at_goal=10))
    ttq.splice_section(md, other)                           # a second model: its own section
    ttq.splice_section(md, result)
    text = md.read_text()
    assert text.count(ttq.SECTION) == 2 and text.count(f"{ttq.SECTION}: embedded\n") == 1
    assert "stopped at the first multiple of 10" in text
    own = dict(result, meta=dict(meta, fluentdream_options=dict(
        restart_mode="frontier", operators=dict(swap=0.5, insert=0.25, delete=0.25))))
    ttq.splice_section(md, own)                             # a variant: its own section too
    text = md.read_text()
    assert text.count(ttq.SECTION) == 3 and text.count(f"{ttq.SECTION}: embedded\n") == 1
    assert (f"{ttq.SECTION}: embedded, fluentdream with restart_mode=frontier, "
            "operators=swap=0.5+insert=0.25+delete=0.25\n") in text
    both = dict(own, meta=dict(own["meta"], reference_options=dict(topk=64)))
    ttq.splice_section(md, both)                            # the reference off Table 1: its own
    assert md.read_text().count(ttq.SECTION) == 4
    assert (f"{ttq.SECTION}: embedded, the reference with topk=64, fluentdream with "
            "restart_mode=frontier" in md.read_text())
    on_other_cpu = dict(result, meta=dict(meta, cpu="AMD EPYC (avx512_bf16)"))
    ttq.splice_section(md, on_other_cpu)                    # another CPU: another result
    text = md.read_text()
    assert text.count(ttq.SECTION) == 5
    assert f"{ttq.SECTION}: embedded on AMD EPYC (avx512_bf16)\n" in text


@pytest.mark.parametrize("n", range(1, 12))
def test_more_than_half_the_reference_runs_reach_its_goal_so_its_median_time_is_finite(n):
    final = np.random.default_rng(n).uniform(40, 80, n)
    goal = ttq.reference_goal(list(final))
    assert goal in final and (final >= goal).sum() > n / 2
    assert goal == sorted(final)[(n - 1) // 2]                  # the lower median, by hand
    times = np.where(final >= goal, 1.0, np.inf)              # a run reaching it takes 1 s
    assert np.isfinite(np.median(times))
    if n % 2:
        assert goal == np.median(final)                          # odd: the plain median
