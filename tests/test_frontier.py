"""The Pareto frontier on hand-made points (lambda-sweep definition) and its quality number."""
from __future__ import annotations

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.frontier import frontier_indices

INF, NAN = float("inf"), float("nan")

# (CE, f) points. The upper convex hull is G, A, B, D; the rest must be left out.
POINTS = {
    "G": (0.5, -2.0),
    "A": (1.0, 1.0),
    "B": (2.0, 4.0),
    "C": (3.0, 4.5),   # not dominated, but below the chord B-D: no lambda picks it
    "D": (4.0, 8.0),
    "E": (2.5, 3.0),   # dominated by B
    "F": (5.0, 8.0),   # same activation as D at a higher CE
    "M": (1.5, 2.5),   # on the segment A-B: wins only in a tie at lambda = 3, and ties go to A
    "R": (NAN, -INF),  # a rejected prompt
    "S": (0.1, NAN),
}


def triple(names):
    ce = np.array([POINTS[k][0] for k in names])
    f = np.array([POINTS[k][1] for k in names])
    ids = np.array([[i, i + 100] for i in range(len(names))])
    return ids, f, ce


def test_frontier_keeps_only_the_hull_corners_sorted_by_ce():
    names = list(POINTS)
    ids, f, ce = triple(names)
    idx, lams = frontier_indices(f, ce)
    assert [names[i] for i in idx] == ["G", "A", "B", "D"]
    # The smallest sweep lambda at which each wins: D at 0, then the slopes 2, 3, 6.
    assert lams[-1] == 0.0
    np.testing.assert_allclose(lams[:3], [6.0, 3.0, 2.0], rtol=1e-2)
    assert (lams[:3] > [6.0, 3.0, 2.0]).all()


def test_frontier_is_the_same_whatever_the_order_of_points():
    names = list(POINTS)
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(len(names))
        ids, f, ce = triple([names[i] for i in order])
        idx, _ = frontier_indices(f, ce)
        assert [names[order[i]] for i in idx] == ["G", "A", "B", "D"]


def test_ties_duplicates_and_equal_ce():
    # Duplicates of a frontier point give one point; at equal CE only the higher f survives.
    ce = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    f = np.array([3.0, 3.0, 2.0, 5.0, 5.0])
    idx, _ = frontier_indices(f, ce)
    assert len(idx) == 2
    assert (ce[idx].tolist(), f[idx].tolist()) == ([1.0, 2.0], [3.0, 5.0])
    # All points equal: one point.
    assert len(frontier_indices(np.ones(4), np.ones(4))[0]) == 1
    # Nothing finite: empty.
    assert len(frontier_indices(np.array([-INF]), np.array([NAN]))[0]) == 0


def test_pareto_frontier_over_several_histories(tokenizer):
    def history(names):
        ids, f, ce = triple(names)
        h = fd.History(np.array([1.0]))
        h.append(ids, f, ce, [0], NAN, 0.1, len(names))
        return h

    h1, h2 = history(["A", "C", "E", "R"]), history(["B", "D", "F", "M", "S"])
    front = fd.pareto_frontier([h1, h2])
    assert front.xentropy.tolist() == [1.0, 2.0, 4.0]
    assert front.target.tolist() == [1.0, 4.0, 8.0]
    assert front.ids.tolist() == [[0, 100], [0, 100], [1, 101]]   # A from h1; B, D from h2
    assert front.text == ["0 100", "0 100", "1 101"]
    # Alone, h1's frontier includes C, which h2's D hides in the union.
    assert fd.pareto_frontier([h1]).xentropy.tolist() == [1.0, 3.0]
    # (ids, f, ce) triples work too, and a tokenizer decodes the texts.
    tok_ids = np.array(tokenizer.encode(" the list class", add_special_tokens=False))[None]
    front = fd.pareto_frontier([(tok_ids, np.array([1.0]), np.array([2.0]))], tokenizer)
    assert front.text == [" the list class"]
    np.testing.assert_allclose(front.perplexity, [np.exp(2.0)])


def test_pareto_frontier_edge_cases():
    assert len(fd.pareto_frontier([fd.History(np.ones(1))])) == 0
    short = (np.zeros((1, 2), int), np.ones(1), np.ones(1))
    long = (np.zeros((1, 3), int), np.ones(1), np.ones(1))
    with pytest.raises(ValueError, match="different prompt lengths"):
        fd.pareto_frontier([short, long])


def test_frontier_helpers():
    ids, f, ce = triple(list(POINTS))
    front = fd.pareto_frontier([(ids, f, ce)])
    assert front.best_under(2.5) == 2                # B: best activation with CE < 2.5
    assert front.best_under(2.0) == 1                # strictly below: A
    assert front.best_under(0.2) is None
    rec = front.records()
    assert [r["xentropy"] for r in rec] == [0.5, 1.0, 2.0, 4.0]
    assert rec[3]["lam"] == 0.0 and rec[0]["perplexity"] == pytest.approx(np.exp(0.5))
    table = front.table().splitlines()
    assert len(table) == 5 and "activation" in table[0] and "8.000" in table[4]


def test_frontier_quality_on_staircases():
    # Three points: the union of rectangles [CE, 5] x [0, f] is 1*3 + 2*5 + 1*6 = 19.
    ce, f = np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0, 6.0])
    assert fd.frontier_quality((f, ce), ref_xentropy=5.0, ref_target=0.0) == pytest.approx(19.0)
    # Raising the reference activation to 2: heights 1, 3, 4 -> 1 + 6 + 4 = 11.
    assert fd.frontier_quality((f, ce), ref_xentropy=5.0, ref_target=2.0) == pytest.approx(11.0)
    # Dominated points, points beyond the reference, and rejected ones add nothing.
    ce2 = np.append(ce, [3.0, 6.0, 0.5, NAN])
    f2 = np.append(f, [4.0, 100.0, -1.0, -INF])
    assert fd.frontier_quality((f2, ce2), 5.0, 0.0) == pytest.approx(19.0)
    # A single point is a rectangle; nothing above the reference is zero.
    assert fd.frontier_quality((np.array([2.0]), np.array([1.5])), 4.0, 0.5) == pytest.approx(3.75)
    assert fd.frontier_quality((np.array([-1.0]), np.array([1.0])), 4.0, 0.0) == 0.0
    assert fd.frontier_quality((np.zeros(0), np.zeros(0)), 4.0, 0.0) == 0.0


def test_frontier_quality_of_a_frontier_object_and_monotonicity():
    ids, f, ce = triple(list(POINTS))
    front = fd.pareto_frontier([(ids, f, ce)])
    # G is below the reference activation; A, B, D: 1*1 + 2*4 + 2*8 = 25 (reference CE 6).
    assert fd.frontier_quality(front, ref_xentropy=6.0, ref_target=0.0) == pytest.approx(25.0)
    # Adding a candidate that moves the frontier out can only increase the area.
    better = fd.pareto_frontier([(ids, f, ce), (np.zeros((1, 2), int), np.array([9.0]), np.array([3.0]))])
    assert fd.frontier_quality(better, 6.0, 0.0) > 25.0
