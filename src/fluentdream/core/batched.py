"""Many EPO runs on one model in lockstep, sharing forward passes (DESIGN §10).

    jobs = [(target, fd.EPOConfig(seed=s)) for s in range(5)]           # seeds, directions, ...
    hists = fd.batched.epo_many(lm, jobs)                                  # one History per job

This is the EPO engine: `fd.epo` is one job of it, so propose -> mutate -> evaluate -> select ->
restart and the bookkeeping exist once. Every run keeps its own generator, population, penalties
and History, so each History is the one `fd.epo` gives for that job alone, up to floating-point
rounding from different batch compositions. Per iteration, the slots that need new
gradients (in all runs) share one gradient pass, and the children of all runs are scored by one
multi-target Scorer: one packed forward pass per batch, one set of captured activations read by
every target, and one memo for runs that share a target. A run's `seconds` is its share of the
iteration's wall time.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..targets.kinds import Target
from .checks import check_run
from .config import EPOConfig
from .context import Context
from .history import EPOState, History
from .operators import mutate
from .ragged import widen
from .scoring.scorer import Scorer
from .steps import initial_prompts, propose_many, replay_memo, restart, select
from .tokens import allowed_tokens, retokenizes


@dataclasses.dataclass
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


def _same(a: Target, b: Target) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _target_index(targets: list[Target], target: Target) -> int:
    """Position of `target` among `targets` (equal targets share one memo), appending if new."""
    for i, known in enumerate(targets):
        if _same(known, target):
            return i
    targets.append(target)
    return len(targets) - 1


def _reuse(scorer: Scorer, lm, fluency, cfg: EPOConfig, context: Context,
           targets: list[Target]) -> list[int]:
    """Each job's target index in a given scorer, after checking that the scorer computes what
    these jobs ask for (its model, fluency model, retokenize rule, context and targets); a
    UserError names the first difference."""
    same = [("model", scorer.lm is lm, "another model"),
            ("fluency model", scorer.fluency is (fluency if fluency is not None else lm),
             "another fluency model"),
            ("retokenize rule", scorer.retokenize == cfg.retokenize,
             f"retokenize={scorer.retokenize}, the config's {cfg.retokenize}"),
            ("context", scorer.context == context,
             f"context {scorer.context}, the config's prefix and suffix {context}")]
    for what, ok, detail in same:
        if not ok:
            raise UserError(f"the given scorer was built for {detail}; build a new Scorer for "
                            f"this {what} (or leave scorer=None)")
    which = []
    for target in targets:
        known = [i for i, t in enumerate(scorer.targets) if _same(t, target)]
        if not known:
            raise UserError(f"the given scorer scores {', '.join(t.name for t in scorer.targets)}, "
                            f"not {target.name}; build a Scorer for this target (or leave "
                            "scorer=None)")
        which.append(known[0])
    return which


def _check_jobs(lm, jobs) -> None:
    if not jobs:
        raise UserError("epo_many needs at least one (target, EPOConfig) job")
    first = jobs[0][1]
    for target, cfg in jobs:
        check_run(lm, cfg, target)
        shared = ("seq_len", "retokenize", "prefix", "suffix")   # one Scorer serves every job
        differ = [k for k in shared if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise UserError(f"all jobs of one epo_many call need the same {', '.join(shared)}; "
                            f"these differ: {', '.join(differ)}; split them into separate calls")


def _start(lm, target: Target, cfg: EPOConfig, which: int, fluency,
           resume: History | None, context: Context) -> dict:
    """One run's loop variables: a new run (initial prompts drawn, not yet scored) or `resume`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    ids_of = dict(prefix_ids=list(context.prefix), suffix_ids=list(context.suffix))
    if resume is not None:
        if resume.state is None:
            raise UserError("this History has no saved loop state to resume from")
        saved = {k: resume.meta.get(k, []) for k in ids_of}
        if saved != ids_of:
            raise UserError(f"cannot resume: the History was made with prefix/suffix tokens "
                            f"{saved}, this config gives {ids_of}; resume with the same "
                            "prefix and suffix")
        gen.set_state(torch.from_numpy(np.asarray(resume.state.rng_state, dtype=np.uint8)))
        hist, state = resume, resume.state
    else:
        ids = initial_prompts(lm, cfg, gen)
        M, W = ids.shape
        slots = W + 1 if "insert" in cfg.operators else 0      # no insertion state otherwise
        state = EPOState(iteration=0, slot_ids=ids.numpy(), slot_target=np.zeros(M, np.float32),
                         slot_xentropy=np.zeros(M, np.float32),
                         topk=np.zeros((M, W, cfg.topk), np.int32), fresh=np.zeros(M, bool),
                         rng_state=gen.get_state().numpy(),
                         next_ids=np.zeros((M, slots, cfg.topk), np.int32),
                         next_probs=np.zeros((M, slots, cfg.topk), np.float32))
        hist = History(lambdas=cfg.lambdas.copy(), meta=dict(
            config=cfg.to_dict(), target=target.name, model=lm.name,
            fluency_model=(fluency or lm).name, **ids_of))
    return dict(target=target, cfg=cfg, gen=gen, state=state, hist=hist, which=which,
                lambdas=torch.tensor(cfg.lambdas, dtype=torch.float32), best=hist.best_target(),
                new=resume is None, tokenizer=lm.tokenizer)


def _finish_iteration(run: dict, children, f_kids, ce_kids, seconds: float,
                      counts: tuple[int, int]) -> IterationReport:
    """Steps 4-8 of DESIGN §4 for one run: evaluate the pool, select, restart, record."""
    old, cfg, t = run["state"], run["cfg"], run["state"].iteration
    M = cfg.population_size
    pool = torch.cat([torch.from_numpy(old.slot_ids), children])              # (P, W)
    f = torch.cat([torch.from_numpy(old.slot_target), f_kids])                # (P,)
    ce = torch.cat([torch.from_numpy(old.slot_xentropy), ce_kids])
    kept = select(f, ce, run["lambdas"])
    lam_r = float("nan")
    if cfg.restart_frequency and t % cfg.restart_frequency == 0:
        kept, lam_r = restart(f, ce, M, cfg, run["gen"], pool)
    # A new state object, so an interrupt before hist.state is set leaves the old one whole.
    state = EPOState(iteration=t + 1, slot_ids=pool[kept].numpy(), slot_target=f[kept].numpy(),
                     slot_xentropy=ce[kept].numpy(), topk=old.topk,
                     fresh=old.fresh & (kept == torch.arange(M)).numpy(),  # gradients survive in place
                     rng_state=run["gen"].get_state().numpy(), next_ids=old.next_ids,
                     next_probs=old.next_probs)
    valid = reportable(run["tokenizer"], pool, f, ce, cfg.retokenize)
    run["hist"].append(pool.numpy(), f.numpy(), ce.numpy(), kept.numpy(), lam_r, seconds, *counts,
                       valid=valid)
    run["hist"].state = run["state"] = state
    shown = f.numpy()[valid]           # parents too: iteration 0's are new candidates
    run["best"] = max(run["best"], float(shown.max())) if len(shown) else run["best"]
    return IterationReport(t, state.slot_target.copy(), state.slot_xentropy.copy(), run["best"],
                           None if np.isnan(lam_r) else lam_r, seconds, counts[0], run["hist"])


def reportable(tokenizer, pool: torch.Tensor, f: torch.Tensor, ce: torch.Tensor,
               retokenize: bool) -> np.ndarray:
    """(P, W) pool, (P,) scores -> (P,) bool: the candidates a run may report (History.valid):
    scored (not rejected), and with retokenize decoding to text that encodes back to them. The
    scorer rejects the others already, so the search never holds them; checked again here, at
    the one place that says what a run reports (and where an ablation passes through them)."""
    ok = (torch.isfinite(f) & torch.isfinite(ce)).numpy()
    if retokenize and ok.any():
        rows = np.flatnonzero(ok)
        ok[rows] = retokenizes(tokenizer, pool[rows])
    return ok


def _score_initial(scorer: Scorer, runs: list[dict]) -> None:
    """Score the random starting prompts of every new run in one call; refill the memo of every
    resumed run with its saved scores (steps.replay_memo), so it continues exactly."""
    new = [run for run in runs if run["new"]]
    if new:
        W = max(run["state"].slot_ids.shape[1] for run in new)       # runs' max_len may differ
        f, ce, _ = scorer.score_counted(
            torch.cat([widen(torch.from_numpy(run["state"].slot_ids), W) for run in new]),
            which=torch.cat([torch.full((run["cfg"].population_size,), run["which"])
                             for run in new]))
        start = 0
        for run in new:
            M = run["cfg"].population_size
            run["state"].slot_target = f[start:start + M].numpy()
            run["state"].slot_xentropy = ce[start:start + M].numpy()
            start += M
    for run in runs:
        if not run["new"]:
            replay_memo(scorer, run["hist"], run["cfg"].population_size, run["which"])


def _iterate(scorer: Scorer, live: list[dict], allowed: torch.Tensor) -> list[IterationReport]:
    """One EPO iteration of every live run: propose -> mutate -> evaluate (one scoring call for
    all runs' children) -> select and restart (per run)."""
    t0 = time.perf_counter()
    propose_many(scorer, [(run["state"], run["lambdas"], run["cfg"].topk, run["which"])
                          for run in live], allowed)
    kids = [mutate(run["state"], run["cfg"].explore_per_pop, run["gen"], run["cfg"])
            for run in live]
    parents = [torch.from_numpy(run["state"].slot_ids).repeat_interleave(run["cfg"].explore_per_pop, 0)
               for run in live]
    which = torch.cat([torch.full((len(k),), run["which"]) for k, run in zip(kids, live)])
    W = max(k.shape[1] for k in kids)                                 # runs' max_len may differ
    f, ce, computed = scorer.score_counted(torch.cat([widen(k, W) for k in kids]),
                                           parents=torch.cat([widen(p, W) for p in parents]),
                                           which=which)
    memo = ~computed & torch.isfinite(ce).numpy()       # looked up: neither computed nor rejected
    seconds = (time.perf_counter() - t0) / len(live)
    reports, start = [], 0
    for run, children in zip(live, kids):
        rows = slice(start, start + len(children))
        counts = int(computed[rows].sum()), int(memo[rows].sum())
        reports.append(_finish_iteration(run, children, f[rows], ce[rows], seconds, counts))
        start += len(children)
    return reports


def epo_many(lm, jobs: Sequence[tuple[Target, EPOConfig]], *, fluency=None,
             callback: Callable[[int, IterationReport], bool | None] | None = None,
             scorer: Scorer | None = None,
             resume: Sequence[History | None] | None = None) -> list[History]:
    """Run every (target, cfg) job in lockstep; returns their Histories in job order.

    callback(job_index, report) after each job's iteration; returning True stops that job.
    resume: per job, a saved History to continue (or None). Ctrl-C returns every History as far
    as it got, the unfinished ones with meta["interrupted"] = True, resumable.
    """
    jobs = list(jobs)
    _check_jobs(lm, jobs)
    resume = list(resume) if resume is not None else [None] * len(jobs)
    cfg0 = jobs[0][1]
    context = Context.of(lm, cfg0)
    if scorer is None:
        targets: list[Target] = []
        which = [_target_index(targets, target) for target, _ in jobs]
        scorer = Scorer(lm, targets, fluency, max(c.batch_size for _, c in jobs),
                        cfg0.retokenize, context=context)
    else:
        which = _reuse(scorer, lm, fluency, cfg0, context, [target for target, _ in jobs])
    runs = [_start(lm, target, cfg, w, fluency, saved, context)
            for (target, cfg), w, saved in zip(jobs, which, resume)]
    _score_initial(scorer, runs)
    allowed = allowed_tokens(lm)
    active = [i for i, run in enumerate(runs) if run["state"].iteration < run["cfg"].iters]
    try:
        while active:
            reports = _iterate(scorer, [runs[i] for i in active], allowed)
            still = []
            for i, report in zip(active, reports):
                stop = callback is not None and callback(i, report)
                if not stop and runs[i]["state"].iteration < runs[i]["cfg"].iters:
                    still.append(i)
            active = still
    except KeyboardInterrupt:
        for i in active:
            hist = runs[i]["hist"]
            hist.meta["interrupted"] = True
            if hist.state is not None:   # drop an iteration appended after its state was saved
                hist.trim(hist.state.iteration)
    return [run["hist"] for run in runs]
