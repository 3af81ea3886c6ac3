"""runs.dream_many(stop=...): a run stopped early (a time budget) is saved finished with the
iterations it made, beside runs that go to the end, and a second call reruns neither."""
from __future__ import annotations

import numpy as np

import fluentdream as fd
from fluentdream import runs
from fluentdream.runs import read_json

CFG = fd.EPOConfig(population_size=4, explore_per_pop=6, topk=24, seq_len=6, iters=5,
                   restart_frequency=3)


def test_a_stopped_run_is_saved_with_its_iterations(tiny_lm, tmp_path):
    target = fd.parse_target("L1.N5", tiny_lm)
    jobs = [(target, CFG.replace(seed=s)) for s in (0, 1)]
    asked = []

    def stop(run_dir, report) -> bool:
        asked.append(run_dir)
        return run_dir.name.endswith("seed0") and sum(report.history.seconds) > 0 \
            and report.iteration == 2
    dirs = runs.dream_many(tiny_lm, jobs, tmp_path, stop=stop)
    assert set(asked) == set(dirs)
    lengths = [len(fd.History.load(d / "history.npz")) for d in dirs]
    assert lengths == [3, 5]
    assert [read_json(d / "summary.json")["iterations"] for d in dirs] == [3, 5]
    # the same first 3 iterations as without the stop (same batch: the same rounding)
    straight = runs.dream_many(tiny_lm, jobs, tmp_path / "straight")
    full = fd.History.load(straight[0] / "history.npz").truncated(3).arrays()
    stopped = fd.History.load(dirs[0] / "history.npz").arrays()
    for name in ("ids", "target", "xentropy", "kept"):
        np.testing.assert_array_equal(stopped[name], full[name], err_msg=name)   # NaN == NaN
    before = [(d / "summary.json").stat().st_mtime_ns for d in dirs]
    assert runs.dream_many(tiny_lm, jobs, tmp_path, stop=stop) == dirs
    assert [(d / "summary.json").stat().st_mtime_ns for d in dirs] == before
