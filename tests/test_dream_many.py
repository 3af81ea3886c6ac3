"""runs.dream_many: runs batched in lockstep keep one run directory and one W&B run each."""
from __future__ import annotations

import fluentdream as fd
from fluentdream import runs
from fluentdream.runs import read_json
from test_tracking import _wandb_records

CFG = fd.EPOConfig(population_size=4, explore_per_pop=6, topk=24, seq_len=6, iters=5,
                   restart_frequency=3)


def test_each_batched_run_has_its_own_wandb_run_and_provenance(tiny_lm, tmp_path):
    target = fd.parse_target("L1.N5", tiny_lm)
    jobs = [(target, CFG.replace(seed=s)) for s in (0, 1)]
    dirs = runs.dream_many(tiny_lm, jobs, tmp_path, wandb="offline", group="tests")
    ids = set()
    for (_, cfg), d in zip(jobs, dirs):
        prov, summary = read_json(d / "provenance.json"), read_json(d / "summary.json")
        records = _wandb_records(d)
        steps = [r["history"]["item"] for r in records if r["type"] == "history"]
        assert [s["_step"] for s in steps] == list(range(cfg.iters))
        assert steps[-1]["epo/best_target"] == summary["best_target"]
        run, = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == prov["wandb_run_id"] and prov["seed"] == cfg.seed
        assert prov["batched"] == 2 and prov["dtype"] == "float32"
        ids.add(prov["wandb_run_id"])
    assert len(ids) == 2
    # A second call finds both runs complete with the same settings and runs nothing.
    before = [(d / "summary.json").stat().st_mtime_ns for d in dirs]
    assert runs.dream_many(tiny_lm, jobs, tmp_path) == dirs
    assert [(d / "summary.json").stat().st_mtime_ns for d in dirs] == before


def test_batched_runs_save_on_ctrl_c_and_resume_exactly(tiny_lm, tmp_path):
    """Ctrl-C in a batch saves each run's finished iterations; the next call resumes them all
    to exactly the Histories of an uninterrupted batch (same runs, so the same rounding)."""
    import numpy as np

    target = fd.parse_target("L1.N5", tiny_lm)
    jobs = [(target, CFG.replace(seed=s, iters=7)) for s in (0, 1)]

    def ctrl_c(run_dir, report) -> bool:
        if report.iteration == 4:
            raise KeyboardInterrupt
        return False
    dirs = runs.dream_many(tiny_lm, jobs, tmp_path / "cut", stop=ctrl_c)
    assert not any((d / "summary.json").exists() for d in dirs)
    assert all(read_json(d / "provenance.json")["interrupted"] for d in dirs)
    # run 0 finished iteration 4 (the cut came in its callback), run 1 had not yet
    assert [len(fd.History.load(d / "history.npz")) for d in dirs] == [5, 4]
    runs.dream_many(tiny_lm, jobs, tmp_path / "cut")
    straight = runs.dream_many(tiny_lm, jobs, tmp_path / "straight")
    for a, b in zip(dirs, straight):
        x, y = (fd.History.load(d / "history.npz").arrays() for d in (a, b))
        for name in set(x) - {"seconds"}:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)
        assert read_json(a / "summary.json")["iterations"] == 7
