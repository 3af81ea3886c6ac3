"""Sweeps: a small sweep on a real local Ray instance with 2 workers; skip on re-run; a failing
job is recorded and the others finish; W&B runs of a sweep share a group (DESIGN §7, §9)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fluentdream import EPOConfig
from fluentdream.cli import main
from fluentdream.distributed import Job, make_jobs, parse_seeds, run_jobs
from fluentdream.runs import is_complete, read_json, run_dir_for

BASE = EPOConfig(iters=3, population_size=2, explore_per_pop=4, topk=16, restart_frequency=2)
FILES = ("config.json", "provenance.json", "history.npz", "frontier.json", "summary.json")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("0,5-6") == [0, 5, 6]
    with pytest.raises(ValueError, match="0-3 or 0,5,7"):
        parse_seeds("a-b")


def test_ray_sweep_completes_skips_and_survives_a_bad_job(ray_local, tiny_model_dir, tmp_path):
    model, out = str(tiny_model_dir), tmp_path / "sweep"
    jobs = make_jobs(["L1.N5", "L1.N6"], [0, 1]) + [Job("L9.N0", 0)]   # layer 9 does not exist
    results = run_jobs(model, jobs, out, BASE, executor="ray", workers=2, wandb="offline")
    assert [r.status for r in results] == ["done"] * 4 + ["failed"]
    assert "out of range" in results[-1].error
    assert "out of range" in read_json(results[-1].run_dir / "error.json")["error"]
    for r in results[:4]:
        assert all((r.run_dir / name).exists() for name in FILES)
        assert r.summary["iterations"] == 3 and not (r.run_dir / "error.json").exists()
        config, prov = read_json(r.run_dir / "config.json"), read_json(r.run_dir / "provenance.json")
        assert (config["target"], config["seed"]) == (r.job.target, r.job.seed)
        assert prov["sweep_group"] == "sweep" and prov["wandb_mode"] == "offline"
    log, = (results[3].run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    inspect = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                             capture_output=True, text=True, timeout=120, check=True)
    run, = [json.loads(x)["run"] for x in inspect.stdout.splitlines() if '"type":"run"' in x]
    assert run["run_group"] == "sweep"

    stamps = [(r.run_dir / "summary.json").stat().st_mtime_ns for r in results[:4]]
    again = run_jobs(model, jobs, out, BASE, executor="ray", workers=2, wandb="offline")
    assert [r.status for r in again] == ["skipped"] * 4 + ["failed"]
    assert stamps == [(r.run_dir / "summary.json").stat().st_mtime_ns for r in again[:4]]


def test_local_sweep_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_model_dir), "--targets", "L1.N5,logit: the",
            "--seeds", "2", "--out", str(out), "--wandb", "disabled", "--no-progress",
            "--iters", "2", "--population-size", "2", "--explore-per-pop", "4", "--topk", "16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 jobs complete" in printed
    dirs = sorted(out.iterdir())
    assert dirs == [run_dir_for(out, str(tiny_model_dir), t, 2) for t in ("L1.N5", "logit: the")]
    assert all(is_complete(d) for d in dirs)
    assert main(args) == 0 and printed.count("done") == 2
    assert capsys.readouterr().out.count("skipped") == 2
    assert main(args + ["--seed", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
