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
