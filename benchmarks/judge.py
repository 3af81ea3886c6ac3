"""Judging runs of either implementation alike (time to quality, the ablation, the restart
penalty): one fp32 Scorer with fluentdream's rules, one hypervolume corner per target, and each
run's frontier quality after every iteration.

    judge = Judge(lm32, "L8.N1371", retokenize=True)
    corner = judge.corner(cfg, seeds)                # fixed before anything runs
    hv = judge.curve(hist, corner, native=False)     # (T,) hypervolume after iterations 1..T
    first_reaching(hv, goal)                         # first iteration with hv >= goal, or None

What a run is credited with after iteration t: the fp32 hypervolume (fd.frontier_quality: every
non-dominated point) of its *record* candidates up to t, a record being a candidate that was on
the run's own Pareto staircase (in the run's own scores) when it arrived. The staircase at t
holds only records (a point that is dominated on arrival never comes back), so for a run scored
in fp32 (`native=True`) this is exactly the hypervolume of all its candidates up to t. For a run
scored in another dtype the records are re-scored once in fp32 and the curve is a lower bound of
the fp32 staircase of all its candidates: bf16 values never enter a comparison, and neither side
is flattered. The rules (banned goal text, retokenization) are applied to every candidate, so a
run that searched without them is judged by them. The curve never falls.
"""
from __future__ import annotations

import numpy as np
import torch

import fluentdream as fd
from fluentdream.core.steps import initial_prompts
from fluentdream.core.scoring import Scorer
from fluentdream.core.frontier import staircase_indices


def first_reaching(curve: np.ndarray, goal: float) -> int | None:
    """(T,) quality after iterations 1..T -> the first iteration (1-based) whose quality is at
    least `goal`, or None. A scan, so it is right for any curve, rising or not."""
    hits = np.flatnonzero(np.asarray(curve) >= goal)
    return int(hits[0]) + 1 if len(hits) else None


def reference_goal(final: list[float]) -> float:
    """The goal of a time-to-quality race: the lower median of the reference's final qualities,
    one of its runs' own values, which more than half of its runs reach (the plain median of an
    even count lies between two runs: exactly half reach it, and its median time is infinite)."""
    return float(np.quantile(final, 0.5, method="lower"))


class Judge:
    """One target judged in fp32 with fluentdream's rejection rules."""

    def __init__(self, lm32, spec: str, retokenize: bool = True):
        assert lm32.dtype == torch.float32, "the judge scores in fp32"
        self.lm, self.spec = lm32, spec
        self.target = fd.parse_target(spec, lm32)
        self.rules = Scorer(lm32, self.target, retokenize=retokenize)

    def corner(self, cfg: fd.EPOConfig, seeds: list[int]) -> tuple[float, float]:
        """(worst CE, lowest activation) among the fp32 scores of fluentdream's random initial
        prompts of every seed (fluentdream.core.steps.initial_prompts, seeded as a run seeds it): known before
        anything runs, and the same for every arm and implementation."""
        initial = torch.cat([initial_prompts(self.lm, cfg.replace(seed=s),
                                             torch.Generator().manual_seed(s))[:, :cfg.seq_len]
                             for s in seeds])
        f0, ce0 = self.rules.score(initial)
        ok = torch.isfinite(f0)
        return float(ce0[ok].max()), float(f0[ok].min())

    def valid(self, hist: fd.History) -> np.ndarray:
        """(T, P) bool: candidates with finite scores that the rules accept."""
        T, P, W = hist.ids.shape
        flat = torch.from_numpy(hist.ids.reshape(T * P, W).astype(np.int64))
        uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
        ok = ~self.rules.rejected(uniq)[inverse.numpy()].reshape(T, P)
        return ok & np.isfinite(hist.target) & np.isfinite(hist.xentropy)

    def records(self, hist: fd.History) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> the run's record candidates: (R,) arrival iteration (0-based), (R, W) ids and
        (R,), (R,) the run's own target and CE of each."""
        ok = self.valid(hist)
        stair_f, stair_ce = np.zeros(0), np.zeros(0)
        t_idx, r_idx = [], []                       # (iteration, pool row) of each record
        for t in range(len(hist)):
            rows = np.flatnonzero(ok[t])
            f = np.append(stair_f, hist.target[t][rows])
            ce = np.append(stair_ce, hist.xentropy[t][rows])
            keep = staircase_indices(f, ce)
            new = rows[keep[keep >= len(stair_f)] - len(stair_f)]
            t_idx += [t] * len(new)
            r_idx += new.tolist()
            stair_f, stair_ce = f[keep], ce[keep]
        t_idx, r_idx = np.asarray(t_idx, int), np.asarray(r_idx, int)
        return (t_idx, hist.ids[t_idx, r_idx], hist.target[t_idx, r_idx].astype(float),
                hist.xentropy[t_idx, r_idx].astype(float))

    def curve(self, hist: fd.History, corner: tuple[float, float], native: bool) -> np.ndarray:
        """(T,) fp32 hypervolume of the run's records after iterations 1..T (module docstring);
        native: the run was scored in fp32 by the same definitions, so its own values count."""
        when, ids, f, ce = self.records(hist)
        if not native and len(ids):
            f32, ce32 = self.rules.score(torch.from_numpy(ids.astype(np.int64)))
            f, ce = f32.double().numpy(), ce32.double().numpy()
        out = np.zeros(len(hist))
        stair_f, stair_ce = np.zeros(0), np.zeros(0)
        for t in range(len(hist)):
            new = when == t
            stair_f, stair_ce = np.append(stair_f, f[new]), np.append(stair_ce, ce[new])
            keep = staircase_indices(stair_f, stair_ce)
            stair_f, stair_ce = stair_f[keep], stair_ce[keep]
            out[t] = fd.frontier_quality((stair_f, stair_ce), *corner)
        return out
