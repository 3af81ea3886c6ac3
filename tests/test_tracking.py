"""W&B tracking: mode resolution, incremental metrics, an offline run read back with W&B's own
tool (`wandb leet inspect`) and the table files its records point to, the frontier table (with
post-activation values for a pre-activation target), and a W&B that cannot be reached
(DESIGN §7)."""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.runs import dream_many, is_complete, read_json, run_dream
from fluentdream.runs.tracking import IterationMetrics, NullTracker, resolve_mode, start_tracker

CFG = fd.EPOConfig(iters=7, population_size=3, explore_per_pop=6, topk=16, restart_frequency=3,
                   seed=1)
REF = (8.0, 0.0)   # tiny random models have CE near ln(1024) ~ 7, so the paper's 6 would give 0


@pytest.fixture(scope="module")
def hist(tiny_lm):
    return fd.epo(tiny_lm, fd.parse_target("L1.N5", tiny_lm), CFG)


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))           # no ~/.netrc, no wandb settings
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled" and resolve_mode("offline") == "offline"
    with pytest.raises(ValueError, match="auto, online, offline, disabled"):
        resolve_mode("cloud")
    assert isinstance(start_tracker("disabled", tmp_path, {}), NullTracker)


def test_incremental_metrics_equal_rebuilt_frontier(hist, tiny_lm):
    metrics = IterationMetrics(*REF)
    for t in range(len(hist)):
        m = metrics(hist, t)
        upto = hist.truncated(t + 1)
        front = fd.pareto_frontier([upto])
        _, f, ce = upto.candidates()
        assert m["epo/best_target"] == upto.best_target()
        for limit in (4, 5, 6):
            below = f[ce < limit]
            assert m.get(f"epo/best_target_ce_below_{limit}") == (below.max() if len(below) else None)
        assert m["epo/frontier_quality"] == pytest.approx(fd.frontier_quality(front, *REF), abs=1e-12)
        assert m["epo/frontier_points"] == len(front)
        assert ("epo/restart_lambda" in m) == (t % 3 == 0)
        assert m["perf/candidates_per_second"] == pytest.approx(hist.n_scored[t] / hist.seconds[t])
    assert fd.frontier_quality(fd.pareto_frontier([hist]), *REF) > 0
    with pytest.raises(AssertionError):
        metrics(hist, 0)                                   # out of order


def inspect_log(log: Path) -> list[dict]:
    """Every record of a .wandb log, decoded by W&B's own inspector."""
    wandb_bin = shutil.which("wandb") or str(Path(fd.__file__).parents[2] / ".venv/bin/wandb")
    out = subprocess.run([wandb_bin, "leet", "inspect", "--json", str(log)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the one offline W&B run under run_dir/wandb."""
    log, = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    return inspect_log(log)


def final_summary(records: list[dict]) -> dict:
    """The run summary after every update, as a synced run would show it."""
    out: dict = {}
    for r in records:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def logged_table(log: Path, ref: dict) -> list[dict]:
    """The rows of a wandb.Table logged by the run of the .wandb `log`, from the file its
    summary entry points to (the file `wandb sync` uploads), as one dict per row."""
    table = json.loads((log.parent / "files" / ref["path"]).read_text())
    assert ref["_type"] == "table-file" and ref["nrows"] == len(table["data"])
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def check_frontier_table(run_dir: Path, records: list[dict]) -> list[dict]:
    """The run summary's `frontier` table holds frontier.json's points, in order, each with
    the first iteration whose pool held its prompt (found here by looking at every candidate)."""
    hist, front = fd.History.load(run_dir / "history.npz"), read_json(run_dir / "frontier.json")
    log, = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = logged_table(log, final_summary(records)["frontier"])
    post = ["post"] if "post" in front[0] else []
    assert list(rows[0]) == ["text", "target", *post, "xentropy", "perplexity", "iteration"]
    assert len(rows) == len(front) > 0
    T, P, _ = hist.ids.shape
    for row, point in zip(rows, front):
        for key in ("text", "target", *post, "xentropy", "perplexity"):
            assert row[key] == point[key]
        first = min(t for t in range(T) for p in range(P)
                    if hist.ids[t, p].tolist() == point["ids"])
        assert row["iteration"] == first
    return rows


def test_offline_run_reads_back_equal_to_history(tiny_lm, tmp_path):
    run_dir = tmp_path / "run"
    tracker = functools.partial(start_tracker, "offline", project="fluentdream-tests")
    run_dream(tiny_lm, fd.parse_target("L1.N5", tiny_lm), CFG, run_dir,
                       make_tracker=tracker, frontier_ref=REF)
    hist = fd.History.load(run_dir / "history.npz")
    records = _wandb_records(run_dir)
    steps = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [s["_step"] for s in steps] == list(range(CFG.iters))
    best = -math.inf
    for t, item in enumerate(steps):
        f, ce = hist.slot_scores(t)
        for i in range(CFG.population_size):
            assert item[f"epo/slot{i}/target"] == float(f[i])
            assert item[f"epo/slot{i}/xentropy"] == float(ce[i])
        best = max(best, float(hist.target[t][hist.valid[t]].max()))      # what the run reports
        assert item["epo/best_target"] == best
        assert item.get("epo/restart_lambda") == (None if np.isnan(hist.restart_lambda[t])
                                                  else hist.restart_lambda[t])
        assert item["perf/seconds_per_iteration"] == hist.seconds[t]
    summary = read_json(run_dir / "summary.json")
    assert steps[-1]["epo/frontier_quality"] == pytest.approx(summary["frontier_quality"])
    assert summary["frontier_quality"] > 0

    run, = [r["run"] for r in records if r["type"] == "run"]
    prov = read_json(run_dir / "provenance.json")
    assert run["run_id"] == prov["wandb_run_id"] and prov["wandb_mode"] == "offline"
    config = run["config"]["update"]
    assert (config["frontier_ref_xentropy"], config["frontier_ref_target"]) == REF
    assert config["topk"] == CFG.topk and config["target"] == "L1.N5"
    assert final_summary(records)["frontier"]["nrows"] == summary["frontier_points"]
    assert "post" not in check_frontier_table(run_dir, records)[0]    # a post-activation target
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert any(a["type"] == "history" for a in artifacts)


def test_pre_activation_frontier_table_shows_post_values(tiny_lm, tmp_path):
    """dream_many's runs get the frontier table too; a pre-activation target's has `post`."""
    target = fd.parse_target("L1.N5:pre", tiny_lm)
    run_dir, = dream_many(tiny_lm, [(target, CFG)], tmp_path, wandb="offline",
                          project="fluentdream-tests")
    rows = check_frontier_table(run_dir, _wandb_records(run_dir))
    assert all(math.isfinite(r["post"]) for r in rows)


def test_unreachable_wandb_keeps_the_local_run(tiny_model_dir, tmp_path):
    """A fresh process (W&B caches its settings per process), logged in to a W&B server that
    refuses connections: the run falls back to offline and the run directory is complete."""
    env = dict(os.environ, WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9",
               WANDB_INIT_TIMEOUT="3", WANDB_MODE="", OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fluentdream.cli", "dream", "--model",
                           str(tiny_model_dir), "--target", "L1.N5", "--run-dir", str(run_dir),
                           "--wandb", "auto", "--iters", "2", "--population-size", "2",
                           "--explore-per-pop", "4", "--topk", "16", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert is_complete(run_dir) and "W&B online start failed" in proc.stderr
    assert read_json(run_dir / "provenance.json")["wandb_mode"] == "offline"
