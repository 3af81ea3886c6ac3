"""The Pareto frontier on hand-made points (lambda-sweep definition) and its quality number."""
from __future__ import annotations

import numpy as np
import pytest

import fluentdream as fd
from fluentdream.core.frontier import DEFAULT_SWEEP, frontier_indices

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
    front = fd.pareto_frontier([short, long])     # lengths mix (issue 14): -1 pads the shorter
    assert front.ids.tolist() == [[0, 0, -1]] and front.records()[0]["ids"] == [0, 0]


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


def test_frontier_quality_of_a_frontier_object_counts_its_whole_staircase():
    ids, f, ce = triple(list(POINTS))
    front = fd.pareto_frontier([(ids, f, ce)])
    assert len(front) == 4                           # displayed: the hull corners G, A, B, D
    # The staircase also holds M and C (not dominated, off the hull); G is below the reference
    # activation: A 0.5*1 + M 0.5*2.5 + B 1*4 + C 1*4.5 + D 2*8 = 26.25 (reference CE 6).
    assert fd.frontier_quality(front, ref_xentropy=6.0, ref_target=0.0) == pytest.approx(26.25)
    assert fd.frontier_quality(front, 6.0, 0.0) == pytest.approx(union_area(f, ce, 6.0, 0.0))


def test_a_new_hull_corner_never_lowers_the_quality():
    # The hand-made case where the hull corners' area falls: A = (CE 1, f 1), B = (2, 1.5),
    # corner (3, 0): 2.5; C = (2.9, 2.4) hides B from every lambda (hull A, C: 2.14), while the
    # staircase A, B, C dominates 1 + 1.35 + 0.24 = 2.59.
    ids = np.array([[0], [1], [2]])
    f, ce = np.array([1.0, 1.5, 2.4]), np.array([1.0, 2.0, 2.9])
    before = fd.pareto_frontier([(ids[:2], f[:2], ce[:2])])
    after = fd.pareto_frontier([(ids, f, ce)])
    assert len(after) == 2 and 1.5 not in after.target          # B left the displayed frontier
    assert fd.frontier_quality(before, 3.0, 0.0) == pytest.approx(2.5)
    assert fd.frontier_quality(after, 3.0, 0.0) == pytest.approx(2.59)


def union_area(f, ce, ref_ce, ref_f) -> float:
    """The area of the union of the rectangles [ce_i, ref_ce] x [ref_f, f_i], written out: between
    consecutive breakpoints of CE, the height is the best f of any point at or left of the strip."""
    pts = [(c, v) for c, v in zip(ce, f) if np.isfinite(c) and np.isfinite(v)]
    xs = sorted({c for c, _ in pts if c < ref_ce} | {ref_ce})
    area = 0.0
    for left, right in zip(xs, xs[1:]):
        height = max([v - ref_f for c, v in pts if c <= left] + [0.0])
        area += (right - left) * height
    return area


def test_frontier_quality_equals_the_union_of_rectangles_and_never_falls():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 60))
        ce, f = rng.uniform(0, 8, n), rng.normal(2, 2, n)
        if trial % 3 == 0:                    # ties and duplicates
            ce, f = np.round(ce), np.round(f)
        ids = np.arange(n)[:, None]
        previous = 0.0
        for k in range(1, n + 1):             # candidates arrive one by one
            q = fd.frontier_quality(fd.pareto_frontier([(ids[:k], f[:k], ce[:k])]), 6.0, 0.0)
            assert q == pytest.approx(union_area(f[:k], ce[:k], 6.0, 0.0), abs=1e-9)
            assert q >= previous - 1e-12
            previous = q


def test_a_frontier_without_its_staircase_refuses_to_be_measured():
    front = fd.Frontier(np.array([1.0]), np.array([2.0]), np.zeros((1, 1), int), ["x"],
                        np.zeros(1))
    with pytest.raises(ValueError, match="staircase"):
        fd.frontier_quality(front, 6.0, 0.0)


def sweep_by_brute_force(f, ce, sweep):
    """DESIGN §4 read literally: for every lambda the candidate minimizing -f + lambda * CE
    (float64; ties to the lower CE, then the higher f, then the earlier index)."""
    ok = [i for i in range(len(f)) if np.isfinite(f[i]) and np.isfinite(ce[i])]
    if not ok:
        return [], []
    order = sorted(ok, key=lambda i: (float(ce[i]), -float(f[i]), i))
    F = np.array([float(f[i]) for i in order])
    C = np.array([float(ce[i]) for i in order])
    first_win = {}
    for lam_index, lam in enumerate(np.asarray(sweep, float)):
        first_win.setdefault(int(np.argmin(-F + lam * C)), lam_index)   # argmin: first minimum
    winners = sorted(first_win)
    return [order[w] for w in winners], [float(sweep[first_win[w]]) for w in winners]


def point_clouds(rng):
    """(name, f, ce): random clouds, ties, runs on one line, and rejected candidates."""
    n = int(rng.integers(1, 400))
    ce = rng.uniform(0, 10, n)
    yield "random", ce + rng.normal(0, 1, n), ce
    ce32 = rng.normal(5, 2, n).astype(np.float32)
    yield "float32", (2 * ce32 + rng.normal(0, 1, n)).astype(np.float32), ce32
    yield "integer grid", rng.integers(-3, 6, n).astype(float), rng.integers(0, 6, n).astype(float)
    yield "concave", np.sqrt(ce + 0.1), ce + 0.1                   # every point on the hull
    run = rng.integers(0, 50, n) * 0.1                             # one line, slope 3, rounded
    yield "collinear", 3 * run + 0.7, run
    tenth = np.round(rng.uniform(0, 4, n), 1)
    yield "rounded", np.round(np.log1p(tenth) * 3 + rng.normal(0, 0.3, n), 1), tenth


SWEEPS = {"default": DEFAULT_SWEEP,
          "exact slopes": np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0]),
          "tenths": np.arange(40) * 0.1,
          "unsorted": np.random.default_rng(7).uniform(0, 5, 60)}


@pytest.mark.parametrize("sweep_name", list(SWEEPS))
def test_frontier_equals_the_brute_force_sweep(sweep_name):
    sweep = SWEEPS[sweep_name]
    rng = np.random.default_rng(0)
    for trial in range(10):
        for name, f, ce in point_clouds(rng):
            f, ce = f.copy(), ce.copy()
            f[rng.random(len(f)) < 0.05] = -INF
            ce[rng.random(len(ce)) < 0.05] = NAN
            idx, lams = frontier_indices(f, ce, sweep)
            want_idx, want_lams = sweep_by_brute_force(f, ce, sweep)
            assert idx.tolist() == want_idx, (name, trial)
            assert lams.tolist() == want_lams, (name, trial)


def test_frontier_of_many_candidates_equals_the_brute_force_sweep():
    # Enough points that the sampled domination filter skips most of them before sorting.
    rng = np.random.default_rng(1)
    ce = rng.uniform(3, 10, 6000).astype(np.float32)
    f = (ce + rng.normal(0, 1, 6000)).astype(np.float32)
    f[::97] = -INF
    sweep = DEFAULT_SWEEP[::4]
    idx, lams = frontier_indices(f, ce, sweep)
    assert (idx.tolist(), lams.tolist()) == sweep_by_brute_force(f, ce, sweep)
    assert len(idx) > 3


def test_frontier_memory_grows_with_n_not_with_n_times_the_sweep():
    import tracemalloc

    rng = np.random.default_rng(2)
    n = 200_000
    ce = rng.uniform(3, 10, n).astype(np.float32)
    f = (ce + rng.normal(0, 1, n)).astype(np.float32)
    tracemalloc.start()
    frontier_indices(f, ce)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # A (2001, N) float64 loss table alone would be 3.2 GB; here a few arrays of N.
    assert peak < 60 * n, peak


@pytest.mark.parametrize("sweep", [np.array([]), np.array([0.1, -1.0]), np.array([NAN]),
                                   np.array([[0.1]]), np.array([INF])])
def test_bad_sweeps_are_refused(sweep):
    with pytest.raises(fd.UserError, match="non-empty 1-D array of finite lambdas >= 0"):
        frontier_indices(np.ones(3), np.ones(3), sweep)


def hypervolume_by_cells(f, ce, ref_xentropy, ref_target):
    """The dominated area counted cell by cell on the grid of all coordinates: a cell belongs
    to it when some point has CE <= the cell's left edge and activation >= its top edge."""
    pts = [(c, a) for a, c in zip(f, ce) if np.isfinite(a) and np.isfinite(c)]
    xs = sorted({c for c, _ in pts if c < ref_xentropy} | {ref_xentropy})
    ys = sorted({a for _, a in pts if a > ref_target} | {ref_target})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(c <= x0 and a >= y1 for c, a in pts):
                area += (x1 - x0) * (y1 - y0)
    return area


def test_frontier_quality_equals_a_cell_count():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(1, 25))
        ce = np.round(rng.uniform(0, 6, n), 1)
        f = np.round(rng.normal(1, 2, n), 1)
        f[rng.random(n) < 0.1] = -INF
        ref = (float(rng.uniform(2, 7)), float(rng.uniform(-1, 1)))
        want = hypervolume_by_cells(f, ce, *ref)
        assert fd.frontier_quality((f, ce), *ref) == pytest.approx(want, abs=1e-9)
        front = fd.pareto_frontier([(np.zeros((n, 1), int), f, ce)])
        assert fd.frontier_quality(front, *ref) <= want + 1e-9       # hull corners only
