"""The Pareto frontier of activation vs cross-entropy, and its quality as one number (DESIGN §4).

    front = fd.pareto_frontier([hist1, hist2], lm.tokenizer)
    front.target, front.xentropy, front.text          # K points, in order of increasing CE
    fd.frontier_quality(front, ref_xentropy=6.0, ref_target=0.0)   # dominated area (hypervolume)

The frontier is built from all recorded candidates: for each lambda of a dense sweep, the candidate
minimizing -f + lambda * CE; the unique winners, sorted by CE, are the points. These are the
corners of the upper convex hull of the (CE, f) cloud, which is what EPO's penalties can reach.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError

DEFAULT_SWEEP = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 2000)])


@dataclass
class Frontier:
    target: np.ndarray      # (K,) activation of each point
    xentropy: np.ndarray    # (K,) mean self cross-entropy (nats)
    ids: np.ndarray         # (K, n) tokens
    text: list[str]         # K decoded prompts
    lambdas: np.ndarray     # (K,) smallest sweep lambda at which each point wins

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
        return [dict(target=float(f), xentropy=float(c), perplexity=float(np.exp(c)),
                     text=t, ids=[int(i) for i in row], lam=float(lam))
                for f, c, t, row, lam in zip(self.target, self.xentropy, self.text, self.ids,
                                             self.lambdas)]

    def table(self, max_width: int = 60) -> str:
        """A plain-text table: activation, CE, perplexity, prompt."""
        lines = [f"{'activation':>10}  {'xentropy':>8}  {'perplexity':>10}  text"]
        for f, c, t in zip(self.target, self.xentropy, self.text):
            shown = repr(t)[1:-1]
            shown = shown if len(shown) <= max_width else shown[:max_width - 1] + "…"
            lines.append(f"{f:10.3f}  {c:8.3f}  {np.exp(c):10.1f}  {shown}")
        return "\n".join(lines)


def frontier_indices(target: np.ndarray, xentropy: np.ndarray,
                     sweep: np.ndarray = DEFAULT_SWEEP) -> tuple[np.ndarray, np.ndarray]:
    """(N,), (N,) -> indices of the frontier points sorted by CE, and the lambda each first wins.

    Ties in -f + lambda * CE go to the lower CE, then the higher activation.
    """
    ok = np.flatnonzero(np.isfinite(target) & np.isfinite(xentropy))
    if len(ok) == 0:
        return np.zeros(0, int), np.zeros(0)
    f, ce = target[ok].astype(np.float64), xentropy[ok].astype(np.float64)
    order = np.lexsort((-f, ce))                     # by CE, then by higher f
    f, ce, ok = f[order], ce[order], ok[order]
    loss = -f[None, :] + sweep[:, None] * ce[None, :]  # (L, N)
    winners = loss.argmin(axis=1)                      # first minimum = lowest CE on ties
    idx, first = np.unique(winners, return_index=True)
    by_ce = np.argsort(ce[idx], kind="stable")
    return ok[idx[by_ce]], sweep[first[by_ce]]


def pareto_frontier(histories, tokenizer=None, sweep: np.ndarray = DEFAULT_SWEEP) -> Frontier:
    """Frontier over all candidates of one or more Histories (or (ids, f, ce) triples)."""
    parts = [h.candidates() if hasattr(h, "candidates") else h for h in histories]
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return Frontier(np.zeros(0), np.zeros(0), np.zeros((0, 0), np.int32), [], np.zeros(0))
    n = max(p[0].shape[1] for p in parts)
    if any(p[0].shape[1] != n for p in parts):
        raise UserError("histories have different prompt lengths; build one frontier per length")
    ids = np.concatenate([p[0] for p in parts])
    f = np.concatenate([p[1] for p in parts])
    ce = np.concatenate([p[2] for p in parts])
    idx, lams = frontier_indices(f, ce, sweep)
    texts = (tokenizer.batch_decode(ids[idx].tolist(), clean_up_tokenization_spaces=False)
             if tokenizer is not None else [" ".join(map(str, row)) for row in ids[idx]])
    return Frontier(f[idx].astype(np.float64), ce[idx].astype(np.float64), ids[idx], texts, lams)


def frontier_quality(front: Frontier | tuple[np.ndarray, np.ndarray], ref_xentropy: float,
                     ref_target: float) -> float:
    """Area of (CE, activation) space dominated by the frontier: CE in [point, ref_xentropy],
    activation in [ref_target, point] (hypervolume; larger is better). The reference point must
    be stated, so numbers from different runs are comparable only under the same one."""
    f, ce = (front.target, front.xentropy) if isinstance(front, Frontier) else front
    f, ce = np.asarray(f, float), np.asarray(ce, float)
    ok = np.isfinite(f) & np.isfinite(ce) & (ce < ref_xentropy) & (f > ref_target)
    f, ce = f[ok], ce[ok]
    if len(f) == 0:
        return 0.0
    order = np.argsort(ce)
    area, best = 0.0, ref_target
    edges = np.append(ce[order], ref_xentropy)
    for i, j in enumerate(order):
        best = max(best, f[j])             # best activation reachable at CE <= edges[i]
        area += (edges[i + 1] - edges[i]) * (best - ref_target)
    return float(area)
