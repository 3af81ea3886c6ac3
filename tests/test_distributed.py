"""Sweeps: a small sweep on a real local Ray instance with 2 workers; skip on re-run; a failing
job is recorded and the others finish; W&B runs of a sweep share a group (DESIGN §7, §9)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fluentdream import EPOConfig, History, UserError
from fluentdream.cli import main
from fluentdream.runs.distributed import Job, make_jobs, parse_seeds, run_jobs
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
    jobs = make_jobs(["L1.N5", "L1.N6"], [0, 1])
    # a target the model lacks stops the whole sweep before any job runs
    with pytest.raises(UserError, match=r"1 of 5 jobs cannot run, so none was started: L9\.N0"):
        run_jobs(model, jobs + [Job("L9.N0", 0)], out, BASE, executor="ray", workers=2)
    assert not out.exists() or not list(out.iterdir())

    results = run_jobs(model, jobs, out, BASE, executor="ray", workers=2, wandb="offline")
    assert [r.status for r in results] == ["done"] * 4
    for r in results:
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

    # A job that fails while running (its checkpoint was damaged) is recorded; the rest skip.
    broken = results[3].run_dir
    (broken / "summary.json").unlink()
    (broken / "history.npz").write_bytes((broken / "history.npz").read_bytes()[:100])
    stamps = [(r.run_dir / "summary.json").stat().st_mtime_ns for r in results[:3]]
    again = run_jobs(model, jobs, out, BASE, executor="ray", workers=2, wandb="offline")
    assert [r.status for r in again] == ["skipped"] * 3 + ["failed"]
    assert "damaged or truncated" in again[3].error
    assert "damaged or truncated" in read_json(broken / "error.json")["error"]
    assert stamps == [(r.run_dir / "summary.json").stat().st_mtime_ns for r in again[:3]]


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


def test_sweep_never_passes_old_runs_off_as_new(tiny_model_dir, tmp_path, capsys):
    """Finished runs are reused only for the same settings; more iterations extend them (to
    exactly a longer run); other settings are refused before anything runs."""
    def sweep(out, *extra):
        return main(["sweep", "--model", str(tiny_model_dir), "--targets", "L1.N5", "--seeds",
                     "0-1", "--out", str(out), "--wandb", "disabled", "--no-progress",
                     "--population-size", "2", "--explore-per-pop", "4", "--topk", "16",
                     "--restart-frequency", "2", *extra])
    out = tmp_path / "sweep"
    assert sweep(out, "--iters", "2") == 0
    assert sweep(out, "--iters", "4") == 0
    assert capsys.readouterr().out.count("done") == 4
    assert sweep(tmp_path / "straight", "--iters", "4") == 0
    for seed in (0, 1):
        extended, straight = (History.load(run_dir_for(d, str(tiny_model_dir), "L1.N5", seed)
                                           / "history.npz") for d in (out, tmp_path / "straight"))
        a, b = extended.arrays(), straight.arrays()
        for name in set(a) - {"seconds"}:
            assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name

    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert sweep(out, "--iters", "4", "--topk", "8") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "topk (saved 16, requested 8)" in err
    assert "hold runs made with other settings" in err
    assert sweep(out, "--iters", "3") == 2
    assert "iters (saved 4, requested 3)" in capsys.readouterr().err
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_local_sweep_batches_jobs_and_a_failing_batch_runs_them_alone(tiny_model_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """--batch 3 over 4 jobs: one batched loop of 3 (each run its own directory) and one alone;
    a batch that raises is rerun job by job, so the sweep still completes."""
    def sweep(out, *extra):
        return main(["sweep", "--model", str(tiny_model_dir), "--targets", "L1.N5,logit: the",
                     "--seeds", "0-1", "--out", str(out), "--wandb", "disabled",
                     "--no-progress", "--iters", "2", "--population-size", "2",
                     "--explore-per-pop", "4", "--topk", "16", *extra])
    assert sweep(tmp_path / "a", "--batch", "3") == 0
    assert "4 of 4 jobs complete" in capsys.readouterr().out
    provs = [read_json(d / "provenance.json") for d in sorted((tmp_path / "a").iterdir())]
    assert sorted(p.get("batched", 1) for p in provs) == [1, 3, 3, 3]
    assert all(set(FILES) <= {f.name for f in d.iterdir()} for d in (tmp_path / "a").iterdir())
    for d in (tmp_path / "a").iterdir():      # each run holds its own target and seed only
        config, hist = read_json(d / "config.json"), History.load(d / "history.npz")
        assert d == run_dir_for(tmp_path / "a", str(tiny_model_dir), config["target"],
                                config["seed"]) and len(hist) == 2

    import fluentdream.runs.session as session

    def broken(*args, **kwargs):
        raise RuntimeError("a job broke the batch")
    monkeypatch.setattr(session, "run_many", broken)
    assert sweep(tmp_path / "b", "--batch", "4") == 0
    assert "4 of 4 jobs complete" in capsys.readouterr().out
    assert main(["sweep", "--model", str(tiny_model_dir), "--targets", "L1.N5", "--out",
                 str(tmp_path / "c"), "--batch", "0"]) == 2
    assert "batch must be >= 1" in capsys.readouterr().err
