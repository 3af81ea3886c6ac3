"""Many EPO runs on one model in lockstep, sharing forward passes (DESIGN §10).

    jobs = [(target, fd.EPOConfig(seed=s)) for s in range(5)]           # seeds, directions, ...
    hists = fd.batched.epo_many(lm, jobs)                                  # one History per job

Every run keeps its own generator, population, penalties and History, and draws its random numbers
in the same order as `fd.epo`, so each History is the one `fd.epo` gives for that job alone, up to
floating-point rounding from different batch compositions. Per iteration, the slots that need new
gradients (in all runs) share one gradient pass, and the children of all runs are scored by one
multi-target Scorer: one packed forward pass per batch, one set of captured activations read by
every target, and one memo for runs that share a target. A run's `seconds` is its share of the
iteration's wall time.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from .config import EPOConfig
from .epo import IterationReport, check_run, initial_prompts, mutate, restart, select
from .errors import UserError
from .evaluate import Scorer, allowed_tokens
from .history import EPOState, History
from .targets import Target


def _target_index(targets: list[Target], target: Target) -> int:
    """Position of `target` among `targets` (equal targets share one memo), appending if new."""
    for i, known in enumerate(targets):
        if known is target or (type(known) is type(target) and known == target):
            return i
    targets.append(target)
    return len(targets) - 1


def _check_jobs(lm, jobs) -> None:
    if not jobs:
        raise UserError("epo_many needs at least one (target, EPOConfig) job")
    first = jobs[0][1]
    for target, cfg in jobs:
        check_run(lm, cfg, target)
        if cfg.seq_len != first.seq_len or cfg.retokenize != first.retokenize:
            raise UserError("all jobs of one epo_many call need the same seq_len and retokenize "
                            f"(got {cfg.seq_len}/{cfg.retokenize} and {first.seq_len}/{first.retokenize}); "
                            "split them into separate calls")


def _propose_all(scorer: Scorer, runs: list[dict], allowed: torch.Tensor) -> None:
    """epo.propose for every run at once: one gradient pass over all stale slots."""
    stale = [np.flatnonzero(~run["state"].fresh) for run in runs]
    if sum(len(s) for s in stale) == 0:
        return
    ids = torch.cat([torch.from_numpy(run["state"].slot_ids[s]) for run, s in zip(runs, stale)])
    lams = torch.cat([run["lambdas"][s] for run, s in zip(runs, stale)])
    which = torch.cat([torch.full((len(s),), run["which"]) for run, s in zip(runs, stale)])
    grads = scorer.gradients(ids, lams, which)                            # (S, n, V)
    grads[..., ~allowed] = -torch.inf
    start = 0
    for run, s in zip(runs, stale):
        g = grads[start:start + len(s)]
        start += len(s)
        if len(s):
            run["state"].topk[s] = g.topk(run["cfg"].topk, dim=-1).indices.to(torch.int32).numpy()
            run["state"].fresh[s] = True


def _start(lm, target: Target, cfg: EPOConfig, which: int, fluency) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = initial_prompts(lm, cfg, gen)
    M, n = ids.shape
    state = EPOState(iteration=0, slot_ids=ids.numpy(), slot_target=np.zeros(M, np.float32),
                     slot_xentropy=np.zeros(M, np.float32), topk=np.zeros((M, n, cfg.topk), np.int32),
                     fresh=np.zeros(M, bool), rng_state=gen.get_state().numpy())
    hist = History(lambdas=cfg.lambdas.copy(), meta=dict(
        config=cfg.to_dict(), target=target.name, model=lm.name,
        fluency_model=(fluency or lm).name, batched=True))
    return dict(target=target, cfg=cfg, gen=gen, state=state, hist=hist, which=which,
                lambdas=torch.tensor(cfg.lambdas, dtype=torch.float32), best=-np.inf)


def _finish_iteration(run: dict, children, f_kids, ce_kids, seconds: float) -> IterationReport:
    """Steps 4-8 of DESIGN §4 for one run, exactly as in fd.epo."""
    state, cfg, t = run["state"], run["cfg"], run["state"].iteration
    M = cfg.population_size
    pool = torch.cat([torch.from_numpy(state.slot_ids), children])
    f = torch.cat([torch.from_numpy(state.slot_target), f_kids])
    ce = torch.cat([torch.from_numpy(state.slot_xentropy), ce_kids])
    kept = select(f, ce, run["lambdas"])
    lam_r = float("nan")
    if cfg.restart_frequency and t % cfg.restart_frequency == 0:
        kept, lam_r = restart(f, ce, M, cfg, run["gen"])
    state.fresh &= (kept == torch.arange(M)).numpy()
    state.slot_ids = pool[kept].numpy()
    state.slot_target, state.slot_xentropy = f[kept].numpy(), ce[kept].numpy()
    state.iteration, state.rng_state = t + 1, run["gen"].get_state().numpy()
    run["hist"].append(pool.numpy(), f.numpy(), ce.numpy(), kept.numpy(), lam_r, seconds, len(children))
    run["hist"].state = state
    finite = f[torch.isfinite(f)]      # parents too: iteration 0's are new candidates
    run["best"] = max(run["best"], float(finite.max())) if len(finite) else run["best"]
    return IterationReport(t, state.slot_target.copy(), state.slot_xentropy.copy(), run["best"],
                           None if np.isnan(lam_r) else lam_r, seconds, len(children), run["hist"])


def epo_many(lm, jobs: Sequence[tuple[Target, EPOConfig]], *, fluency=None,
             callback: Callable[[int, IterationReport], bool | None] | None = None,
             scorer: Scorer | None = None) -> list[History]:
    """Run every (target, cfg) job in lockstep; returns their Histories in job order.

    callback(job_index, report) after each job's iteration; returning True stops that job.
    """
    jobs = list(jobs)
    _check_jobs(lm, jobs)
    targets: list[Target] = []
    which = [_target_index(targets, target) for target, _ in jobs]
    cfg0 = jobs[0][1]
    scorer = scorer or Scorer(lm, targets, fluency, max(c.batch_size for _, c in jobs), cfg0.retokenize)
    runs = [_start(lm, target, cfg, w, fluency) for (target, cfg), w in zip(jobs, which)]
    ids = torch.cat([torch.from_numpy(run["state"].slot_ids) for run in runs])
    f, ce = scorer.score(ids, which=torch.cat([torch.full((run["cfg"].population_size,), run["which"])
                                               for run in runs]))
    start = 0
    for run in runs:
        M = run["cfg"].population_size
        run["state"].slot_target = f[start:start + M].numpy()
        run["state"].slot_xentropy = ce[start:start + M].numpy()
        start += M
    allowed = allowed_tokens(lm)
    active = [i for i, run in enumerate(runs) if run["cfg"].iters > 0]
    while active:
        t0 = time.perf_counter()
        live = [runs[i] for i in active]
        _propose_all(scorer, live, allowed)
        kids = [mutate(run["state"], run["cfg"].explore_per_pop, run["gen"]) for run in live]
        parents = [torch.from_numpy(run["state"].slot_ids).repeat_interleave(run["cfg"].explore_per_pop, 0)
                   for run in live]
        which_rows = torch.cat([torch.full((len(k),), run["which"]) for k, run in zip(kids, live)])
        f, ce = scorer.score(torch.cat(kids), parents=torch.cat(parents), which=which_rows)
        seconds = (time.perf_counter() - t0) / len(live)
        start, still = 0, []
        for i, run, children in zip(active, live, kids):
            B = len(children)
            report = _finish_iteration(run, children, f[start:start + B], ce[start:start + B], seconds)
            start += B
            stop = callback is not None and callback(i, report)
            if not stop and run["state"].iteration < run["cfg"].iters:
                still.append(i)
        active = still
    return [run["hist"] for run in runs]
