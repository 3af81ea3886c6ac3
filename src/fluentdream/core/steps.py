"""The steps of EPO, named after the paper's (§2, DESIGN §4); `fluentdream.core.batched` runs them.

    ids = initial_prompts(lm, cfg, gen)                 # step 1: (M, W) random or given prompts
    propose_many(scorer, [(state, lambdas, k, 0)], allowed)   # steps 2, 7: top-k tokens per slot
    kept = select(f, ce, lambdas)                       # step 5: the best of the pool per slot
    kept, lam_r = restart(f, ce, M, cfg, gen, pool)     # step 6

Step 3 (mutate: r children per member by the configured operators) is fluentdream.core.operators;
step 4 (evaluate: forward only) is the Scorer (fluentdream.core.scoring). A resumed run refills
the scorer's memo with `replay_memo`, so it continues exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .config import EPOConfig
from .history import EPOState, History
from .operators import insertion_table
from .ragged import widen
from .scoring.scorer import Scorer
from .tokens import drawable_tokens, retokenizes


def initial_prompts(lm, cfg: EPOConfig, gen: torch.Generator) -> torch.Tensor:
    """(M, W) starting prompts of n = seq_len tokens, padded with -1 to W = max_len
    (fluentdream.core.ragged): cfg.initial_prompt for all, or random drawable tokens
    (tokens.drawable_tokens)."""
    M, n = cfg.population_size, cfg.seq_len
    if cfg.initial_prompt is not None:
        ids = lm.tokenizer.encode(cfg.initial_prompt, add_special_tokens=False)
        if len(ids) != n:
            raise UserError(f"initial_prompt encodes to {len(ids)} tokens; seq_len is {n}")
        return widen(torch.tensor(ids).repeat(M, 1), cfg.length_range[1])
    pool = drawable_tokens(lm).nonzero().squeeze(1)
    rows = []
    for _ in range(M):
        for _attempt in range(1000):
            row = pool[torch.randint(len(pool), (n,), generator=gen)]
            if not cfg.retokenize or retokenizes(lm.tokenizer, row[None])[0]:
                break
        else:
            raise UserError("could not draw a random prompt that survives decode -> encode; "
                            "set retokenize=False or give initial_prompt")
        rows.append(row)
    return widen(torch.stack(rows), cfg.length_range[1])


def propose_many(scorer: Scorer, runs: list[tuple[EPOState, torch.Tensor, int, int]],
                 allowed: torch.Tensor) -> None:
    """Refresh the top-k candidate tokens (M, W, k) of every slot whose prompt is new to it
    (steps 2, 7), for runs (state, lambdas (M,), k, target index) in one gradient pass; for runs
    that insert (state.next_ids not empty), also the insertion candidates (M, W + 1, k) from the
    same pass (fluentdream.core.operators). Runs may differ in W (their max_len): rows are padded to
    the widest for the pass and each run takes back its own width."""
    stale = [np.flatnonzero(~state.fresh) for state, *_ in runs]
    if sum(len(s) for s in stale) == 0:
        return
    width = max(state.slot_ids.shape[1] for state, *_ in runs)
    ids = torch.cat([widen(torch.from_numpy(state.slot_ids[s]), width)
                     for (state, *_), s in zip(runs, stale)])
    lams = torch.cat([lambdas[s] for (_, lambdas, _, _), s in zip(runs, stale)])
    which = torch.cat([torch.full((len(s),), w) for (*_, w), s in zip(runs, stale)])
    inserts = any(state.next_ids.size for state, *_ in runs)
    logp = torch.empty(len(ids), width + 1, scorer.lm.vocab_size) if inserts else None
    grads = scorer.gradients(ids, lams, which, next_logprobs=logp)       # (S, width, V)
    grads[..., ~allowed] = -torch.inf
    start = 0
    for (state, _, k, _), s in zip(runs, stale):
        if len(s):
            rows, W = slice(start, start + len(s)), state.slot_ids.shape[1]
            state.topk[s] = grads[rows, :W].topk(k, dim=-1).indices.to(torch.int32).numpy()
            if state.next_ids.size:
                state.next_ids[s], state.next_probs[s] = insertion_table(
                    logp[rows, :W + 1], allowed, k, torch.from_numpy(state.topk[s][:, 0]),
                    prefixed=scorer.context.P > 0)
            state.fresh[s] = True
            start += len(s)


def propose(scorer: Scorer, state: EPOState, lambdas: torch.Tensor, allowed: torch.Tensor,
            k: int) -> None:
    """propose_many for one run on the scorer's first target."""
    propose_many(scorer, [(state, lambdas, k, 0)], allowed)


def objective(f: torch.Tensor, ce: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(P,), (P,), (L,) -> (L, P): f - lambda * CE; -inf for rejected candidates and for any
    whose f or CE is not finite (argmax would take NaN as the largest value)."""
    value = f[None, :] - lam[:, None] * ce[None, :]
    return torch.where((torch.isfinite(f) & torch.isfinite(ce))[None, :], value, -torch.inf)


def select(f: torch.Tensor, ce: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """(P,), (P,), (M,) -> (M,) pool index maximizing each slot's objective, with replacement
    (step 5). The pool's first M rows are the slots' own prompts: a slot whose own prompt ties
    the best keeps it (its gradient stays valid, step 7); other ties go to the lowest index."""
    value = objective(f, ce, lambdas)                                    # (M, P)
    best = value.argmax(dim=1)
    own = torch.arange(len(lambdas))
    return torch.where(value[own, own] >= value[own, best], own, best)


def restart(f: torch.Tensor, ce: torch.Tensor, M: int, cfg: EPOConfig, gen: torch.Generator,
            ids=None) -> tuple[torch.Tensor, float]:
    """(P,), (P,) -> (M,) pool index for each slot, and lambda_r ~ U[min, max] (step 6).

    cfg.restart_mode says what the slots take:
      collapse  every slot the pool member maximizing f - lambda_r * CE (the paper's restart;
                the reference code draws lambda_r and then uses 2.0; we use the draw, LOG.md).
      frontier  slot i the winner at mu_i, M stratified draws of the same U[min, max]: lambda_r
                plus multiples of (max - min) / M, wrapped into the range and sorted, so slot i
                (penalties ascend with i) takes a point of the pool's frontier as spread as the
                restart range and the pool allow (paper §4: "more exploration"). M = 1 is collapse.
      distinct  the M best prompts under lambda_r that differ from each other (`ids`: the pool's
                (P, n) tokens, or its P rows), the lowest CE to the highest penalty; repeated
                from the best when fewer than M valid prompts exist.
    Every mode draws lambda_r once, so the run's random stream does not depend on the mode.
    """
    lo, hi = cfg.restart_xentropy_min, cfg.restart_xentropy_max
    lam_r = lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64).item()
    if cfg.restart_mode == "frontier":
        return objective(f, ce, stratified_penalties(lam_r, lo, hi, M)).argmax(dim=1), lam_r
    value = objective(f, ce, torch.tensor([lam_r]))[0]                       # (P,)
    if cfg.restart_mode == "distinct":
        assert ids is not None, "restart_mode distinct compares the pool's prompts"
        return distinct_best(value, ce, ids, M), lam_r
    return value.argmax().repeat(M), lam_r


def stratified_penalties(lam_r: float, lo: float, hi: float, M: int) -> torch.Tensor:
    """(M,) ascending: lam_r + j (hi - lo) / M for j < M, wrapped into [lo, hi). Each is
    uniform on [lo, hi] when lam_r is, and every 1/M-th of the range holds exactly one."""
    if hi == lo:
        return torch.full((M,), float(lo))
    u = (lam_r - lo) / (hi - lo)
    frac = np.sort(np.mod(u + np.arange(M) / M, 1.0))
    return torch.tensor(lo + frac * (hi - lo), dtype=torch.float32)


def distinct_best(value: torch.Tensor, ce: torch.Tensor, ids, M: int) -> torch.Tensor:
    """(P,) objective (`objective`), (P,) CE, P prompts -> (M,) indices of the M best distinct
    prompts with a finite objective (ties to the lower index), sorted by CE descending so that
    slot M-1, the highest penalty, takes the most fluent. Too few valid prompts: picks repeat,
    best first."""
    picks, seen = [], set()
    for i in torch.argsort(value, descending=True, stable=True).tolist():
        if len(picks) == M:
            break
        key = tuple(int(t) for t in ids[i])
        if torch.isfinite(value[i]) and key not in seen:
            seen.add(key)
            picks.append(i)
    if not picks:                             # nothing valid: what collapse keeps (argmax)
        return value.argmax().repeat(M)
    picks = [picks[j % len(picks)] for j in range(M)]
    order = sorted(range(M), key=lambda j: (-float(ce[picks[j]]), j))
    return torch.tensor([picks[j] for j in order])


def replay_memo(scorer: Scorer, hist: History, M: int, which: int = 0) -> None:
    """The scorer's memo is loop state too: refill it with the score() calls of the saved
    iterations, in order (the initial prompts, then each iteration's children)."""
    for t in range(len(hist)):
        ids = torch.from_numpy(hist.ids[t].astype(np.int64))    # (P, W): M parents, then children
        rows = [slice(0, M), slice(M, None)] if t == 0 else [slice(M, None)]
        for r in rows:
            scorer.remember(ids[r], hist.target[t][r], hist.xentropy[t][r],
                            which=torch.full((len(ids[r]),), which))
