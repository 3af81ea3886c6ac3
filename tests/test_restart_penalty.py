"""benchmarks/restart_penalty.py: the two restart rules it compares, a smoke run whose table is
the medians and paired differences of its saved hypervolumes, and a bad input."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

import fluentdream as fd
from conftest import REPO


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_restart_penalty", REPO / "benchmarks" / "restart_penalty.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rp = _load()


def test_the_rules_are_the_papers_draw_and_a_fixed_penalty():
    rules = rp.rules_of(fd.EPOConfig(iters=9), 2.0)
    drawn, fixed = rules["drawn"], rules["fixed"]
    assert (drawn.restart_xentropy_min, drawn.restart_xentropy_max) == (0.667, 6.0)   # Table 1
    assert (fixed.restart_xentropy_min, fixed.restart_xentropy_max) == (2.0, 2.0)
    assert fixed.replace(restart_xentropy_min=0.667, restart_xentropy_max=6.0) == drawn


def test_a_smoke_run_reports_the_medians_and_paired_differences_it_saved(tmp_path, capsys):
    out = tmp_path / "rp.json"
    assert rp.main(["--iters", "4", "--seeds", "2", "--target", "L1.N840", "--threads", "1",
                    "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert row["at"] == [1, 2, 4] and result["meta"]["seeds"] == [0, 1]
    printed = capsys.readouterr().out
    for j, t in enumerate(row["at"]):
        drawn = np.array(row["hypervolume"]["drawn"])[:, j]
        fixed = np.array(row["hypervolume"]["fixed"])[:, j]
        assert np.all(drawn > 0) and np.all(fixed > 0)
        d = fixed - drawn
        assert (f"| L1.N840 | {t} | {np.median(drawn):.2f} | {np.median(fixed):.2f} | "
                f"{d.mean():+.2f} [") in printed
        assert f"| {(d > 0).sum()} / {(d < 0).sum()} |" in printed


def test_a_bad_penalty_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "rp.json"
    assert rp.main(["--fixed", "0", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fixed must be a positive penalty" in err
    assert not out.exists()


def test_the_reference_is_compared_unpaired_with_each_rule():
    """Hand-made hypervolumes: fully separated samples of 3 and 3 have the exact two-sided
    Mann-Whitney p = 2 / C(6, 3) = 0.1; the paired part is fixed - drawn per seed."""
    row = dict(target="t", at=[5], hypervolume=dict(
        drawn=[[1.0], [2.0], [3.0]], fixed=[[1.5], [2.5], [2.0]], reference=[[4.0], [5.0], [6.0]]))
    s, = rp.summarize(row)
    assert (s["drawn"], s["fixed"], s["reference"]) == (2.0, 2.0, 5.0)
    assert s["mean"] == pytest.approx((0.5 + 0.5 - 1.0) / 3) and (s["ahead"], s["behind"]) == (2, 1)
    assert s["p_reference"]["drawn"] == pytest.approx(0.1)
    assert s["p_reference"]["fixed"] == pytest.approx(0.1)
