"""Run directories: the files, the summary, and merging runs into one frontier (DESIGN §7)."""
from __future__ import annotations

import json

import pytest
import torch

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.runs import load_run, merged_frontier, read_json, run_dream

CFG = fd.EPOConfig(iters=5, population_size=3, explore_per_pop=6, topk=16, restart_frequency=2)


@pytest.fixture(scope="module")
def two_runs(tiny_lm, tmp_path_factory):
    parent = tmp_path_factory.mktemp("runs")
    target = fd.parse_target("L1.N5", tiny_lm)
    return [run_dream(tiny_lm, target, CFG.replace(seed=s), parent / f"s{s}",
                      frontier_ref=(8.0, 0.0)) for s in (0, 1)]


def test_run_directory_files_and_summary(two_runs):
    result = two_runs[0]
    hist, records, summary = load_run(result.run_dir)
    assert result.complete and len(hist) == CFG.iters and hist.state is not None
    config = read_json(result.run_dir / "config.json")
    assert fd.EPOConfig.from_dict({k: config[k] for k in CFG.to_dict()}) == CFG
    assert (config["checkpoint_every"], config["frontier_ref_xentropy"]) == (2, 8.0)
    prov = read_json(result.run_dir / "provenance.json")
    assert {"git_sha", "git_dirty", "packages", "device", "seed", "start_time", "end_time",
            "wandb_run_id"} <= set(prov) and prov["packages"]["torch"] == torch.__version__
    _, f, ce = hist.candidates()
    assert summary["best_target"] == f.max() and summary["iterations"] == CFG.iters
    for limit in (4, 5, 6):
        below = f[ce < limit]
        assert summary[f"best_target_ce_below_{limit}"] == (below.max() if len(below) else None)
    assert summary["frontier_quality"] == fd.frontier_quality(result.frontier, 8.0, 0.0) > 0
    assert [r["target"] for r in records] == list(result.frontier.target)
    assert not list(result.run_dir.glob(".*.tmp"))        # no temporary files left behind


def test_merged_frontier_equals_frontier_of_both_histories(two_runs, capsys):
    dirs = [r.run_dir for r in two_runs]
    records, runs = merged_frontier(dirs)
    both = fd.pareto_frontier([r.history for r in two_runs])
    assert [r["target"] for r in records] == list(both.target)
    assert [r["xentropy"] for r in records] == list(both.xentropy)
    assert set(runs) <= {"s0", "s1"}
    assert main(["frontier", *map(str, dirs)]) == 0
    assert f"{len(records)} frontier points from 2 runs" in capsys.readouterr().out
    assert main(["frontier", "--json", *map(str, dirs)]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == runs


def test_frontier_refuses_runs_that_do_not_compare(two_runs, tiny_lm, tmp_path, capsys):
    other = run_dream(tiny_lm, fd.parse_target("L1.N5", tiny_lm), CFG.replace(seq_len=6, iters=1),
                      tmp_path / "short")
    assert main(["frontier", str(two_runs[0].run_dir), str(other.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "different seq_len 12 vs 6" in err and len(err.splitlines()) == 1
    assert main(["frontier", str(tmp_path)]) == 2
    assert "not a complete run directory" in capsys.readouterr().err


def test_dream_command_line_errors(tiny_model_dir, tmp_path, capsys):
    base = ["dream", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "r"),
            "--wandb", "disabled", "--iters", "2"]
    assert main(base + ["--target", "L7.N5"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()                     # nothing half-written
    assert main(base + ["--target", "L1.N5", "--checkpoint-every", "-1"]) == 2
    assert "checkpoint_every must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--target", "L1.N5", "--frontier-ref", "6"])
    assert "CE,TARGET" in capsys.readouterr().err
