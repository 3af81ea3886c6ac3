"""analysis/wandb_summary.py: each experiment's tables, figures and numbers to one W&B run in its
group, on hand-made results, read back from the offline runs with W&B's own inspector; W&B
failing (wandb.init raising, an unwritable W&B directory) warns in one line and exits 0."""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from analysis import wandb_summary
from test_tracking import final_summary, inspect_log, logged_table

REPO = Path(__file__).resolve().parents[1]
SEEDS = [dict(seed=0, target="L1.N5", max_activation=2.5, max_under_ce5=1.25),
         dict(seed=1, target="L1.N5", max_activation=3.0, max_under_ce5=None)]
RUNS = [dict(experiment="04_seed_variance", run="a", wandb_run_id="id04a"),
        dict(experiment="04_seed_variance", run="b", wandb_run_id="id04b"),
        dict(experiment="07_residual_directions", run="c", wandb_run_id=None)]
DATASET_RUNS = [dict(role="example", run="e0", best_dream=4.0),
                dict(role="example", run="e1", best_dream=5.0),
                dict(role="polysemantic", run="p0", best_dream=6.0)]
NUMBERS = {
    "seeds.max.median": dict(claim="seeds", label="median max", value=2.75, unit="activation",
                             statistic="median", n=2, ci=[2.5, 3.0], test=None, runs=2,
                             provenance=dict(experiment="04_seed_variance")),
    "example.dream_minus_dataset": dict(
        claim="example", label="dream - dataset", value=0.5, unit="activation", statistic="mean",
        n=8, ci=[0.25, 0.75], runs=8, test=dict(name="Wilcoxon signed-rank", p=0.0078),
        provenance=dict(experiment="05_dream_vs_dataset+04_seed_variance")),
    "residual.dream.mean": dict(claim="residual", label="dream z", value=3.5, unit="z",
                                statistic="mean", n=4, ci=[3.0, 4.0], test=None, runs=4,
                                provenance=dict(experiment="07_residual_directions")),
}
FRONTIER = [dict(ids=[1, 2], lam=0.0, perplexity=20.0, target=3.5, text=" a b", xentropy=3.0),
            dict(ids=[3, 4], lam=1.5, perplexity=5.0, target=1.0, text=" c d", xentropy=1.6)]
FIGURES = {"fig2_seed_variance.png": "red", "fig_distributions.png": "blue",
           "fig4_polysemantic.png": "green", "frontier_L1.N5.png": "white", "stray.png": "black"}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


@pytest.fixture
def results(tmp_path) -> Path:
    """results/toy: a few tables, numbers.json and figures, the way `make figures` leaves them."""
    tables = tmp_path / "results" / "toy" / "tables"
    tables.mkdir(parents=True)
    _write_csv(tables / "seed_variance.csv", SEEDS)
    _write_csv(tables / "runs.csv", RUNS)
    _write_csv(tables / "dataset_runs.csv", DATASET_RUNS)
    _write_csv(tables / "mystery.csv", [dict(x=1)])
    _write_csv(tables / "numbers.csv", [dict(key="seeds.max.median", value=2.75)])
    doc = dict(schema="fluentdream.numbers", preset="toy", git_sha="c0ffee", numbers=NUMBERS)
    (tmp_path / "results" / "toy" / "numbers.json").write_text(json.dumps(doc))
    run = tmp_path / "results" / "toy" / "04_seed_variance" / "toy__L1.N5__seed0"
    run.mkdir(parents=True)
    (run / "frontier.json").write_text(json.dumps(FRONTIER))
    figures = tmp_path / "figures"
    figures.mkdir()
    for name, colour in FIGURES.items():
        Image.new("RGB", (12, 8), colour).save(figures / name)
    (figures / "fig4_polysemantic.html").write_text("<p>attribution of <b>L2.N7</b></p>")
    (figures / "table3_six_neurons.md").write_text("| a |\n|---|\n| 1 |\n")
    return tmp_path


def media(item: dict, key: str) -> dict:
    """A logged media entry of a history record, whose fields W&B flattens to "key.field"."""
    return {k[len(key) + 1:]: v for k, v in item.items() if k.startswith(key + ".")}


def _args(root: Path, *extra: str) -> list[str]:
    return ["--results", str(root / "results"), "--preset", "toy",
            "--figures", str(root / "figures"), *extra]


def test_every_figure_module_belongs_to_an_experiment():
    patterns = [p for _, pats in wandb_summary.OUTPUTS.values() for p in pats]
    names = [f.stem + ".png" for f in (REPO / "paper_figures").glob("fig*.py")]
    names += ["frontier_L1.N5.png", "frontier_logit_dog.png"]      # frontier_plots.py's outputs
    assert names and all(any(fnmatch.fnmatch(n, p) for p in patterns) for n in names)


def test_offline_runs_hold_tables_figures_and_numbers(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    done = wandb_summary.main(_args(results))
    expected = {"03_six_neurons": (set(), {"figures/frontier_L1_N5"}),
                "04_seed_variance": ({"seed_variance", "runs", "numbers",
                                      "frontier_toy__L1_N5__seed0"},
                                     {"figures/fig2_seed_variance", "figures/fig_distributions"}),
                "05_dream_vs_dataset": ({"dataset_runs", "numbers"}, {"figures/fig_distributions"}),
                "06_polysemantic_neuron": ({"dataset_runs"}, {"figures/fig4_polysemantic",
                                                             "html/fig4_polysemantic"}),
                "07_residual_directions": ({"runs", "numbers"}, {"figures/fig_distributions"})}
    assert done == sorted(expected)
    out = capsys.readouterr().out
    assert "mystery.csv, stray.png" in out and "numbers.csv" not in out and "5 of 5" in out

    logs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = {}
    for log in logs:
        records = inspect_log(log)
        run, = [r["run"] for r in records if r["type"] == "run"]
        item, = [r["history"]["item"] for r in records if r["type"] == "history"]
        runs[run["display_name"]] = (log, run, item, final_summary(records))
    assert sorted(runs) == [f"toy-{e}-summary" for e in expected]
    for exp, (tables, keys) in expected.items():
        log, run, item, summary = runs[f"toy-{exp}-summary"]
        assert run["run_group"] == f"toy-{exp}" and run["project"] == "fluentdream"
        assert run["config"]["update"]["experiment"] == exp
        logged = {k.split(".")[0] for k in item if not k.startswith("_")}
        assert logged == {f"tables/{t}" for t in tables} | keys

    log, run, item, summary = runs["toy-04_seed_variance-summary"]
    assert logged_table(log, media(item, "tables/seed_variance")) == SEEDS    # 1.25 and null kept
    assert [r["run"] for r in logged_table(log, media(item, "tables/runs"))] == ["a", "b"]
    front = logged_table(log, media(item, "tables/frontier_toy__L1_N5__seed0"))
    assert front == [{k: r[k] for k in ("text", "target", "xentropy", "perplexity", "lam")}
                     for r in FRONTIER]                           # the dream's frontier.json
    config = run["config"]["update"]
    assert config["dream_wandb_run_ids"] == ["id04a", "id04b"]
    assert config["numbers_git_sha"] == "c0ffee"
    image = media(item, "figures/fig2_seed_variance")
    picture = (results / "figures" / "fig2_seed_variance.png").read_bytes()
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (12, 8)
    assert image["sha256"] == hashlib.sha256(picture).hexdigest()
    assert (log.parent / "files" / image["path"]).read_bytes() == picture
    assert summary["numbers/seeds/max/median"] == dict(value=2.75, ci_low=2.5, ci_high=3.0,
                                                       test=None, p=None, n=2)
    paired = dict(value=0.5, ci_low=0.25, ci_high=0.75, test="Wilcoxon signed-rank", p=0.0078, n=8)
    assert summary["numbers/example/dream_minus_dataset"] == paired
    assert [(r["key"], r["p"]) for r in logged_table(log, media(item, "tables/numbers"))] == [
        ("seeds.max.median", None), ("example.dream_minus_dataset", 0.0078)]

    log, _, item, summary = runs["toy-05_dream_vs_dataset-summary"]
    assert logged_table(log, media(item, "tables/dataset_runs")) == DATASET_RUNS[:2]
    assert summary["numbers/example/dream_minus_dataset"] == paired
    assert "numbers/seeds/max/median" not in summary
    log, _, item, summary = runs["toy-06_polysemantic_neuron-summary"]
    assert logged_table(log, media(item, "tables/dataset_runs")) == DATASET_RUNS[2:]
    page = log.parent / "files" / media(item, "html/fig4_polysemantic")["path"]
    assert "attribution of <b>L2.N7</b>" in page.read_text()


def test_wandb_init_failing_warns_once_and_logs_nothing(results, tmp_path, monkeypatch, capsys,
                                                      caplog):
    import wandb

    def refuse(*args, **kwargs):
        raise RuntimeError("quota exceeded")
    monkeypatch.setattr(wandb, "init", refuse)
    with caplog.at_level(logging.WARNING):
        assert wandb_summary.main(_args(results, "--wandb", "offline",
                                        "--dir", str(tmp_path / "wb"))) == []
    warned, = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "quota exceeded" in warned.getMessage()
    assert "0 of 5" in capsys.readouterr().out


def test_command_line_bad_wandb_dir_and_bad_input(results, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    (tmp_path / "a-file").write_text("")
    cmd = [sys.executable, "-m", "analysis.wandb_summary", *_args(results)]
    bad_dir = subprocess.run(cmd + ["--dir", str(tmp_path / "a-file" / "wb")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert bad_dir.returncode == 0, bad_dir.stderr[-2000:]
    assert bad_dir.stderr.count("\n") == 1 and bad_dir.stderr.startswith("warning: W&B summary")
    assert not (tmp_path / "a-file" / "wb").exists()
    missing = subprocess.run(cmd + ["--tables", str(tmp_path / "nowhere")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "tables folder" in missing.stderr and "make tables" in missing.stderr
