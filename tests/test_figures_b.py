"""Analysis tables and figures of experiments 05-07 (Table 4, Figs 3-6), from smoke results."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import fluentdream as fd
from analysis import dataset, residual
from test_experiments_b import b_results  # noqa: F401  (the shared session fixture)


@pytest.fixture(scope="module")
def tables(b_results):  # noqa: F811
    preset = b_results / "smoke"
    return {**dataset.tables(preset), **residual.tables(preset)}


def test_analysis_tables(tables):
    s = tables["dataset_summary"].set_index("role")
    assert set(s.index) == {"example", "polysemantic"}
    for role, row in s.iterrows():
        assert row["dataset_examples"] == 8 and row["runs"] == 2
        if not math.isnan(row["dream_at_dataset_ce"]):
            assert row["dream_at_dataset_ce_ce"] <= row["best_dataset_ce"]
            assert row["dream_minus_dataset"] == pytest.approx(
                row["dream_at_dataset_ce"] - row["best_dataset"])
    bins = tables["dataset_bins"]
    assert set(bins["source"]) == {"dream", "dataset"}
    assert (tables["dataset_frontiers"].groupby("role")["best_run"].any()).all()
    d = tables["residual_directions"]
    assert len(d) == 4 and d[["random_z", "dataset_z", "dream_z"]].notna().all().all()
    slack = tables["residual_slack"]
    assert np.all(np.diff(slack["xentropy"]) <= 1e-9)    # more slack never costs fluency
    assert set(tables["residual_summary"]["layer"]) == {"1", "2", "all"}


def test_sampled_neurons_table_equals_a_direct_reading(tables, b_results):  # noqa: F811
    """Each sampled neuron's row: its best corpus window and best seed-0 dream, both with CE at
    most the threshold, read here straight from the mining parquet and the run's history."""
    mined = b_results / "smoke" / "05_dream_vs_dataset"
    limit = json.loads((mined / "threshold.json").read_text())["threshold"]
    examples = pd.read_parquet(mined / "mining" / "examples.parquet")
    sample = tables["dataset_sampled"].set_index("neuron")
    assert list(sample.index) == json.loads((mined / "sampled_neurons.json").read_text())["neurons"]
    for neuron, row in sample.iterrows():
        ex = examples[(examples["target"] == neuron) & (examples["window_xentropy"] <= limit)]
        assert row["dataset_best"] == pytest.approx(ex["window_activation"].max(), nan_ok=True)
        hist = fd.History.load(b_results / "smoke" / row["run"] / "history.npz")
        ok = np.isfinite(hist.target) & (hist.xentropy <= limit)
        assert row["dream_best"] == pytest.approx(hist.target[ok].max() if ok.any() else np.nan, nan_ok=True)
        assert row["dream_wins"] == (row["dream_best"] > row["dataset_best"])


def test_best_per_bin_and_best_below():
    b = dataset.best_per_bin(np.array([1.0, 3.0, 2.0, 5.0]), np.array([3.9, 3.7, 4.2, 7.0]))
    assert b["ce_bin"].tolist() == [3.5, 4.0, 7.0] and b["best"].tolist() == [3.0, 2.0, 5.0]
    assert dataset.best_below(np.array([1.0, 3.0, 5.0]), np.array([2.0, 4.0, 6.0]), 4.5) == (3.0, 4.0)
    assert all(math.isnan(x) for x in dataset.best_below(np.ones(2), np.array([5.0, 6.0]), 1.0))


def test_missing_results_give_no_tables(tmp_path):
    assert dataset.tables(tmp_path) == {} and residual.tables(tmp_path) == {}


def test_every_figure_renders(tables, tmp_path):
    from paper_figures import (fig3_dream_vs_dataset, fig4_polysemantic, fig5_residual_alignment,
                               fig6_residual_layers, table4_example_neuron)
    tdir = tmp_path / "tables"
    tdir.mkdir()
    for name, df in tables.items():
        df.to_csv(tdir / f"{name}.csv", index=False)
    out = tmp_path / "out"
    for module in (table4_example_neuron, fig3_dream_vs_dataset, fig4_polysemantic,
                   fig5_residual_alignment, fig6_residual_layers):
        module.main(["--tables", str(tdir), "--out", str(out)])
    names = {p.name for p in out.iterdir()}
    assert {"table4_example_neuron.md", "fig3_dream_vs_dataset.png", "fig4_polysemantic.png",
            "fig4_polysemantic.html", "fig5_residual_alignment.png", "fig6_residual_layers.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    md = (out / "table4_example_neuron.md").read_text()
    best = tables["dataset_frontiers"].query("role == 'example' and best_run")
    assert md.count("\n| ") == len(best) + 1         # header + one row per frontier point
    assert "<!doctype html>" in (out / "fig4_polysemantic.html").read_text()
