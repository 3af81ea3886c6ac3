"""benchmarks/time_to_quality.py, ttq_table.py and judge.py, the parts that are fluentdream's (no
reference checkout needed): the judged curve is the staircase area of every accepted candidate,
written out here; the first iteration reaching a goal is brute force's on any curve; the exact
statistics reject what they should and only that; a run's clock means what it says."""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch

import fluentdream as fd
from conftest import REPO
from fluentdream.core.scoring import Scorer


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_ttq", REPO / "benchmarks" / "time_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ttq = _load()
import judge  # noqa: E402  (benchmarks/, on the path once ttq is loaded)
import ttq_table  # noqa: E402

SMALL = dict(population_size=4, explore_per_pop=4, seq_len=5, topk=16, batch_size=64)


@pytest.mark.parametrize("seed", range(20))
def test_first_reaching_is_the_brute_force_first_on_any_curve(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, 40))
    curve = rng.normal(size=T).cumsum() if seed % 2 else rng.uniform(0, 10, T)   # rises and falls
    goal = float(rng.uniform(curve.min() - 1, curve.max() + 1))
    hits = [t for t in range(1, T + 1) if curve[t - 1] >= goal]
    assert judge.first_reaching(curve, goal) == (hits[0] if hits else None)


def test_the_null_distribution_of_u_is_the_count_over_every_ordering():
    for m, n in ((1, 1), (2, 3), (4, 3), (3, 5)):
        counts = np.zeros(m * n + 1)
        for first in itertools.combinations(range(m + n), m):
            second = [p for p in range(m + n) if p not in first]
            counts[sum(a > b for a in first for b in second)] += 1
        np.testing.assert_array_equal(ttq_table.null_counts(m, n), counts)
    assert ttq_table.null_counts(10, 10).sum() == math.comb(20, 10)


def test_the_speedup_test_rejects_a_real_speedup_and_not_an_equal_speed():
    rng = np.random.default_rng(3)
    theirs = np.exp(rng.normal(np.log(30.0), 0.3, 10))
    faster = np.exp(rng.normal(np.log(5.0), 0.3, 10))               # truly 6x faster
    same = np.exp(rng.normal(np.log(30.0), 0.3, 10))                # truly as fast
    lo, hi = ttq_table.ratio_interval(theirs, faster)
    assert 1 < lo < 6 < hi
    assert ttq_table.mann_whitney_p(theirs, faster) < 0.001
    assert ttq_table.mann_whitney_p(theirs / 3, faster, "greater") < 0.05   # more than 3x
    lo, hi = ttq_table.ratio_interval(theirs, same)
    assert lo < 1 < hi and ttq_table.mann_whitney_p(theirs, same) > 0.05
    # at 2x the "more than 3x" test does not reject
    twice = np.exp(rng.normal(np.log(15.0), 0.3, 10))
    assert ttq_table.mann_whitney_p(theirs / 3, twice, "greater") > 0.05


def test_three_runs_a_side_cannot_give_a_95_percent_interval():
    # Complete separation of 3 + 3: the exact two-sided p is 2 / 20 = 0.1, so no 95% interval.
    theirs, ours = np.array([100.0, 110, 120]), np.array([1.0, 2, 3])
    assert ttq_table.ratio_interval(theirs, ours) == (0.0, math.inf)
    assert ttq_table.mann_whitney_p(theirs, ours) == pytest.approx(0.1)


def _rows(theirs, ours, target="a"):
    return [dict(target=target, implementation=impl, seconds_to_goal=s, hypervolume=50.0,
                 total_seconds=30.0, iterations_run=300)
            for impl, side in (("reference", theirs), ("fluentdream", ours)) for s in side]


def test_a_run_that_never_reaches_the_goal_counts_and_no_target_is_dropped():
    s = ttq_table.speedup(_rows([10.0, 12.0, 30.0, None, 11.0], [2.0, 3.0, None, 2.5, 100.0]))
    assert s["ratio"] == pytest.approx(12.0 / 3.0)          # medians: 12 and 3 (None = infinity)
    assert s["reached"] == {"reference": 4, "fluentdream": 4}
    assert s["ci"][0] <= s["ratio"] <= s["ci"][1]
    never = ttq_table.speedup(_rows([9.0, 7.0, 8.0], [None, None, 4.0]))
    assert never["ratio"] == 0.0                            # fluentdream's median run never does
    summary = ttq_table.summarize(_rows([10.0] * 3, [2.0] * 3, "a") + _rows([8.0] * 3, [None] * 3, "b")
                                  + _rows([8.0] * 3, [4.0] * 3, "c"))
    assert summary["all"]["targets"] == 3 and summary["all"]["median"] == pytest.approx(2.0)
    table = ttq_table.markdown(summary, 300)
    assert "| b | 8.0 | never | 0.00x" in table and "median 2.00x" in table


def test_the_judged_curve_is_the_staircase_area_of_every_accepted_candidate(tiny_lm):
    target = fd.Neuron(1, 4)
    hist = fd.epo(tiny_lm, target, fd.EPOConfig(iters=5, seed=1, **SMALL), progress=False)
    j = judge.Judge(tiny_lm, "L1.N4")
    corner = j.corner(fd.EPOConfig(**SMALL), [1])
    curve = j.curve(hist, corner, native=True)
    assert curve.shape == (5,) and (np.diff(curve) >= 0).all()
    for t in range(1, 6):                                    # written out: union of rectangles
        f, ce = hist.target[:t].ravel(), hist.xentropy[:t].ravel()
        ok = hist.valid[:t].ravel()                     # scored and retokenizing
        f, ce = f[ok].astype(float), ce[ok].astype(float)
        xs = sorted({c for c in ce if c < corner[0]} | {corner[0]})
        area = sum((b - a) * max([v - corner[1] for v, c in zip(f, ce) if c <= a] + [0.0])
                   for a, b in zip(xs, xs[1:]))
        assert curve[t - 1] == pytest.approx(area, rel=1e-6, abs=1e-9)
    # re-scoring the records (what a bf16 run gets) in the same fp32 changes nothing here
    np.testing.assert_allclose(j.curve(hist, corner, native=False), curve, rtol=1e-5, atol=1e-7)


def test_the_judge_applies_the_rules_to_a_run_that_searched_without_them(tiny_lm):
    target = fd.Neuron(1, 4)
    free = fd.epo(tiny_lm, target, fd.EPOConfig(iters=3, seed=2, retokenize=False, **SMALL),
                  progress=False)
    valid = judge.Judge(tiny_lm, "L1.N4").valid(free)
    T, P, W = free.ids.shape
    flat = torch.from_numpy(free.ids.reshape(T * P, W).astype(np.int64))
    accepted = ~Scorer(tiny_lm, target).rejected(flat)
    np.testing.assert_array_equal(valid.ravel(), accepted)
    assert not accepted.all()                               # some prompts fail retokenization


def test_a_runs_clock_rises_and_a_stopped_run_ends_where_stop_says(tiny_lm):
    target, cfg = fd.Neuron(1, 4), fd.EPOConfig(iters=9, **SMALL)
    hist, clock = ttq.run_fluentdream(tiny_lm, target, cfg)
    assert clock.shape == (9,) and clock[0] > 0 and (np.diff(clock) > 0).all()
    hist, clock = ttq.run_fluentdream(tiny_lm, target, cfg, stop=lambda h: h.n_iters >= 3)
    assert hist.n_iters == 3 and len(clock) == 3


def test_the_corner_is_scored_on_the_prompts_each_run_draws_first(tiny_lm):
    target, cfg = fd.Neuron(1, 4), fd.EPOConfig(iters=1, **SMALL)
    rules = Scorer(tiny_lm, target)
    hists = [fd.epo(tiny_lm, target, cfg.replace(seed=s), progress=False) for s in (3, 8)]
    first = torch.cat([torch.tensor(h.ids[0][:4, :5], dtype=torch.long) for h in hists])
    f0, ce0 = rules.score(first)
    ok = torch.isfinite(f0)
    assert judge.Judge(tiny_lm, "L1.N4").corner(cfg, [3, 8]) == (float(ce0[ok].max()),
                                                                 float(f0[ok].min()))


def test_each_side_keeps_its_own_settings():
    cfgs, theirs, ours = ttq.configs(ttq.parser().parse_args(["--topk", "64", "--max-len", "12",
                                                              "--min-len", "8", "--operators",
                                                              "swap=0.6,insert=0.2,delete=0.2"]))
    assert (cfgs["reference"].topk, cfgs["fluentdream"].topk) == (512, 64)
    assert cfgs["reference"].retokenize is False            # the reference's search as published
    assert cfgs["fluentdream"].retokenize is True and cfgs["fluentdream"].length_range == (8, 12)
    assert theirs == {} and set(ours) == {"topk", "min_len", "max_len", "operators"}


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "2"], "give --reference"),
    (["--reference", "/nonexistent"], "not a checkout"),
    (["--reference", "/nonexistent", "--stop-at-goal", "0"], "--stop-at-goal must be at least 1"),
    (["--reference", "/nonexistent", "--operators", "insert=1"], "min_len < max_len"),
    (["--reference", "/nonexistent", "--topk", "0"], "topk must be a positive integer, got 0"),
])
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    assert ttq.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


META = dict(command="python benchmarks/time_to_quality.py", model="m", threads=2,
            model_name="embedded", cpu="AMD EPYC (avx512_bf16)", fluentdream_dtype="bfloat16",
            reference_dtype="bfloat16", seeds=[0, 1, 2], reference_seeds=[0, 1, 2],
            fluentdream_sha="x", reference_sha="y", config=dict(iters=300))


def test_each_setting_has_its_own_report_section_replaced_in_place(tmp_path):
    meta = META
    result = dict(meta=meta, summary=ttq_table.summarize(_rows([10.0] * 3, [2.0] * 3)))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Speed\n\nbefore\n\n## Other\n\nkept\n")
    ttq_table.splice_section(md, result)
    ttq_table.splice_section(md, result)                   # again: replaced, not appended twice
    text = md.read_text()
    assert text.count(ttq_table.SECTION) == 1 and "5.00x" in text and "one run at a time" in text
    assert text.startswith("# Speed\n\nbefore\n\n" + ttq_table.SECTION)   # the latency first
    assert text.endswith("## Other\n\nkept\n")
    own = dict(result, meta=dict(meta, fluentdream_options=dict(topk=64)))
    ttq_table.splice_section(md, own)                      # a variant: its own section
    assert md.read_text().count(ttq_table.SECTION) == 2 and "fluentdream with topk=64" in md.read_text()


@pytest.mark.parametrize("n", range(1, 12))
def test_more_than_half_the_reference_runs_reach_its_goal_so_its_median_time_is_finite(n):
    final = np.random.default_rng(n).uniform(40, 80, n)
    goal = judge.reference_goal(list(final))
    assert goal == sorted(final)[(n - 1) // 2]                  # the lower median, by hand
    assert (final >= goal).sum() > n / 2
    assert np.isfinite(np.median(np.where(final >= goal, 1.0, np.inf)))


def _write(path, meta, rows):
    path.write_text(json.dumps(dict(meta=meta, runs=rows)))
    return str(path)


def test_one_target_per_file_merges_into_the_table_of_all_in_one(tmp_path, capsys):
    a, b = _rows([10.0, 11.0, 12.0], [2.0, 3.0, None], "a"), _rows([8.0] * 3, [4.0] * 3, "b")
    one = _write(tmp_path / "one.json", META, a + b)
    first = _write(tmp_path / "a.json", dict(META, command="run a"), a)
    second = _write(tmp_path / "b.json", dict(META, command="run b", fluentdream_sha="z"), b)
    merged = ttq_table.read_results([first, second])
    assert merged["summary"] == ttq_table.read_results([one])["summary"]
    assert merged["meta"]["fluentdream_sha"] == "x, z"       # each file's commit is named
    md = tmp_path / "BENCHMARKS.md"
    assert ttq.main(["--from-json", first, second, "--report", str(md)]) == 0
    assert "`run a`; `run b`" in md.read_text() and "| b | 8.0 | 4.0 | 2.00x" in md.read_text()


@pytest.mark.parametrize("change, message", [
    (dict(cpu="Intel(R) Xeon(R) Processor"), "the files differ in cpu"),
    (dict(reference_dtype="float32"), "the files differ in reference_dtype"),
    (dict(seeds=[0, 1]), "the files differ in seeds"),
    ("same target", "target 'a' is in two files"),
    ("pilot", "only main runs' files merge"),
    ("not json", "is not a results file"),
])
def test_files_of_other_settings_or_the_same_target_do_not_merge(tmp_path, capsys, change, message):
    first = _write(tmp_path / "a.json", META, _rows([10.0] * 3, [2.0] * 3, "a"))
    rows = _rows([8.0] * 3, [4.0] * 3, "a" if change == "same target" else "b")
    second = _write(tmp_path / "b.json", dict(META, **change) if isinstance(change, dict) else META,
                    rows)
    if change == "pilot":
        (tmp_path / "b.json").write_text(json.dumps(dict(meta=META, pilot={})))
    if change == "not json":
        (tmp_path / "b.json").write_text("{")
    assert ttq.main(["--from-json", first, second]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
