"""Experiment 10 (SAE latents) on a tiny model and a TopK SAE written here: its smoke run, the
exact best post value of pre runs and the trigger families against brute force, the analysis
tables against a direct reading of the runs, numbers.json entries, README rows and Fig 7."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import fluentdream as fd
from analysis import numbers, readme_table, sae_latents
from conftest import load_experiment
from test_sae import hidden_before_block, reference_encoder, weights, write_saelens

LIMIT = 50.0   # above any CE of 3-iteration dreams, so every candidate is "in distribution"


@pytest.fixture(scope="module")
def run10(tmp_path_factory, tiny_model_dir):
    """results root with smoke/10_sae_latents; 05's threshold.json is the only file of 05, so
    the experiment takes its CE limit from it and dreams its own neurons."""
    root = tmp_path_factory.mktemp("results_10")
    w = weights("topk")
    sae = write_saelens(root / "sae", "topk", w, k=5, hook="blocks.1.hook_resid_pre")
    (root / "smoke" / "05_dream_vs_dataset").mkdir(parents=True)
    (root / "smoke" / "05_dream_vs_dataset" / "threshold.json").write_text(
        json.dumps(dict(threshold=LIMIT)))
    argv = ["--preset", "smoke", "--results", str(root), "--model", str(tiny_model_dir),
            "--sae", str(sae)]
    assert load_experiment("10_sae_latents").main(argv) == 0
    return root / "smoke" / "10_sae_latents", w, argv


def in_limit(run_dir):
    """Distinct candidates of a run with CE <= LIMIT: ids (N, n), value (N,)."""
    ids, f, ce = fd.History.load(run_dir / "history.npz").candidates()
    ids, first = np.unique(ids[ce <= LIMIT], axis=0, return_index=True)
    return ids, f[ce <= LIMIT][first]


def test_smoke_run_dreams_live_latents_in_both_modes(run10):
    out, _, _ = run10
    doc = json.loads((out / "latents.json").read_text())
    top = pd.read_parquet(out / "mining" / "top.parquet").set_index("target")["top_activation"]
    assert len(top) == 32 + 4 * 64      # every latent and every neuron of layer 0 was scanned
    assert len(doc["latents"]) == 2 and (top[doc["latents"]] > 0).all()
    assert len(doc["neurons_dreamed_here"]) == 2 and doc["neuron_runs"] == []
    # only the chosen features' examples are re-scored, each one's best first
    examples = pd.read_parquet(out / "mining" / "examples.parquet")
    assert set(examples["target"]) == {*doc["latents"], *doc["neurons_dreamed_here"]}
    best = examples.groupby("target")["activation"].max()
    assert np.allclose(best, top[best.index])
    targets = {json.loads((d / "config.json").read_text())["target"]
               for d in (out / "runs").iterdir()}
    assert targets == {*doc["latents"], *(t + ":pre" for t in doc["latents"]),
                       *doc["neurons_dreamed_here"]}


def test_best_post_of_pre_runs_equals_brute_force(run10, make_lm):
    out, w, _ = run10
    lm = make_lm("gpt_neox")   # the same seed-0 weights as the saved tiny model
    pre = pd.read_parquet(out / "pre_post.parquet")
    assert len(pre) == 2
    for _, r in pre.iterrows():
        ids, _ = in_limit(out / "runs" / r["run"])
        j = int(r["target"].rsplit(":", 1)[1])
        x = hidden_before_block(lm, torch.from_numpy(ids).long(), 1)
        post = reference_encoder("topk", w, x, k=5)[:, -1, j]
        assert r["in_limit"] == len(ids) and r["rescored"] <= len(ids)
        assert r["best_post"] == pytest.approx(float(post.max()), rel=1e-4, abs=1e-4)


def test_families_equal_a_direct_count(run10, tokenizer):
    out, _, _ = run10
    fam = pd.read_parquet(out / "families.parquet")
    assert sorted(fam["kind"]) == ["latent", "latent", "neuron", "neuron"]
    for _, r in fam.iterrows():
        ids, f = in_limit(out / "runs" / r["run"])
        if not f.max() > 0:
            assert np.isnan(r["families"])
            continue
        top = [tokenizer.decode([int(t)]).strip().lower() for t in ids[f >= 0.5 * f.max()][:, -1]]
        shares = [top.count(w) / len(top) for w in set(top)]
        assert r["families"] == sum(x >= 0.05 for x in shares)
        assert r["distinct_last_tokens"] == len(shares) and r["high_candidates"] == len(top)


def test_tables_numbers_readme_rows_and_figure(run10, tmp_path):
    out, _, _ = run10
    t = sae_latents.tables(out.parent)
    lat = t["sae_latents"]
    examples = pd.read_parquet(out / "mining" / "examples.parquet")
    for _, r in lat.iterrows():
        _, f = in_limit(out.parent / r["run"])
        ex = examples[examples["target"] == r["target"]]
        assert r["dream_best"] == pytest.approx(f.max())
        assert r["dataset_best"] == pytest.approx(ex["window_activation"].max())
        assert r["dream_wins"] == (f.max() > ex["window_activation"].max())
    found = numbers.build(t)
    share = found["sae.dream_wins.share"]
    assert share["n"] == len(lat) and share["value"] == pytest.approx(lat["dream_wins"].mean())
    assert found["sae.pre_minus_post"]["test"]["name"] == "Wilcoxon signed-rank"
    doc = numbers.document(found, "smoke")
    md = readme_table.render(json.loads(json.dumps(doc)))
    assert sum(line.startswith("| SAE latents") or "pre-activation reaches" in line
               or "fewer trigger families" in line for line in md.splitlines()) == 3
    tdir = tmp_path / "tables"
    tdir.mkdir()
    for name, df in {**t, "numbers": numbers.flat(found)}.items():
        df.to_csv(tdir / f"{name}.csv", index=False)
    from paper_figures import fig7_sae_latents
    fig7_sae_latents.main(["--tables", str(tdir), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "fig7_sae_latents.png").stat().st_size > 1000


def test_rerun_skips_finished_work(run10):
    out, _, argv = run10
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    stamp[out / "mining" / "summary.json"] = (out / "mining" / "summary.json").stat().st_mtime_ns
    load_experiment("10_sae_latents").main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_missing_results_give_no_tables(tmp_path):
    assert sae_latents.tables(tmp_path) == {}
