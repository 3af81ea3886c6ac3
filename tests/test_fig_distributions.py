"""The seaborn distribution figure draws exactly the data and the intervals of numbers.json."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection

from analysis import numbers
from paper_figures import fig_distributions, style
from test_numbers import made  # noqa: F401 - hand-made tables


@pytest.fixture()
def tables(made, tmp_path):  # noqa: F811
    """The hand-made tables plus numbers.csv, through CSV and back as the figures read them."""
    frames = dict(made, numbers=numbers.flat(numbers.build(made)))
    for name, df in frames.items():
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    return style.read_tables(tmp_path)


def test_panels_show_every_unit_and_the_numbers_intervals(tables, made):  # noqa: F811
    fig = fig_distributions.make(tables)
    seeds_ax, resid_ax, paired_ax = fig.axes
    points = np.concatenate([c.get_offsets()[:, 1] for c in seeds_ax.collections
                             if isinstance(c, PathCollection)])       # the strip plot's points
    expected = np.concatenate([made["seed_variance"]["max_activation"],
                               made["seed_variance"]["max_under_ce5"].dropna()])
    assert sorted(points) == pytest.approx(sorted(expected))
    # the dream column's interval: a diamond at the mean, whiskers at numbers.json's CI
    dream = made["residual_directions"]["dream_z"]
    ci = numbers.build(made)["residual.dream.mean"]["ci"]
    diamonds = [line for line in resid_ax.lines if line.get_marker() == "D"]
    assert diamonds[2].get_ydata()[0] == pytest.approx(dream.mean())
    whiskers = [c for c in resid_ax.collections if isinstance(c, LineCollection)]
    assert sorted(whiskers[2].get_segments()[0][:, 1]) == pytest.approx(ci)
    # one joined pair per run: the best example (4.0) and the run's dream at its CE
    pairs = [line.get_ydata() for line in paired_ax.lines if len(line.get_ydata()) == 2]
    assert [tuple(p) for p in pairs] == [(4.0, 0.0), (4.0, 1.0), (4.0, 3.7)]


def test_main_writes_the_png(tables, tmp_path):
    out = fig_distributions.main(["--tables", str(tmp_path), "--out", str(tmp_path / "out")])
    assert out.name == "fig_distributions.png" and out.stat().st_size > 10_000


def test_no_input_tables_is_a_one_line_error():
    with pytest.raises(ValueError, match="run experiments 04-07"):
        fig_distributions.make({})


def test_sampled_neurons_are_pairs_of_their_own():
    sampled = pd.DataFrame(dict(neuron=["L1.N1", "L1.N2", "L1.N3"], dataset_best=[2.0, 3.0, 1.0],
                                dream_best=[2.5, np.nan, 4.0]))
    fig = fig_distributions.make({"dataset_sampled": sampled})
    (ax,) = fig.axes
    pairs = [tuple(line.get_ydata()) for line in ax.lines]
    assert pairs == [(2.0, 2.5), (3.0,), (1.0, 4.0)]     # the neuron without a dream: one point
    assert "1 without a dream" in " ".join(t.get_text() for t in ax.texts)
