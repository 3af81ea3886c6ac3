"""Run directories: the files, the summary, and merging runs into one frontier (DESIGN §7)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.runs import dream_many, load_run, merged_frontier, read_json, run_dream

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
    framed = run_dream(tiny_lm, fd.parse_target("L1.N5", tiny_lm),
                       CFG.replace(iters=1, prefix=" the"), tmp_path / "framed")
    assert main(["frontier", str(two_runs[0].run_dir), str(framed.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "different prefix None vs ' the'" in err and len(err.splitlines()) == 1


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


SMALL = ["--population-size", "3", "--explore-per-pop", "6", "--topk", "16",
         "--restart-frequency", "2", "--seed", "4", "--wandb", "disabled", "--no-progress"]


def _same_histories(a: fd.History, b: fd.History) -> None:
    """Every recorded array equal (wall seconds aside)."""
    x, y = a.arrays(), b.arrays()
    for name in set(x) - {"seconds"}:
        assert np.array_equal(x[name], y[name], equal_nan=x[name].dtype.kind == "f"), name


def test_a_finished_run_extends_to_exactly_a_longer_run(tiny_model_dir, tmp_path, capsys):
    """300 -> 600 in miniature: a finished 3-iteration run resumed with --iters 7 equals a
    7-iteration run of the same seed; without --iters, --resume keeps the saved length."""
    def dream(run_dir, *extra):
        return main(["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
                     str(run_dir), *SMALL, *extra])
    assert dream(tmp_path / "long", "--iters", "7") == 0
    assert dream(tmp_path / "short", "--iters", "3") == 0
    capsys.readouterr()
    assert dream(tmp_path / "short", "--resume") == 0
    assert "already complete (3 iterations)" in capsys.readouterr().out
    assert dream(tmp_path / "short", "--resume", "--iters", "2") == 2
    assert "give iters > 3 to extend it" in capsys.readouterr().err
    assert dream(tmp_path / "short", "--resume", "--iters", "7") == 0
    assert "7 iterations; run saved to" in capsys.readouterr().out

    extended, straight = (fd.History.load(tmp_path / d / "history.npz") for d in ("short", "long"))
    _same_histories(extended, straight)
    assert extended.meta["resumed_at"] == [3] and extended.meta["config"]["iters"] == 7
    assert read_json(tmp_path / "short" / "config.json")["iters"] == 7
    assert read_json(tmp_path / "short" / "summary.json")["iterations"] == 7


def test_resume_before_the_first_checkpoint_says_so(tiny_model_dir, tmp_path, capsys):
    """A run killed before its first checkpoint has config.json only: --resume starts it from
    iteration 0 and says so."""
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir",
            str(tmp_path / "r"), *SMALL, "--iters", "2"]
    assert main(args) == 0
    for name in ("history.npz", "summary.json", "frontier.json", "provenance.json"):
        (tmp_path / "r" / name).unlink()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "stopped before its first checkpoint; starting it from iteration 0" in \
        capsys.readouterr().err
    assert len(fd.History.load(tmp_path / "r" / "history.npz")) == 2


def test_a_setup_failure_leaves_nothing_that_blocks_a_retry(tiny_lm, tmp_path):
    run_dir = tmp_path / "run"

    def broken(acts, logits):
        raise RuntimeError("the custom target failed on its first prompts")
    target = fd.CustomTarget("broken", broken, sites=(("mlp", 1),))
    with pytest.raises(RuntimeError, match="first prompts"):
        run_dream(tiny_lm, target, CFG, run_dir)
    assert not run_dir.exists()

    def no_tracker(run_dir, config):
        raise OSError("tracker could not start")
    run_dir.mkdir()
    with pytest.raises(OSError, match="tracker"):
        run_dream(tiny_lm, fd.parse_target("L1.N5", tiny_lm), CFG, run_dir, make_tracker=no_tracker)
    assert run_dir.is_dir() and not list(run_dir.iterdir())   # made by the user: kept, empty
    assert run_dream(tiny_lm, fd.parse_target("L1.N5", tiny_lm), CFG, run_dir).complete


def test_dream_many_reuses_only_runs_of_the_same_settings(tiny_lm, tmp_path):
    target = fd.parse_target("L1.N5", tiny_lm)
    cfg = CFG.replace(iters=2)
    run_dir, = dream_many(tiny_lm, [(target, cfg)], tmp_path)
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    assert dream_many(tiny_lm, [(target, cfg)], tmp_path) == [run_dir]
    with pytest.raises(fd.UserError, match=r"made with other settings: topk \(saved 16, "
                                           r"requested 8\)"):
        dream_many(tiny_lm, [(target, cfg.replace(topk=8))], tmp_path)
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp


def test_the_tables_make_figures_splices_do_not_make_the_tree_dirty(tmp_path):
    """make figures writes README.md's and RESULTS.md's results tables: runs made after that are
    still of a clean commit; any other change (code, a new file) makes the tree dirty."""
    import subprocess

    from fluentdream.provenance import git_info

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    git("init", "-q")
    for name in ("README.md", "RESULTS.md", "code.py"):
        (tmp_path / name).write_text("x\n")
    git("add", "-A")
    git("commit", "-qm", "c")
    assert git_info(tmp_path)["git_dirty"] is False
    (tmp_path / "README.md").write_text("spliced table\n")
    (tmp_path / "RESULTS.md").write_text("spliced table\n")
    assert git_info(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("y\n")
    assert git_info(tmp_path)["git_dirty"] is True
