"""EPO, Evolutionary Prompt Optimization (paper §2, DESIGN §4), and GCG as its special case.

    hist = fd.epo(lm, fd.parse_target("L1.N5", lm), fd.EPOConfig(seed=0))
    hist = fd.gcg(lm, target, fd.EPOConfig(iters=100))        # M = 1, lambda = 0

One iteration: propose (gradients, only for prompts new to their slot) -> mutate (r children per
member, by the configured operators: fluentdream.core.operators) -> evaluate (forward only) -> select
(per slot, with replacement, from parents plus children) -> restart (every `restart_frequency`
iterations, iteration 0 included).
This module holds those steps; the loop that runs them is `fluentdream.core.batched.epo_many`, of which
`fd.epo` is one job. A callback receives an `IterationReport` after every iteration and may return
True to stop. Ctrl-C returns the iterations done so far (history.meta["interrupted"] = True),
resumable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import EPOConfig
from .context import Context
from ..errors import UserError
from .scoring.scorer import Scorer
from .tokens import allowed_tokens, drawable_tokens, retokenizes
from .history import EPOState, History
from ..models.load import DTYPES
from .operators import insertion_table, mutate  # noqa: F401 - mutate: epo.mutate, as before
from .progress import ProgressBar, interactive
from .ragged import widen
from ..targets.kinds import Target


@dataclass
class IterationReport:
    """What the callback sees after each iteration."""
    iteration: int
    slot_target: np.ndarray      # (M,)
    slot_xentropy: np.ndarray    # (M,)
    best_target: float           # best finite target of any candidate so far
    restart_lambda: float | None
    seconds: float
    n_scored: int                # children the model computed this iteration (not looked up)
    history: History             # the run so far; history.state resumes after this iteration


Callback = Callable[[IterationReport], bool | None]


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
    """(P,) objective (epo.objective), (P,) CE, P prompts -> (M,) indices of the M best distinct
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


def check_run(lm, cfg: EPOConfig, target: Target) -> None:
    """Raise UserError for settings that cannot run on `lm`, before anything is computed."""
    from .checks import check_prompt_length
    context = Context.of(lm, cfg)        # raises for context text that encodes to no tokens
    if cfg.dtype not in (None, "auto") and lm.dtype != DTYPES[cfg.dtype]:
        raise UserError(f"cfg.dtype is {cfg.dtype} but the model is {lm.dtype}; load it with "
                        f"fd.load_model(..., dtype={cfg.dtype!r}) or set dtype='auto'")
    if cfg.device is not None and lm.device.type != torch.device(cfg.device).type:
        raise UserError(f"cfg.device is {cfg.device} but the model is on {lm.device}")
    if cfg.topk > int(allowed_tokens(lm).sum()):
        raise UserError(f"topk={cfg.topk} exceeds the {int(allowed_tokens(lm).sum())} usable tokens")
    target.validate(lm)
    shortest, longest = cfg.length_range
    if hasattr(target, "check_seq_len"):     # positions count in prefix + x + suffix
        target.check_seq_len(context.length(shortest))   # every length must hold the position
    check_prompt_length(lm, cfg.seq_len, random_draw=cfg.retokenize and cfg.initial_prompt is None,
                        fixed=context.P + context.S)
    if longest > cfg.seq_len:
        check_prompt_length(lm, longest, random_draw=False, fixed=context.P + context.S,
                            name="max_len")
    if cfg.initial_prompt is not None:
        initial_prompts(lm, cfg, torch.Generator())   # raises if it does not fit seq_len


def replay_memo(scorer: Scorer, hist: History, M: int, which: int = 0) -> None:
    """The scorer's memo is loop state too: refill it with the score() calls of the saved
    iterations, in order (the initial prompts, then each iteration's children)."""
    for t in range(len(hist)):
        ids = torch.from_numpy(hist.ids[t].astype(np.int64))    # (P, W): M parents, then children
        rows = [slice(0, M), slice(M, None)] if t == 0 else [slice(M, None)]
        for r in rows:
            scorer.remember(ids[r], hist.target[t][r], hist.xentropy[t][r],
                            which=torch.full((len(ids[r]),), which))


def epo(lm, target: Target, cfg: EPOConfig | None = None, callback: Callback | None = None, *,
        fluency=None, resume: History | None = None, scorer: Scorer | None = None,
        progress: bool | None = None) -> History:
    """Run EPO (paper §2) on `target` of `lm`; returns the History of every candidate.

    Args:
        lm: a LoadedModel (fd.load_model); its tokenizer decodes and retokenizes prompts.
        target: what to maximize, e.g. fd.parse_target("L1.N5", lm); validated against `lm`.
        cfg: EPOConfig (Table 1 defaults; help(fd.EPOConfig) documents every field).
        callback: called after every iteration with an IterationReport (iteration, each slot's
            target and CE, best target so far, restart lambda or None, seconds, candidates
            scored, and the History so far, whose .state resumes after that iteration); return
            True to stop early.
        fluency: a second LoadedModel with the same vocabulary that scores CE (default: `lm`).
        resume: a History saved with its loop state (History.load of a checkpoint): continues
            it to cfg.iters, giving the History an uninterrupted run of that seed gives.
        scorer: a Scorer to reuse (its memo) across calls; default: a new one.
        progress: show a progress bar on stderr; None = when a terminal or notebook shows it.

    Returns:
        History: ids (T, P, n), target and xentropy (T, P) of every pool member (M parents, then
        M*r children) of every iteration, kept (T, M), restart lambdas and seconds; its .state
        is the loop state after the last iteration. Ctrl-C returns the iterations done so far,
        with meta["interrupted"] = True, resumable.

    Raises fd.UserError (a ValueError) for settings that cannot run on `lm`.
    """
    from .batched import epo_many     # the engine; fd.epo is one run of it

    cfg = cfg or EPOConfig()
    show = interactive() if progress is None else progress
    bar = ProgressBar(cfg.iters, len(resume) if resume is not None else 0, target.name) if show else None

    def each(_, report: IterationReport) -> bool | None:
        if bar is not None:
            bar(report)
        return callback(report) if callback is not None else None
    try:
        hist, = epo_many(lm, [(target, cfg)], fluency=fluency, callback=each, scorer=scorer,
                         resume=[resume])
    finally:
        if bar is not None:
            bar.close()
    return hist


def gcg(lm, target: Target, cfg: EPOConfig | None = None, callback: Callback | None = None,
        **kwargs) -> History:
    """GCG = EPO with one member, no fluency penalty and no restarts (DESIGN §4)."""
    cfg = (cfg or EPOConfig()).replace(population_size=1, x_penalty_min=0.0, x_penalty_max=0.0,
                                       restart_frequency=0)
    return epo(lm, target, cfg, callback, **kwargs)
