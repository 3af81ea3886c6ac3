"""analysis/stats.py against computations written from the definitions: exact Wilcoxon and
Mann-Whitney p-values by enumerating every sign flip / every split, rank-biserials by hand,
bootstrap coverage on a distribution whose mean is known."""
import itertools

import numpy as np
import pytest

from analysis import stats


def brute_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided exact p: share of the 2^n sign assignments whose |T+ - E[T+]| is at least the
    observed one (no ties, no zeros, so ranks are 1..n)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in
            itertools.product([0, 1], repeat=len(d))]
    return float(np.mean([abs(t - centre) >= abs(observed - centre) - 1e-9 for t in sums]))


def brute_mannwhitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided exact p: share of all splits of the pooled sample into groups of len(x) and
    len(y) whose U is at least as far from n_x n_y / 2 as the observed one."""
    pooled = np.concatenate([x, y])

    def u(a, b):
        return sum((ai > bj) + 0.5 * (ai == bj) for ai in a for bj in b)

    centre, observed = len(x) * len(y) / 2, u(x, y)
    dev = []
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        rest = np.delete(pooled, idx)
        dev.append(abs(u(pooled[list(idx)], rest) - centre) >= abs(observed - centre) - 1e-9)
    return float(np.mean(dev))


def test_wilcoxon_p_equals_enumeration_of_sign_flips():
    d = np.array([1.3, -0.4, 2.2, 0.7, -1.9, 3.1, 0.2, 1.1, -0.6])
    y = np.linspace(0, 1, len(d))
    test = stats.paired(y + d, y)
    assert test.name == "Wilcoxon signed-rank" and test.n == len(d)
    assert test.p == pytest.approx(brute_wilcoxon_p(d), abs=1e-12)


def test_paired_rank_biserial_and_median_difference_by_hand():
    d = np.array([3.0, -1.0, 2.0, 0.5, 0.0])   # zero dropped; ranks of |3, 1, 2, 0.5| = 4, 2, 3, 1
    test = stats.paired(d, 0.0)                  # one number on the right: compared with every x
    assert test.effect == pytest.approx((4 + 3 + 1 - 2) / 10)
    assert test.difference == pytest.approx(0.5)
    assert test.n == 5


def test_an_unreached_unit_loses_its_pair_and_is_never_dropped():
    """A dream with no value under the CE limit (NaN) loses to the dataset by more than any real
    difference: with it counted, 6 losses and 2 small wins reject; dropping the 5 NaNs (the old
    convention) leaves 3 pairs that never reject. The NaN on the dataset side rejects the other
    way; NaN on both sides is a tie."""
    dream = np.array([np.nan] * 5 + [1.0, 3.0, 2.4])
    data = np.array([2.0, 1.0, 4.0, 3.0, 2.0, 1.5, 2.9, 2.0])
    lost = stats.paired(dream, data)
    assert lost.n == 8 and lost.effect < 0
    # by hand: real differences -0.5, 0.1, 0.4 rank 3, 1, 2; the 5 unreached share ranks 4..8
    # (mid-rank 6), all negative; exact p over all 2^8 sign flips of those ranks
    ranks, positive = np.array([6.0] * 5 + [3, 1, 2]), np.array([0] * 6 + [1, 1], dtype=bool)
    centre, t_plus = ranks.sum() / 2, ranks[positive].sum()
    flips = [sum(r for r, f in zip(ranks, signs) if f) for signs in
             itertools.product([0, 1], repeat=8)]
    p = np.mean([abs(t - centre) >= abs(t_plus - centre) - 1e-9 for t in flips])
    assert lost.p == pytest.approx(p, abs=1e-12) and lost.p < 0.05
    assert lost.effect == pytest.approx((3 - 33) / 36)
    assert lost.difference == pytest.approx(0.1)       # median of the pairs with both values
    assert stats.paired(dream[5:], data[5:]).p > 0.5          # the old, dropped answer
    won = stats.paired(data, dream)
    assert won.p == pytest.approx(lost.p) and won.effect == pytest.approx(-lost.effect)
    tie = stats.paired(np.array([np.nan, 1.0, 2.0]), np.array([np.nan, 0.5, 2.5]))
    assert tie.n == 2


def test_mann_whitney_p_equals_enumeration_of_splits_and_rank_biserial():
    x = np.array([2.1, 3.4, 1.9, 5.0, 4.2])
    y = np.array([1.0, 2.0, 0.3, 1.5])
    test = stats.unpaired(x, y)
    u = sum(xi > yj for xi in x for yj in y)      # 19 of the 20 pairs have x above y
    assert test.statistic == u == 19
    assert test.effect == pytest.approx(19 / 20 - 1 / 20)
    assert test.p == pytest.approx(brute_mannwhitney_p(x, y), abs=1e-12)
    assert test.difference == pytest.approx(np.median(x) - np.median(y))


def test_known_difference_is_significant_identical_samples_are_not():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 30)
    shifted = stats.paired(x + 2 + rng.normal(0, 0.1, 30), x)
    assert shifted.p < 0.01 and shifted.effect == 1.0
    lo, hi = shifted.difference_ci
    assert 1.5 < lo <= hi < 2.5
    same = stats.paired(x, x)
    assert same.p == 1.0 and same.effect is None and same.difference == 0.0
    assert stats.unpaired(x + 3, x).p < 0.01
    assert stats.unpaired(x, x).p == pytest.approx(1.0)


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        sample = rng.exponential(1.0, 40)         # skewed; true mean 1
        lo, hi = stats.bootstrap_ci(sample, "mean", resamples=1000, seed=trial)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_is_seeded_and_drops_nan():
    x = [1.0, 2.0, np.nan, 4.0, 8.0]
    assert stats.bootstrap_ci(x, "median") == stats.bootstrap_ci(x, "median")
    e = stats.estimate(x, "median")
    assert e.value == 3.0 and e.n == 4 and e.ci[0] <= 3.0 <= e.ci[1]
    assert stats.estimate([5.0], "mean").ci is None


def test_t_interval_matches_the_formula():
    lo, hi = stats.t_interval(4.0, 1.2, 64)
    assert hi - 4.0 == pytest.approx(1.9983405 * 1.2 / 8, rel=1e-6)   # t_{0.975, 63}
    assert 4.0 - lo == pytest.approx(hi - 4.0)


@pytest.mark.parametrize("call, message", [
    (lambda: stats.estimate([1, 2], "mode"), "statistic 'mode'"),
    (lambda: stats.bootstrap_ci([1, 2], confidence=1.5), "confidence"),
    (lambda: stats.bootstrap_ci([1, 2], resamples=10), "resamples"),
    (lambda: stats.paired([1, 2, 3], [1, 2]), "equal lengths"),
    (lambda: stats.unpaired([], [1.0]), "both sides"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_proportion_interval_is_clopper_pearson_from_beta_quantiles():
    # Clopper-Pearson written from its definition: the beta quantiles of k successes in n.
    from scipy.stats import beta
    for k, n in ((8, 8), (0, 5), (13, 288), (3, 7)):
        e = stats.proportion(k, n)
        lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert e.value == k / n and e.n == n and e.ci_method == "Clopper-Pearson"
        assert e.ci == pytest.approx((lo, hi), abs=1e-9)
    assert stats.proportion(8, 8).ci[0] == pytest.approx(0.631, abs=1e-3)   # not the empty [1, 1]


def test_stratified_signed_rank_p_equals_enumeration_by_hand():
    """Ranks within each stratum (ties mid-ranked, zeros dropped), every sign flip written out."""
    strata = [[0.5, -2.0, 2.0, 3.0, 0.0], [10.0, 20.0, -5.0]]
    ranks = [1, -2.5, 2.5, 4, 2, 3, -1]                         # by hand: within each stratum
    s_obs = sum(ranks)
    null = [sum(sign * abs(r) for sign, r in zip(signs, ranks))
            for signs in itertools.product([1, -1], repeat=len(ranks))]
    p_hand = sum(abs(s) >= abs(s_obs) for s in null) / len(null)
    s, n, p = stats.stratified_signed_rank(strata)
    assert (s, n) == (s_obs, 7) and p == pytest.approx(p_hand)


def test_stratified_signed_rank_of_one_stratum_is_the_exact_wilcoxon():
    from scipy import stats as sps
    d = np.random.default_rng(3).normal(0.4, 1.0, 9)
    assert stats.stratified_signed_rank([d])[2] == pytest.approx(
        sps.wilcoxon(d, method="exact").pvalue)


def test_stratified_signed_rank_rejects_an_effect_and_holds_its_level_without_one():
    """Two targets of 8 seeds on different scales: a shift in both is found; with none, about 5%
    of 300 null data sets reject at 0.05 (the test is exact, so at most 5% up to noise)."""
    rng = np.random.default_rng(0)
    shifted = [rng.normal(1.5, 1.0, 8), rng.normal(15.0, 10.0, 8)]
    assert stats.stratified_signed_rank(shifted)[2] < 0.01
    rejections = [stats.stratified_signed_rank([rng.normal(0, 1, 8), rng.normal(0, 10, 8)])[2] < 0.05
                  for _ in range(300)]
    assert 0.01 < np.mean(rejections) < 0.09


def test_holm_adjusts_by_hand_and_keeps_the_order_of_the_p_values():
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    ps = np.random.default_rng(1).uniform(0, 0.2, 6)
    adjusted = np.array(stats.holm(ps))
    assert (adjusted >= ps).all() and (np.diff(adjusted[np.argsort(ps)]) >= 0).all()
