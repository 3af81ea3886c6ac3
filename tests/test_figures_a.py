"""Analysis tables and every figure/table of helper A's part, built from the smoke runs."""
import numpy as np
import pandas as pd
import pytest

from analysis import fluency, frontiers, seeds
from fluentdream.core.history import History
from paper_figures import (fig1_attribution, fig2_seed_variance, fig5a_fluency_calibration,
                           frontier_plots, style, table2_token_logits, table3_six_neurons,
                           table5_frontier_points)
from test_experiments_a import smoke_results  # noqa: F401 - the shared session fixture


@pytest.fixture(scope="module")
def tables(smoke_results, tmp_path_factory):  # noqa: F811
    """All tables, through CSV and back, as build_tables.py and the figures see them."""
    folder = tmp_path_factory.mktemp("tables")
    for module in (fluency, frontiers, seeds):
        for name, df in module.tables(smoke_results).items():
            df.to_csv(folder / f"{name}.csv", index=False)
    return style.read_tables(folder)


def test_every_table_is_built(tables):
    expected = {"fluency_calibration", "thresholds", "dream_fluency", "frontier_points",
                "table2_token_logits", "table3_six_neurons", "attribution_03", "seed_variance",
                "seed_summary", "frontier_growth", "restart_growth"}
    assert expected <= set(tables)


def test_missing_experiments_give_no_tables(tmp_path):
    for module in (fluency, frontiers, seeds):
        assert module.tables(tmp_path) == {}


def test_calibration_table_carries_paper_values(tables):
    calib = tables["fluency_calibration"].set_index("n")
    assert calib.loc[12, "paper_mean"] == pytest.approx(3.75)
    assert calib.loc[16, "paper_mean"] == pytest.approx(3.50)
    assert np.isfinite(calib["mean"]).all() and (calib["sd"] > 0).all()


def test_table3_is_best_candidate_under_the_limit(tables, smoke_results):
    t3 = tables["table3_six_neurons"]
    assert len(t3) == 6
    limit = tables["thresholds"]["perplexity_100"].iloc[0]
    for r in t3.itertuples():
        _, f, ce = History.load(smoke_results / "03_six_neurons" / r.run / "history.npz").candidates()
        under = f[ce < limit]
        if len(under):
            assert r.activation == pytest.approx(under.max(), abs=1e-5)
            assert r.xentropy < limit
        else:
            assert np.isnan(r.activation)


def test_table2_merges_both_seeds_into_one_frontier(tables):
    t2 = tables["table2_token_logits"]
    for _, rows in t2.groupby("target"):
        assert rows["xentropy"].is_monotonic_increasing
        assert rows["activation"].is_monotonic_increasing   # a frontier trades CE for target


def test_seed_tables(tables):
    per_seed, summary = tables["seed_variance"], tables["seed_summary"].iloc[0]
    assert len(per_seed) == 3 and summary["n_seeds"] == 3
    assert summary["max_min"] == pytest.approx(per_seed["max_activation"].min())
    assert summary["max_max"] == pytest.approx(per_seed["max_activation"].max())
    ok = per_seed.dropna(subset=["max_under_ce5"])
    assert (ok["max_under_ce5"] <= ok["max_activation"] + 1e-6).all()
    growth = tables["frontier_growth"]
    assert sorted(growth["checkpoint"].unique()) == [1, 2, 6]
    best = growth.groupby("checkpoint")["activation"].max()
    assert best.is_monotonic_increasing     # a frontier over more iterations never loses ground
    restarts = tables["restart_growth"]
    assert set(restarts["restart"]) == {3} and set(restarts["horizon"]) == {1}
    assert restarts["frac_improved"].between(0, 1).all()
    assert (restarts["improved_everywhere"] == (restarts["frac_improved"] == 1.0)).all()


def test_markdown_tables(tables):
    t2 = table2_token_logits.make_markdown(tables)
    for target in tables["table2_token_logits"]["target"].unique():
        assert target in t2
    t3 = table3_six_neurons.make_markdown(tables)
    assert all(n in t3 for n in tables["table3_six_neurons"]["target"]) and "L27.N5" in t3
    t5 = table5_frontier_points.make_markdown(tables)
    assert t5.count("\n## ") == 6


@pytest.mark.parametrize("module", [fig2_seed_variance, fig5a_fluency_calibration, fig1_attribution])
def test_figures_render(module, tables, tmp_path):
    fig = module.make(tables)
    assert any(ax.has_data() for ax in fig.axes)
    path = style.save(fig, tmp_path / f"{module.NAME}.png")
    assert path.stat().st_size > 1000


def test_attribution_html_has_every_neuron(tables):
    page = fig1_attribution.make_html(tables)
    assert page.startswith("<!doctype html>") and page.count("<h2>") == 6
    for neuron in tables["attribution_03"]["target"].unique():
        assert f"<h2>{neuron}</h2>" in page


def test_frontier_plots_one_file_per_target(tables, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    for name, df in tables.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    paths = frontier_plots.main(["--tables", str(folder), "--out", str(tmp_path / "out")])
    targets = tables["frontier_points"]["target"].unique()
    assert len(paths) == len(targets) == 8
    assert all(p.exists() and p.name.startswith("frontier_") for p in paths)


def test_figure_without_its_table_says_what_to_run():
    with pytest.raises(ValueError, match="04_seed_variance"):
        fig2_seed_variance.make({})
    with pytest.raises(ValueError, match="02_token_logits"):
        table2_token_logits.make_markdown({"other": pd.DataFrame({"a": [1]})})


def _population_history(before: float, after: float) -> "History":
    """9 iterations, M = 2 slots, restarts every 3 (horizon 1): the slots hold (f, CE) = (1, 2)
    and (2, 4) until iteration 2, every f shifted by `before` at iteration 3 (the restart) and by
    `after` from iteration 4 on."""
    from fluentdream.core.history import History
    hist = History(lambdas=np.array([0.1, 10.0]))
    for t in range(9):
        shift = 0.0 if t < 3 else before if t < 4 else after
        f = np.array([1.0, 2.0, 0.0, 0.0], np.float32) + shift
        ce = np.array([2.0, 4.0, 9.0, 9.0], np.float32)
        hist.append(np.arange(16).reshape(4, 4) + t, f, ce, np.array([0, 1]), np.nan, 0.1, 2)
    return hist


def test_a_restart_gain_can_be_negative_and_its_test_can_fail():
    from analysis import stats
    worse = seeds.restart_gains(_population_history(-1.0, -0.5), 3)
    better = seeds.restart_gains(_population_history(-1.0, +0.5), 3)
    assert [r["restart"] for r in worse] == [3, 6]
    assert worse[0]["mean_gain"] == pytest.approx(-0.5) and worse[0]["frac_improved"] == 0
    assert better[0]["mean_gain"] == pytest.approx(0.5) and better[0]["improved_everywhere"]
    assert better[1]["mean_gain"] == 0 and not better[1]["improved_everywhere"]   # flat: no gain
    # over runs: a gain centred at 0 is not significant, one that is always positive is
    rng = np.random.default_rng(0)
    assert stats.paired(rng.normal(0, 1, 16), 0.0).p > 0.05
    assert stats.paired(rng.normal(0.5, 0.2, 16), 0.0).p < 0.001
