"""Uncertainty and tests for every reported number (issue 17): bootstrap intervals, Wilcoxon, Mann-Whitney.

    from analysis import stats
    stats.estimate(per_seed_max, "median")        # value, 95% bootstrap CI, n
    stats.paired(dream_z, dataset_z)              # same directions: Wilcoxon signed-rank
    stats.unpaired(layer1_z, layer4_z)            # different units: Mann-Whitney U

Conventions, stated once so every number in numbers.json means the same thing:
  interval  95% percentile bootstrap over the units (seeds, directions, neurons, restarts):
            RESAMPLES = 10,000 resamples with replacement, generator seeded with SEED, so the same
            data always give the same interval. Percentile rather than BCa because many of our
            samples are heavy with ties (seeds stuck at 0.00), where BCa's acceleration is undefined.
  paired    where the same units are measured twice (dream vs dataset on one direction; a per-seed
            dream vs the one best dataset example): Wilcoxon signed-rank, two-sided; zero
            differences are dropped (Wilcoxon's convention); p is exact for n <= 50 without ties,
            by all sign permutations for n <= 13 with ties, else the tie-corrected normal
            approximation (scipy's "auto").
            Effect size: matched-pairs rank-biserial r = (T+ - T-) / (T+ + T-) in [-1, 1], and the
            median paired difference with its bootstrap interval.
  unpaired  otherwise: Mann-Whitney U, two-sided, exact: every split of the pooled ranks into the
            two groups (ties kept as mid-ranks) up to EXACT_LIMIT splits, else that many random
            splits, seeded (mann_whitney). Effect size: rank-biserial r = P(X > Y) - P(X < Y)
            in [-1, 1], and the difference of medians with a bootstrap interval (each group
            resampled on its own).
  strata    paired units from several strata on different scales (seeds of several targets):
            stratified_signed_rank ranks |differences| within each stratum and sums the signed
            ranks, p exact over every sign flip; a family of such tests gets holm's adjustment.
A sample with fewer than two finite values has no interval (None); an estimate drops NaNs (a
seed with no candidate under a CE limit has no value, not a zero) and says over how many units
it is. A paired test never drops them: a unit with no value on one side (a dream that never
reached the CE limit) loses its pair by more than any observed difference (unreached_losses),
so leaving it out cannot turn a loss into no evidence; NaN on both sides is a tie (dropped,
like a zero difference).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
EXACT_LIMIT = 200_000  # splits an exact p enumerates (10 + 10 units: 184,756), or samples above it
STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}


@dataclass(frozen=True)
class Estimate:
    """A mean or median over n units with its interval (None when n < 2)."""
    statistic: str
    value: float | None
    ci: tuple[float, float] | None
    n: int
    ci_method: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Test:
    """A named two-sided test with its effect size and the difference it is about."""
    name: str
    statistic: float | None
    p: float | None
    n: int
    effect_name: str
    effect: float | None
    difference_name: str
    difference: float | None
    difference_ci: tuple[float, float] | None
    unreached: int = 0       # pairs counted as a loss of the side with no value (paired)

    def to_dict(self) -> dict:
        return asdict(self)


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """(n,) float64 array of the finite entries of values."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _statistic(name: str) -> Callable[..., np.ndarray]:
    if name not in STATISTICS:
        raise ValueError(f"statistic {name!r} is not supported; use one of {sorted(STATISTICS)}")
    return STATISTICS[name]


def bootstrap_ci(values, statistic: str = "mean", confidence: float = CONFIDENCE,
                 resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of statistic over the finite values; None below 2 values."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    x = finite(values)
    if len(x) < 2:
        return None
    fn = _statistic(statistic)
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for start in range(0, resamples, 1000):     # (chunk, n) index blocks keep memory bounded
        idx = rng.integers(0, len(x), size=(min(1000, resamples - start), len(x)))
        stats[start:start + len(idx)] = fn(x[idx], axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


def estimate(values, statistic: str = "mean", **kw) -> Estimate:
    """statistic (mean or median) of the finite values, with its bootstrap interval."""
    fn = _statistic(statistic)
    x = finite(values)
    ci = bootstrap_ci(x, statistic, **kw)
    return Estimate(statistic, float(fn(x)) if len(x) else None, ci, len(x),
                    "bootstrap percentile" if ci is not None else None)


def proportion(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """successes / n with its exact (Clopper-Pearson) interval: a bootstrap of 8 wins in 8 would
    give the empty interval [1, 1]."""
    if n == 0:
        return Estimate("share", None, None, 0, None)
    ci = sps.binomtest(int(successes), int(n)).proportion_ci(confidence, method="exact")
    return Estimate("share", successes / n, (float(ci.low), float(ci.high)), int(n), "Clopper-Pearson")


def _difference_ci(x: np.ndarray, y: np.ndarray, seed: int = SEED) -> tuple[float, float] | None:
    """Bootstrap interval of median(x) - median(y), x and y resampled independently."""
    if len(x) < 2 or len(y) < 2:
        return None
    rng = np.random.default_rng(seed)
    mx = np.median(x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))], axis=1)
    my = np.median(y[rng.integers(0, len(y), size=(RESAMPLES, len(y)))], axis=1)
    lo, hi = np.quantile(mx - my, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def rank_biserial_paired(d: np.ndarray) -> float | None:
    """(T+ - T-) / (T+ + T-) over the nonzero differences d; None when all are zero."""
    d = d[d != 0]
    if len(d) == 0:
        return None
    ranks = sps.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def unreached_losses(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) differences x - y where a NaN side loses: x NaN (y not) gives a difference below
    every observed one, y NaN (x not) one above; NaN on both sides gives NaN. Only the sign and
    the rank of such a difference mean anything (it is larger in size than every real one)."""
    d = x - y
    real = d[np.isfinite(d)]
    beyond = 1.0 + (float(np.abs(real).max()) if len(real) else 0.0)
    d = np.where(np.isnan(x) & ~np.isnan(y), -beyond, d)
    return np.where(np.isnan(y) & ~np.isnan(x), beyond, d)


def wins(x, y) -> tuple[int, int]:
    """(units where x beats y, units compared), a NaN side losing (unreached_losses); NaN on
    both sides is not compared."""
    d = unreached_losses(np.asarray(x, dtype=np.float64).ravel(),
                         np.asarray(y, dtype=np.float64).ravel())
    return int((d > 0).sum()), int((~np.isnan(d)).sum())


def paired(x, y) -> Test:
    """Wilcoxon signed-rank test of x - y (same units, in the same order; y may be one number,
    compared with every x). A pair with one NaN side counts as a loss of that side, beyond every
    observed difference (unreached_losses); n counts it. The median paired difference and its
    interval are over the pairs with both values (None when there are none)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel() if np.ndim(y) else np.full(x.shape, float(y))
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
    ranked = unreached_losses(x, y)
    ranked = ranked[~np.isnan(ranked)]
    nonzero = ranked[ranked != 0]
    if len(nonzero) == 0:      # identical samples: no evidence of a difference
        stat, p = (0.0, 1.0) if len(ranked) else (None, None)
    else:
        res = sps.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    return Test("Wilcoxon signed-rank", stat, p, len(ranked), "rank-biserial (matched pairs)",
                rank_biserial_paired(ranked), "median paired difference (pairs with both values)",
                float(np.median(d)) if len(d) else None, bootstrap_ci(d, "median"),
                len(ranked) - len(d))


def unpaired(x, y) -> Test:
    """Mann-Whitney U test of x against y (different units); NaNs dropped on each side.
    The statistic is U of x; the rank-biserial is 2 U / (n_x n_y) - 1."""
    x, y = finite(x), finite(y)
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"Mann-Whitney needs values on both sides, got {len(x)} and {len(y)}")
    u, p = mann_whitney(x, y)
    return Test("Mann-Whitney U", u, p, len(x) + len(y), "rank-biserial",
                2 * u / (len(x) * len(y)) - 1, "difference of medians",
                float(np.median(x) - np.median(y)), _difference_ci(x, y))


def mann_whitney(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(U of x, two-sided p). Exact where it can be had: every split of the pooled (mid-)ranks
    into groups of len(x) and len(y) when there are at most EXACT_LIMIT of them (ties included),
    else EXACT_LIMIT random splits (seeded); p = the share of splits whose U lies at least as far
    from its mean n_x n_y / 2 as the observed one."""
    ranks = sps.rankdata(np.concatenate([x, y]))
    m, n = len(x), len(y)
    u = float(ranks[:m].sum() - m * (m + 1) / 2)
    if math.comb(m + n, m) <= EXACT_LIMIT:
        picks = np.array(list(itertools.combinations(range(m + n), m)), dtype=np.int64)
    else:
        rng = np.random.default_rng(SEED)
        picks = np.argsort(rng.random((EXACT_LIMIT, m + n)), axis=1)[:, :m]
    us = ranks[picks].sum(axis=1) - m * (m + 1) / 2                 # (S,) U of each split
    far = np.abs(us - m * n / 2) >= abs(u - m * n / 2) - 1e-9
    return u, float(far.mean())


def stratified_signed_rank(strata: Sequence[Sequence[float]]) -> tuple[float, int, float]:
    """One signed-rank test of paired differences from several strata (one target each, so their
    scales differ): |d| ranked within its stratum (zeros dropped, ties mid-ranked), statistic S =
    the sum of the signed ranks over all strata. Two-sided p = the share of sign flips of the
    nonzero differences whose |S| is at least the observed one: every flip when there are at most
    EXACT_LIMIT of them, else EXACT_LIMIT random ones (seeded). No NaNs: pass unreached_losses'
    differences. -> (S, nonzero pairs, p)."""
    parts = [np.zeros(0)]
    for x in strata:
        d = np.asarray(x, dtype=np.float64)
        d = d[d != 0]
        parts.append(np.sign(d) * sps.rankdata(np.abs(d)))
    signed = np.concatenate(parts)
    n, s = len(signed), float(signed.sum())
    if n == 0:
        return 0.0, 0, 1.0
    if 2 ** n <= EXACT_LIMIT:
        flips = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)    # (2^n, n) of +-1
    else:
        flips = np.random.default_rng(SEED).choice([-1, 1], size=(EXACT_LIMIT, n))
    null = flips @ np.abs(signed)
    return s, n, float((np.abs(null) >= abs(s) - 1e-9).mean())


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p values (same order as given): the i-th
    smallest becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    order = np.argsort(ps, kind="stable")
    adjusted, running = np.empty(len(ps)), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - j) * float(ps[i])))
        adjusted[i] = running
    return adjusted.tolist()


def t_interval(mean: float, sd: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of a mean from its summary (mean, SD, n): for tables that keep only
    those three (01's slice CE), where the units themselves are not saved."""
    if n < 2 or not np.isfinite(sd):
        return None
    half = sps.t.ppf((1 + confidence) / 2, n - 1) * sd / np.sqrt(n)
    return float(mean - half), float(mean + half)
