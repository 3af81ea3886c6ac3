"""EPO, Evolutionary Prompt Optimization (paper §2, DESIGN §4), and GCG as its special case.

    hist = fd.epo(lm, fd.parse_target("L1.N5", lm), fd.EPOConfig(seed=0))
    hist = fd.gcg(lm, target, fd.EPOConfig(iters=100))        # M = 1, lambda = 0

One iteration: propose (gradients, only for prompts new to their slot) -> mutate (r one-token
children per member) -> evaluate (forward only) -> select (per slot, with replacement, from parents
plus children) -> restart (every `restart_frequency` iterations, iteration 0 included).
A callback receives an `IterationReport` after every iteration and may return True to stop.
Ctrl-C returns the iterations done so far (history.meta["interrupted"] = True), resumable.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import EPOConfig
from .errors import UserError
from .evaluate import Scorer, allowed_tokens, drawable_tokens, retokenizes
from .history import EPOState, History
from .models import DTYPES
from .progress import ProgressBar, interactive
from .targets import Target

log = logging.getLogger(__name__)


@dataclass
class IterationReport:
    """What the callback sees after each iteration."""
    iteration: int
    slot_target: np.ndarray      # (M,)
    slot_xentropy: np.ndarray    # (M,)
    best_target: float           # best finite target of any candidate so far
    restart_lambda: float | None
    seconds: float
    n_scored: int
    history: History             # the run so far; history.state resumes after this iteration


Callback = Callable[[IterationReport], bool | None]


def initial_prompts(lm, cfg: EPOConfig, gen: torch.Generator) -> torch.Tensor:
    """(M, n) starting prompts: cfg.initial_prompt for all, or random drawable tokens (evaluate.drawable_tokens)."""
    M, n = cfg.population_size, cfg.seq_len
    if cfg.initial_prompt is not None:
        ids = lm.tokenizer.encode(cfg.initial_prompt, add_special_tokens=False)
        if len(ids) != n:
            raise UserError(f"initial_prompt encodes to {len(ids)} tokens; seq_len is {n}")
        return torch.tensor(ids).repeat(M, 1)
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
    return torch.stack(rows)


def propose(scorer: Scorer, state: EPOState, lambdas: torch.Tensor, allowed: torch.Tensor,
            k: int) -> None:
    """Refresh top-k candidate tokens (M, n, k) for slots whose prompt is new to them (step 2, 7)."""
    stale = np.flatnonzero(~state.fresh)
    if len(stale) == 0:
        return
    ids = torch.from_numpy(state.slot_ids[stale])
    grad = scorer.gradients(ids, lambdas[stale])                  # (S, n, V)
    grad[..., ~allowed] = -torch.inf
    state.topk[stale] = grad.topk(k, dim=-1).indices.to(torch.int32).numpy()
    state.fresh[stale] = True


def mutate(state: EPOState, r: int, gen: torch.Generator) -> torch.Tensor:
    """(M*r, n) children: one uniform position, one uniform token of its top-k (step 3)."""
    M, n, k = state.topk.shape
    parents = torch.from_numpy(state.slot_ids).repeat_interleave(r, dim=0)  # (M*r, n)
    pos = torch.randint(n, (M * r,), generator=gen)
    choice = torch.randint(k, (M * r,), generator=gen)
    slot = torch.arange(M).repeat_interleave(r)
    tokens = torch.from_numpy(state.topk)[slot, pos, choice].long()
    children = parents.clone()
    children[torch.arange(M * r), pos] = tokens
    return children


def objective(f: torch.Tensor, ce: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(P,), (P,), (L,) -> (L, P): f - lambda * CE; -inf for rejected candidates and for any
    whose f or CE is not finite (argmax would take NaN as the largest value)."""
    value = f[None, :] - lam[:, None] * ce[None, :]
    return torch.where((torch.isfinite(f) & torch.isfinite(ce))[None, :], value, -torch.inf)


def select(f: torch.Tensor, ce: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """(P,), (P,), (M,) -> (M,) pool index maximizing each slot's objective, with replacement
    (step 5). Ties go to the lowest index, so a parent is kept over an equal child."""
    return objective(f, ce, lambdas).argmax(dim=1)


def restart(f: torch.Tensor, ce: torch.Tensor, M: int, cfg: EPOConfig,
            gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Every slot takes the pool member maximizing f - lambda_r * CE, lambda_r ~ U[min, max]
    (step 6). The reference code draws lambda_r and then uses 2.0; we use the draw (LOG.md)."""
    lo, hi = cfg.restart_xentropy_min, cfg.restart_xentropy_max
    lam_r = lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64).item()
    best = objective(f, ce, torch.tensor([lam_r]))[0].argmax()
    return best.repeat(M), lam_r


def _new_state(lm, cfg: EPOConfig, scorer: Scorer, gen: torch.Generator) -> EPOState:
    ids = initial_prompts(lm, cfg, gen)
    f, ce = scorer.score(ids)
    M, n = ids.shape
    return EPOState(iteration=0, slot_ids=ids.numpy(), slot_target=f.numpy(),
                    slot_xentropy=ce.numpy(), topk=np.zeros((M, n, cfg.topk), np.int32),
                    fresh=np.zeros(M, bool), rng_state=gen.get_state().numpy())


def check_run(lm, cfg: EPOConfig, target: Target) -> None:
    """Raise UserError for settings that cannot run on `lm`, before anything is computed."""
    from .checks import check_prompt_length
    if cfg.dtype is not None and lm.dtype != DTYPES[cfg.dtype]:
        raise UserError(f"cfg.dtype is {cfg.dtype} but the model is {lm.dtype}; load it with "
                        f"fd.load_model(..., dtype={cfg.dtype!r}) or set dtype=None")
    if cfg.device is not None and lm.device.type != torch.device(cfg.device).type:
        raise UserError(f"cfg.device is {cfg.device} but the model is on {lm.device}")
    if cfg.topk > int(allowed_tokens(lm).sum()):
        raise UserError(f"topk={cfg.topk} exceeds the {int(allowed_tokens(lm).sum())} usable tokens")
    target.validate(lm)
    if hasattr(target, "check_seq_len"):
        target.check_seq_len(cfg.seq_len)
    check_prompt_length(lm, cfg.seq_len, random_draw=cfg.retokenize and cfg.initial_prompt is None)
    if cfg.initial_prompt is not None:
        initial_prompts(lm, cfg, torch.Generator())   # raises if it does not fit seq_len


def _replay_memo(scorer: Scorer, hist: History, M: int) -> None:
    """The scorer's memo is loop state too: refill it with the score() calls of the saved
    iterations, in order (the initial prompts, then each iteration's children)."""
    for t in range(len(hist)):
        ids = torch.from_numpy(hist.ids[t].astype(np.int64))    # (P, n): M parents, then children
        if t == 0:
            scorer.remember(ids[:M], hist.target[0][:M], hist.xentropy[0][:M])
        scorer.remember(ids[M:], hist.target[t][M:], hist.xentropy[t][M:])


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
    cfg = cfg or EPOConfig()
    check_run(lm, cfg, target)
    scorer = scorer or Scorer(lm, target, fluency, cfg.batch_size, cfg.retokenize)
    gen = torch.Generator().manual_seed(cfg.seed)
    lambdas = torch.tensor(cfg.lambdas, dtype=torch.float32)
    allowed = allowed_tokens(lm)
    M, r = cfg.population_size, cfg.explore_per_pop

    if resume is not None:
        if resume.state is None:
            raise UserError("this History has no saved loop state to resume from")
        hist, state = resume, resume.state
        gen.set_state(torch.from_numpy(np.asarray(state.rng_state, dtype=np.uint8)))
        _replay_memo(scorer, hist, M)
    else:
        hist = History(lambdas=cfg.lambdas.copy(), meta=dict(
            config=cfg.to_dict(), target=target.name, model=lm.name,
            fluency_model=(fluency or lm).name))
        state = _new_state(lm, cfg, scorer, gen)
    best = hist.best_target()
    bar = ProgressBar(cfg.iters, state.iteration, target.name) if (
        interactive() if progress is None else progress) else None

    try:
        for t in range(state.iteration, cfg.iters):
            t0 = time.perf_counter()
            propose(scorer, state, lambdas, allowed, cfg.topk)
            children = mutate(state, r, gen)
            parents = torch.from_numpy(state.slot_ids).repeat_interleave(r, dim=0)
            f_kids, ce_kids = scorer.score(children, parents=parents)   # reuses parent prefixes
            pool = torch.cat([torch.from_numpy(state.slot_ids), children])      # (P, n)
            f = torch.cat([torch.from_numpy(state.slot_target), f_kids])        # (P,)
            ce = torch.cat([torch.from_numpy(state.slot_xentropy), ce_kids])
            kept = select(f, ce, lambdas)
            lam_r = float("nan")
            if cfg.restart_frequency and t % cfg.restart_frequency == 0:
                kept, lam_r = restart(f, ce, M, cfg, gen)
            # A new state object, so an interrupt before hist.state is set leaves the old one whole.
            state = EPOState(
                iteration=t + 1, slot_ids=pool[kept].numpy(), slot_target=f[kept].numpy(),
                slot_xentropy=ce[kept].numpy(), topk=state.topk,
                fresh=state.fresh & (kept == torch.arange(M)).numpy(),  # gradients survive in place
                rng_state=gen.get_state().numpy())
            seconds = time.perf_counter() - t0
            hist.append(pool.numpy(), f.numpy(), ce.numpy(), kept.numpy(), lam_r, seconds,
                        len(children))
            hist.state = state
            finite = f[torch.isfinite(f)]      # parents too: iteration 0's are new candidates
            best = max(best, float(finite.max())) if len(finite) else best
            log.debug("iter %d best %.3f %.3fs", t, best, seconds)
            report = IterationReport(t, state.slot_target.copy(), state.slot_xentropy.copy(), best,
                                     None if np.isnan(lam_r) else lam_r, seconds, len(children), hist)
            if bar is not None:
                bar(report)
            if callback is not None and callback(report):
                break
    except KeyboardInterrupt:
        hist.meta["interrupted"] = True
        if hist.state is not None:   # drop an iteration appended after its state was saved
            hist.trim(hist.state.iteration)
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
