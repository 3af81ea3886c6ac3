"""Experiment 09 (operators and exploring restarts at equal wall time) on a tiny model: the smoke
preset end to end, its analysis against quantities recomputed here from the saved histories and
scipy, its README rows, Fig 8, and its bad inputs."""
from __future__ import annotations

import itertools

import json

import numpy as np
import pytest
from scipy import stats as sps

import fluentdream as fd
from analysis import numbers, operators, readme_table
from conftest import load_experiment

NAME = "09_operators_and_restarts"
CONDITIONS = ("swap", "operators", "explore", "operators+explore")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model_dir):
    """<results>/smoke after 01 (the in-distribution limit) and 09."""
    root = tmp_path_factory.mktemp("results_09")
    common = ["--preset", "smoke", "--results", str(root), "--model", str(tiny_model_dir)]
    load_experiment("01_fluency_calibration").main(common)
    assert load_experiment(NAME).main(common) == 0
    return root / "smoke"


@pytest.fixture(scope="module")
def tables(results):
    return operators.tables(results)


def test_every_condition_runs_every_seed_within_the_reference_time(results):
    out = results / NAME
    study = json.loads((out / "study.json").read_text())
    assert study["neurons"] == ["L0.N1", "L1.N3", "L1.N5"]      # 03's ladder at i = 1, 3, 5
    assert study["conditions"] == list(CONDITIONS)
    assert study["changes"]["explore"] == {"restart_mode": "frontier"}
    limit = json.loads((results / "01_fluency_calibration/thresholds.json").read_text())
    assert study["hypervolume_ref"] == {"xentropy": limit["in_distribution"], "activation": 0.0}
    for neuron in study["neurons"]:
        ref = [fd.History.load(d / "history.npz") for d in sorted((out / "swap").iterdir())
               if d.name.split("__")[1] == neuron]
        assert len(ref) == 2 and all(len(h) == study["iters"] for h in ref)
        budget = np.mean([h.seconds.sum() for h in ref])
        for condition in CONDITIONS[1:]:
            runs = [d for d in sorted((out / condition).iterdir())
                    if d.name.split("__")[1] == neuron]
            assert len(runs) == 2
            for d in runs:
                hist = fd.History.load(d / "history.npz")
                config = json.loads((d / "config.json").read_text())
                assert config["iters"] == study["cap"]
                # stopped at the first iteration that reached the budget, or at the cap
                spent = np.cumsum(hist.seconds)
                assert spent[-1] >= budget or len(hist) == study["cap"]
                assert (spent[:-1] < budget).all()
    ops = json.loads((out / "operators" / sorted(p.name for p in (out / "operators").iterdir())[0]
                      / "config.json").read_text())
    assert (ops["min_len"], ops["max_len"]) == (6, 10) and ops["operators"]["insert"] == 0.2


def test_run_table_equals_a_direct_reading_of_each_run(results, tables):
    runs = tables["operators_runs"]
    assert len(runs) == 3 * 2 * len(CONDITIONS)
    limit = runs["ref_xentropy"].iloc[0]
    for _, r in runs.iterrows():
        d = results / r["path"]
        hist = fd.History.load(d / "history.npz")
        f = np.where(hist.valid, hist.target, -np.inf).astype(float).ravel()   # what runs report
        ce = np.where(hist.valid, hist.xentropy, np.nan).astype(float).ravel()
        ok = np.isfinite(f) & (ce < limit)
        assert r["best_in_dist"] == pytest.approx(f[ok].max() if ok.any() else np.nan, nan_ok=True)
        assert r["seconds"] == pytest.approx(float(np.sum(hist.seconds)))
        assert r["iterations"] == len(hist)
        # hypervolume by its definition: the area over activation 0 and below the limit that
        # some candidate dominates, summed over the strips between consecutive CE values
        pts = [(c, t) for c, t in zip(ce, f) if np.isfinite(t) and c < limit and t > 0]
        edges = sorted({c for c, _ in pts} | {limit})
        area = sum((b - a) * max([t for c, t in pts if c <= a], default=0.0)
                   for a, b in zip(edges, edges[1:]))
        assert r["hypervolume"] == pytest.approx(area)
        # equal iterations: the fewest any run of the neuron made; the run's first k of them
        k = r["equal_iters"]
        assert k == runs.loc[runs["neuron"] == r["neuron"], "iterations"].min()
        f, ce = (np.where(hist.valid[:k], col[:k], bad).astype(float).ravel()
                 for col, bad in ((hist.target, -np.inf), (hist.xentropy, np.nan)))
        ok = np.isfinite(f) & (ce < limit)
        assert r["best_in_dist_iters"] == pytest.approx(f[ok].max() if ok.any() else np.nan,
                                                        nan_ok=True)
        assert r["hypervolume_iters"] <= r["hypervolume"] + 1e-12      # never falls with t
        if k == r["iterations"]:
            assert r["hypervolume_iters"] == pytest.approx(r["hypervolume"])


def exact_mann_whitney(x, y) -> float:
    """Two-sided p over every assignment of the pooled values to groups of len(x) and len(y),
    counted here one by one: P(|U - mn/2| >= |U_observed - mn/2|), ties as halves."""
    pooled, m = np.concatenate([x, y]), len(x)

    def u(first):
        second = [i for i in range(len(pooled)) if i not in first]
        return sum((pooled[i] > pooled[j]) + 0.5 * (pooled[i] == pooled[j])
                   for i in first for j in second)
    mid = m * len(y) / 2
    seen = abs(u(range(m)) - mid)
    splits = list(itertools.combinations(range(len(pooled)), m))
    return sum(abs(u(c) - mid) >= seen - 1e-9 for c in splits) / len(splits)


def test_tests_equal_scipy_on_the_seed_pairs(tables):
    runs, tests = tables["operators_runs"], tables["operators_tests"]
    assert set(tests["condition"]) == set(CONDITIONS[1:])
    for _, t in tests.iterrows():
        g = runs[runs["neuron"] == t["neuron"]]
        x = g[g["condition"] == t["condition"]].set_index("seed")[t["measure"]]
        y = g[g["condition"] == "swap"].set_index("seed")[t["measure"]]
        both = x.notna() & y.reindex(x.index).notna()
        x, y = x[both], y.reindex(x.index)[both]
        if t["kind"] == "level":
            d = (x - y).to_numpy()
            if (d != 0).sum() == 0:
                assert np.isnan(t["p"]) or t["p"] == 1.0
            else:
                assert t["p"] == pytest.approx(sps.wilcoxon(x, y).pvalue)
        else:
            xa, ya = g[g["condition"] == t["condition"]][t["measure"]].dropna(), \
                g[g["condition"] == "swap"][t["measure"]].dropna()
            dx, dy = (xa - xa.median()).abs(), (ya - ya.median()).abs()
            assert t["p"] == pytest.approx(exact_mann_whitney(dx.to_numpy(), dy.to_numpy()))


def test_numbers_and_readme_rows(tables):
    found = numbers.build(tables)
    for condition in CONDITIONS:
        for neuron in ("L0.N1", "L1.N3", "L1.N5"):
            e = found[f"ops.{condition}.{neuron}.hypervolume.mean"]
            assert e["n"] == 2 and e["unit"] == "area" and len(e["provenance"]["run_dirs"]) == 2
    e = found["ops.explore_vs_swap.L1.N5.hypervolume.level"]
    assert e["test"]["name"].startswith("Wilcoxon") and e["runs"] == 4
    table = readme_table.render(numbers.document(found, "smoke"))
    for claim in ("operators", "explore", "operators_explore", "ops_spread"):
        row = next(r for r in readme_table.ROWS if r.claim == claim)
        line = next(x for x in table.splitlines() if x.startswith(f"| {row.text} |"))
        assert "not run" not in line


def test_figure_renders(tables, tmp_path):
    from paper_figures import fig8_operators
    tdir = tmp_path / "tables"
    tdir.mkdir()
    for name, df in tables.items():
        df.to_csv(tdir / f"{name}.csv", index=False)
    fig8_operators.main(["--tables", str(tdir), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "fig8_operators.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--shard", "2/2"], "--shard must be k/K"),
    (["--shard", "x"], "--shard must be k/K"),
    (["--conditions", "explore,swap"], "the first condition must be 'swap'"),
    (["--conditions", "swap,insert"], "unknown condition 'insert'"),
])
def test_bad_inputs(results, tiny_model_dir, extra, message):
    with pytest.raises(ValueError, match=message):
        load_experiment(NAME).main(["--preset", "smoke", "--results", str(results.parent),
                                    "--model", str(tiny_model_dir), *extra])


def test_needs_01_first(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="01_fluency_calibration"):
        load_experiment(NAME).main(["--preset", "smoke", "--results", str(tmp_path),
                                    "--model", str(tiny_model_dir)])
