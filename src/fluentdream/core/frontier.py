"""The Pareto frontier of activation vs cross-entropy, and its quality as one number (DESIGN §4).

    front = fd.pareto_frontier([hist1, hist2], lm.tokenizer)
    front.target, front.xentropy, front.text          # K points, in order of increasing CE
    fd.frontier_quality(front, ref_xentropy=6.0, ref_target=0.0)   # dominated area (hypervolume)
    front.post                # (K,) post-activation values of a pre-activation run, else None

Two sets of points come out of all recorded candidates:
- the displayed frontier, the lambda-sweep winners (paper §2): for each lambda of a dense sweep
  the candidate minimizing -f + lambda * CE; the unique winners, sorted by CE. They are the
  corners of the upper convex hull of the (CE, f) cloud, what EPO's penalties can reach;
- the Pareto staircase, every non-dominated candidate (`front.staircase_*`). Frontier quality is
  the hypervolume of the staircase, so it never falls when candidates are added. The hull's
  corners alone would not do: a new corner can hide an old one and shrink their area.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .ragged import PAD, rows

DEFAULT_SWEEP = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 2000)])


@dataclass
class Frontier:
    target: np.ndarray      # (K,) activation of each point
    xentropy: np.ndarray    # (K,) mean self cross-entropy (nats)
    ids: np.ndarray         # (K, W) tokens, -1 after a shorter prompt (fluentdream.core.ragged)
    text: list[str]         # K decoded prompts
    lambdas: np.ndarray     # (K,) smallest sweep lambda at which each point wins
    # (S,) every non-dominated candidate (the Pareto staircase, which holds the K points above),
    # sorted by CE: what frontier_quality measures. None for a Frontier rebuilt from its K points.
    staircase_target: np.ndarray | None = None
    staircase_xentropy: np.ndarray | None = None
    # (K,) for a pre-activation target (`L1.N5:pre`, `sae:DIR:j:pre`): each point re-scored by
    # the target's post-activation twin (runs.with_post), so reports stay comparable with the
    # paper's post-activation numbers (DESIGN §5); None for every other target.
    post: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    @property
    def perplexity(self) -> np.ndarray:
        return np.exp(self.xentropy)

    def best_under(self, max_xentropy: float) -> int | None:
        """Index of the highest-activation point with CE < max_xentropy, or None."""
        ok = np.flatnonzero(self.xentropy < max_xentropy)
        return int(ok[np.argmax(self.target[ok])]) if len(ok) else None

    def records(self) -> list[dict]:
        """frontier.json's points; a `post` key only where the frontier has post values."""
        out = [dict(target=float(f), xentropy=float(c), perplexity=float(np.exp(c)),
                    text=t, ids=row, lam=float(lam))
               for f, c, t, row, lam in zip(self.target, self.xentropy, self.text,
                                            rows(self.ids), self.lambdas)]
        for r, p in zip(out, self.post if self.post is not None else ()):
            r["post"] = float(p)
        return out

    def table(self, max_width: int = 60) -> str:
        """A plain-text table: activation (and post-activation, if any), CE, perplexity, prompt."""
        post = self.post is not None
        lines = [f"{'activation':>10}  " + (f"{'post':>8}  " if post else "")
                 + f"{'xentropy':>8}  {'perplexity':>10}  text"]
        for i, (f, c, t) in enumerate(zip(self.target, self.xentropy, self.text)):
            shown = repr(t)[1:-1]
            shown = shown if len(shown) <= max_width else shown[:max_width - 1] + "…"
            lines.append(f"{f:10.3f}  " + (f"{self.post[i]:8.3f}  " if post else "")
                         + f"{c:8.3f}  {np.exp(c):10.1f}  {shown}")
        return "\n".join(lines)


def staircase_indices(target: np.ndarray, xentropy: np.ndarray) -> np.ndarray:
    """(N,), (N,) -> indices of the non-dominated finite candidates (the Pareto staircase),
    sorted by CE: no other candidate has CE <= and activation >= with one of them strict. Of
    exact duplicates the earliest stays. O(N log N)."""
    ok = np.flatnonzero(np.isfinite(target) & np.isfinite(xentropy))
    f, ce = target[ok].astype(np.float64), xentropy[ok].astype(np.float64)
    order = np.lexsort((-f, ce))                     # by CE, then by higher f; stable
    f = f[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(f)[:-1]])
    return ok[order[f > best_before]]


def frontier_indices(target: np.ndarray, xentropy: np.ndarray,
                     sweep: np.ndarray = DEFAULT_SWEEP) -> tuple[np.ndarray, np.ndarray]:
    """(N,), (N,) -> indices of the frontier points sorted by CE, and the first sweep lambda
    at which each wins. O(N log N) time, O(N + L) memory for L sweep values.

    For each lambda of the sweep the winner is the finite candidate minimizing -f + lambda * CE
    as float64 computes it; ties go to the lower CE, then the higher activation, then the
    earlier index. Only points on (or within rounding of) the upper convex hull of the Pareto
    staircase can win, and for each lambda only those near the hull corner whose edge slopes
    bracket it; a binary search finds that stretch and the losses are computed there alone.
    """
    sweep = np.asarray(sweep, dtype=np.float64)
    if sweep.ndim != 1 or len(sweep) == 0 or not np.isfinite(sweep).all() or (sweep < 0).any():
        raise UserError("sweep must be a non-empty 1-D array of finite lambdas >= 0")
    ok = np.flatnonzero(np.isfinite(target) & np.isfinite(xentropy))
    if len(ok) == 0:
        return np.zeros(0, int), np.zeros(0)
    f, ce = target[ok].astype(np.float64), xentropy[ok].astype(np.float64)
    keep = _not_dominated_by_sample(f, ce)           # most of N, cheaply, before the sort
    f, ce, ok = f[keep], ce[keep], ok[keep]
    order = np.lexsort((-f, ce))                     # by CE, then by higher f; stable
    f, ce, ok = f[order], ce[order], ok[order]
    # A point with an earlier one at CE <= and f >= never wins, not even by rounding: both
    # terms of its loss are >= (rounding is monotone) and ties go to the earlier point.
    stair = np.flatnonzero(f > np.concatenate([[-np.inf], np.maximum.accumulate(f)[:-1]]))
    hull = stair[_upper_hull(ce[stair], f[stair])]   # (H,) positions; CE and f increase
    # Points within rounding below the hull can still win a near-tie, so they stay candidates.
    gap = np.interp(ce[stair], ce[hull], f[hull]) - f[stair]
    near = stair[gap <= _REL_TOL * (np.abs(f[stair]) + sweep.max() * np.abs(ce[stair]))]
    # Edge j (hull[j] -> hull[j+1]) lowers the loss iff lambda < its slope. Each lambda's
    # stretch: from one corner before the first edge whose slope is within rounding of lambda
    # or below it, to one corner after the last edge within rounding of it or above it.
    slopes = np.diff(f[hull]) / np.diff(ce[hull])    # (H-1,) decreasing
    tol = _REL_TOL * sweep
    lo = np.searchsorted(-slopes, -(sweep + tol), side="left") - 1
    hi = np.searchsorted(-slopes, -(sweep - tol), side="right") + 1
    lo, hi = ce[hull[np.clip(lo, 0, len(hull) - 1)]], ce[hull[np.clip(hi, 0, len(hull) - 1)]]
    start = np.searchsorted(ce[near], lo, side="left")          # (L,) stretch = near[start:stop]
    stop = np.searchsorted(ce[near], hi, side="right")
    winners = near[_first_argmin(f[near], ce[near], sweep, start, stop)]   # (L,) positions
    idx, first = np.unique(winners, return_index=True)    # positions are already in CE order
    return ok[idx], sweep[first]


def _not_dominated_by_sample(f: np.ndarray, ce: np.ndarray, size: int = 1024) -> np.ndarray:
    """(N,), (N,) -> (N,) bool: False where one of ~size evenly strided points has a strictly
    lower CE and an activation at least as high. Such a point comes first in the tie order
    and its loss is never higher, so what is dropped could not have won."""
    step = max(1, len(f) // size)
    order = np.argsort(ce[::step])
    pce, pbest = ce[::step][order], np.maximum.accumulate(f[::step][order])   # (S,), (S,)
    below = np.searchsorted(pce, ce, side="left")    # sample points with CE strictly lower
    return (below == 0) | (f > pbest[np.maximum(below - 1, 0)])


_REL_TOL = 1e-9   # far above float64 rounding (1e-16), far below any real gap between points
_WIDE = 8         # stretches longer than this (collinear runs) are scored one lambda at a time


def _first_argmin(f: np.ndarray, ce: np.ndarray, sweep: np.ndarray, start: np.ndarray,
                  stop: np.ndarray) -> np.ndarray:
    """(K,) points, (L,) lambdas and stretches [start, stop) -> (L,) index of the first point
    minimizing -f + lambda * CE within each stretch."""
    out = np.empty(len(sweep), dtype=int)
    narrow = np.flatnonzero(stop - start <= _WIDE)
    cols = np.minimum(start[narrow, None] + np.arange(_WIDE), len(f) - 1)       # (L', W)
    loss = -f[cols] + sweep[narrow, None] * ce[cols]
    loss[cols >= stop[narrow, None]] = np.inf
    out[narrow] = cols[np.arange(len(narrow)), loss.argmin(axis=1)]
    for i in np.flatnonzero(stop - start > _WIDE):
        out[i] = start[i] + np.argmin(-f[start[i]:stop[i]] + sweep[i] * ce[start[i]:stop[i]])
    return out


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(K,), (K,) with x and y strictly increasing -> indices of the upper convex hull's corners
    (monotone chain); points on an edge are not corners. K is the Pareto staircase, usually a
    few hundred points at most."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b on or below the chord a -> i is not a corner (cross product >= 0).
            if (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a]) >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull, dtype=int)


def pareto_frontier(histories, tokenizer=None, sweep: np.ndarray = DEFAULT_SWEEP) -> Frontier:
    """Frontier over all candidates of one or more Histories (or (ids, f, ce) triples), of any
    prompt lengths: CE is a mean per predicted token and the target reads the last position, so
    prompts of different lengths sit on the same axes (issue 14). ids are padded with -1 to the
    longest."""
    parts = [h.candidates() if hasattr(h, "candidates") else h for h in histories]
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return Frontier(np.zeros(0), np.zeros(0), np.zeros((0, 0), np.int32), [], np.zeros(0),
                        staircase_target=np.zeros(0), staircase_xentropy=np.zeros(0))
    W = max(p[0].shape[1] for p in parts)
    ids = np.concatenate([np.pad(p[0], ((0, 0), (0, W - p[0].shape[1])), constant_values=PAD)
                          for p in parts])
    f = np.concatenate([p[1] for p in parts])
    ce = np.concatenate([p[2] for p in parts])
    idx, lams = frontier_indices(f, ce, sweep)
    stair = staircase_indices(f, ce)
    texts = (tokenizer.batch_decode(rows(ids[idx]), clean_up_tokenization_spaces=False)
             if tokenizer is not None else [" ".join(map(str, row)) for row in rows(ids[idx])])
    return Frontier(f[idx].astype(np.float64), ce[idx].astype(np.float64), ids[idx], texts, lams,
                    staircase_target=f[stair].astype(np.float64),
                    staircase_xentropy=ce[stair].astype(np.float64))


def frontier_quality(front: Frontier | tuple[np.ndarray, np.ndarray], ref_xentropy: float,
                     ref_target: float) -> float:
    """Area of (CE, activation) space dominated by the candidates: every (c, a) with c in
    [CE of some candidate, ref_xentropy] and a in [ref_target, its activation] (hypervolume;
    larger is better). A Frontier counts its whole Pareto staircase, not only the displayed
    lambda-sweep winners; (f, ce) arrays count all their points. Adding candidates never lowers
    it. The reference point must be stated: numbers compare only under the same one."""
    if isinstance(front, Frontier):
        if front.staircase_target is None:
            raise ValueError("this Frontier carries only its displayed points, not the Pareto "
                             "staircase that frontier_quality measures; build it with "
                             "fd.pareto_frontier from the runs' histories")
        front = (front.staircase_target, front.staircase_xentropy)
    f, ce = front
    f, ce = np.asarray(f, float), np.asarray(ce, float)
    ok = np.isfinite(f) & np.isfinite(ce) & (ce < ref_xentropy) & (f > ref_target)
    f, ce = f[ok], ce[ok]
    if len(f) == 0:
        return 0.0
    order = np.argsort(ce)
    best = np.maximum.accumulate(f[order])         # best activation reachable at CE <= ce[i]
    widths = np.diff(np.append(ce[order], ref_xentropy))
    return float(np.sum(widths * (best - ref_target)))
