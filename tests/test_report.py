"""fluentdream report (issue 31, DESIGN §7): each page's embedded data against the runs'
frontier.json and the mine's parquet; panels without data left out and said so; runs left out
with one line each; bad input as one line with nothing written; the site replaced whole; the
wiring (dream's hint, make figures, the W&B summary). What a reader sees in a browser is
tests/test_report_browser.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fluentdream as fd
from fluentdream import runs
from fluentdream.cli import main
from fluentdream.report import read_page
from fluentdream.report.mined import post_name

import report_data
from conftest import REPO
from report_data import LATENT, LOGIT, NEURON


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return report_data.built(tmp_path_factory)


def page_of(site, target: str) -> dict:
    return next(d for d in map(read_page, site.pages) if d["target"] == target)


def test_one_page_per_target_and_an_index_of_them(small):
    index = read_page(small.site.index)
    assert sorted(r["target"] for r in index["rows"]) == sorted([NEURON, LATENT, LOGIT])
    assert all((small.site.index.parent / r["href"]).is_file() for r in index["rows"])
    neuron = next(r for r in index["rows"] if r["target"] == NEURON)
    assert neuron["runs"] == 2 and neuron["seeds"] == [0, 1] and neuron["best_example"]
    assert small.site.runs == 4 and small.site.left_out == []


def test_each_pages_frontiers_are_the_runs_frontier_json(small):
    """The merged frontier is `fluentdream frontier`'s (runs.merged_frontier), each run's is its
    frontier.json, to the 6 significant digits a page keeps; a :pre page carries post values."""
    for path in small.site.pages:
        data = read_page(path)
        dirs = [Path(r["dir"]) for r in data["runs"]]
        records, _ = runs.merged_frontier(dirs)
        pairs = [(data["frontier"], records)] + [
            (r["frontier"], runs.read_json(Path(r["dir"]) / "frontier.json")) for r in data["runs"]]
        for shown, saved in pairs:
            assert [p["text"] for p in shown] == [r["text"] for r in saved]
            assert [p["ids"] for p in shown] == [r["ids"] for r in saved]
            for ours, theirs in (("value", "target"), ("xentropy", "xentropy"), ("post", "post")):
                got = [p.get(ours) for p in shown]
                want = [r.get(theirs) for r in saved]
                assert (None in got) == (None in want) == (data["pre"] is False and ours == "post")
                if None not in want:
                    np.testing.assert_allclose(got, want, rtol=1e-5)
        for p in data["frontier"]:     # the attribution re-scores the point it shades
            n = sum(t >= 0 for t in p["ids"])
            assert len(p["attribution"]["tokens"]) == len(p["attribution"]["worst"]) == n
            assert p["attribution"]["value"] == pytest.approx(p["value"], abs=1e-3)


@pytest.mark.parametrize("target", [NEURON, LATENT])
def test_dataset_examples_are_the_mines_rows_scored_token_by_token(small, target):
    """Every row of the mine for the feature, with its text, CE and values; the page scores each
    window with its own target, whose last token agrees with the mine (the post value of a
    :pre latent is relu of its pre value or 0, a TopK SAE's rule); each example's dream is the
    best dream at CE at most its own."""
    rows = pd.read_parquet(small.results / "01_exp" / "mining" / "examples.parquet")
    rows = rows[rows["target"] == post_name(target)].set_index("rank")
    data = page_of(small.site, target)
    examples = data["dataset"]["examples"]
    assert sorted(e["rank"] for e in examples) == sorted(rows.index) and len(rows) == 64
    dreams = [p for r in data["runs"] for p in r["frontier"]]
    for e in examples:
        row = rows.loc[e["rank"]]
        assert e["text"] == row["window_text"]
        np.testing.assert_allclose([e["xentropy"], e["post"], e["in_context"]],
                                   [row["window_xentropy"], row["window_activation"],
                                    row["activation"]], rtol=1e-5, atol=1e-6)
        assert len(e["tokens"]) == len(e["token_values"]) == len(row["window_ids"])
        assert e["token_values"][-1] == e["value"]
        if target == NEURON:
            assert e["value"] == pytest.approx(e["post"], abs=1e-4)
        else:
            assert e["post"] == pytest.approx(0, abs=1e-6) or \
                e["post"] == pytest.approx(max(e["value"], 0), abs=1e-4)
        fluent = [p["value"] for p in dreams if p["xentropy"] <= e["xentropy"]]
        if e["dream"] is None:
            assert fluent == []
        else:
            assert e["dream"]["xentropy"] <= e["xentropy"] and e["dream"]["value"] == max(fluent)


def test_a_target_without_mine_data_omits_the_panel_and_says_so(small):
    data = page_of(small.site, LOGIT)
    assert data["dataset"] is None
    assert any(n.startswith("No dataset examples") and "logit: the" in n for n in data["notes"])
    assert data["logit_effects"] == {"note": "logit effects are for neurons and SAE latents"}


def test_a_neurons_logit_effects_unembed_its_output_weight(small):
    """The promoted tokens are those of W_U (gain * W_out[:, neuron]), computed here from the
    checkpoint's tensors by name."""
    state = small.lm.model.state_dict()
    w_out = state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"][:, 660]
    effect = state["lm_head.weight"] @ (state["gpt_neox.final_layer_norm.weight"] * w_out)
    le = page_of(small.site, NEURON)["logit_effects"]
    top = effect.topk(len(le["top"])).indices.tolist()
    assert [t for t, _ in le["top"]] == [small.lm.tokenizer.decode([i]) for i in top]
    assert [v for _, v in le["top"]] == pytest.approx(effect[top].tolist(), rel=1e-4)
    assert le["bottom"][0][1] == pytest.approx(float(effect.min()), rel=1e-4)


def _report(*args: str) -> int:
    return main(["report", *args, "--no-progress"])


def _damaged(small, tmp_path: Path) -> dict[str, Path]:
    """Copies of a good run: unfinished, from another schema (a history written by a newer
    version; a config.json without its target), and one left as it is."""
    good = next((small.results / "01_exp" / "runs").glob(f"*{NEURON}*seed0"))
    out = {}
    for name in ("good", "unfinished", "schema", "config"):
        out[name] = shutil.copytree(good, tmp_path / "runs" / name)
    (out["unfinished"] / "summary.json").unlink()
    with np.load(good / "history.npz") as z:
        arrays = dict(z)
    np.savez(out["schema"] / "history.npz", **dict(arrays, schema_version=np.array(99)))
    config = runs.read_json(out["config"] / "config.json")
    runs.write_json(out["config"] / "config.json", {k: v for k, v in config.items() if k != "target"})
    return out


def test_runs_left_out_get_one_line_each_and_a_place_on_the_index(small, tmp_path, capsys):
    dirs = _damaged(small, tmp_path)
    held = shutil.copytree(dirs["good"], tmp_path / "runs" / "held")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from fluentdream.runs.lock import RunLock; "
         "lock = RunLock.acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
         str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert _report(str(tmp_path / "runs"), "--out", str(tmp_path / "site"), "--no-model") == 0
    finally:
        holder.communicate("")
    err = capsys.readouterr().err.splitlines()
    why = {Path(line.split(": ")[1]).name: line for line in err if line.startswith("left out: ")}
    assert sorted(why) == ["config", "held", "schema", "unfinished"] and len(err) == 4
    assert "being written by pid" in why["held"] and "unfinished" in why["unfinished"]
    assert "history schema 99" in why["schema"] and "lacks target" in why["config"]
    index = read_page(tmp_path / "site" / "index.html")
    assert len(index["left_out"]) == 4 and [r["runs"] for r in index["rows"]] == [1]


@pytest.mark.parametrize("case", ["missing run", "no run", "missing mine", "no mine",
                                  "bad limit", "foreign out", "bad k", "all left out"])
def test_bad_input_is_one_line_and_writes_nothing(small, tmp_path, capsys, case):
    good = str(next((small.results / "01_exp" / "runs").glob(f"*{NEURON}*seed0")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    out = tmp_path / "site"
    args = {"missing run": [str(tmp_path / "nope"), "--out", str(out)],
            "no run": [str(tmp_path / "empty"), "--out", str(out)],
            "missing mine": [good, "--mine", str(tmp_path / "nope"), "--out", str(out)],
            "no mine": [good, "--mine", str(tmp_path / "empty"), "--out", str(out)],
            "bad limit": [good, "--in-distribution", "six", "--out", str(out)],
            "foreign out": [good, "--out", str(tmp_path / "foreign")],
            "bad k": [good, "--attribution-k", "0", "--out", str(out)],
            "all left out": [str(_damaged(small, tmp_path)["unfinished"]), "--out", str(out)]}[case]
    assert _report(*args, "--no-model") == 2
    err = capsys.readouterr().err
    assert err.startswith("fluentdream report: error: ") and err.count("\n") == 1, err
    assert not out.exists() and os.listdir(tmp_path / "foreign") == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary left


def test_a_report_is_replaced_whole_with_the_umasks_permissions(small, tmp_path):
    runs_dir = small.results / "01_exp" / "runs"
    neuron = [d for d in runs_dir.iterdir() if NEURON in d.name]
    logit = [d for d in runs_dir.iterdir() if "logit" in d.name]
    old = os.umask(0o027)
    try:
        first = fd.report(neuron, tmp_path / "site", model=False, progress=False)
        second = fd.report(logit, tmp_path / "site", model=False, progress=False)
    finally:
        os.umask(old)
    assert not first.pages[0].exists() and second.pages[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o750
    assert second.pages[0].stat().st_mode & 0o777 == 0o640


def test_without_the_model_a_page_says_what_is_missing(small, tmp_path):
    site = fd.report([small.results], tmp_path / "site", mine=[small.results], model=False,
                     progress=False)
    data = page_of(site, LATENT)
    assert any("--no-model" in n for n in data["notes"]) and "logit_effects" not in data
    assert all("attribution" not in p for p in data["frontier"])
    assert data["axis"] == "post"       # a :pre page without the model compares post values
    assert all(e["value"] == e["post"] and e["token_values"] is None
               for e in data["dataset"]["examples"])


def test_dream_prints_the_command_that_reports_its_run(tmp_path, capsys):
    """The printed command runs as printed, loading the run's model by name."""
    assert main(["dream", "--model", "embedded", "--target", NEURON, "--iters", "2",
                 "--population-size", "2", "--explore-per-pop", "4", "--topk", "16", "--out",
                 str(tmp_path), "--wandb", "disabled", "--no-progress"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("see it on a page: "))
    command = line.removeprefix("see it on a page: ").split()
    assert command[:2] == ["fluentdream", "report"] and command[-1] == str(tmp_path / "report")
    assert main(command[1:] + ["--attribution-k", "4", "--no-progress"]) == 0
    assert "1 target pages from 1 runs; open file://" in capsys.readouterr().out
    assert read_page(tmp_path / "report" / "index.html")["rows"][0]["target"] == NEURON


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_figures_reports_every_experiment_after_the_tables():
    plan = subprocess.run(["make", "-n", "-B", "figures", "JOBS=1"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    step = re.search(r"-m fluentdream.cli report results/embedded --mine results/embedded .*\\\n"
                     r"\s+--in-distribution results/embedded/01_fluency_calibration/thresholds.json "
                     r"--out results/embedded/report", plan)
    assert step, plan
    assert plan.index("analysis.build_tables") < step.start() < plan.index("analysis.wandb_summary")


def test_the_wandb_summary_carries_each_experiments_pages(small, tmp_path):
    from analysis import wandb_summary

    preset = tmp_path / "embedded"
    shutil.copytree(small.results / "01_exp", preset / "04_seed_variance")
    site = fd.report([preset], preset / "report", model=False, progress=False)
    plans = {s.experiment: s for s in wandb_summary.plan("embedded", {}, [], {}, preset)}
    assert sorted(plans) == ["04_seed_variance"]
    assert sorted(plans["04_seed_variance"].figures) == sorted(site.pages)
