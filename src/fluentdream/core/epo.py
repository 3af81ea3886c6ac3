"""EPO, Evolutionary Prompt Optimization (paper §2, DESIGN §4), and GCG as its special case.

    hist = fd.epo(lm, fd.parse_target("L1.N5", lm), fd.EPOConfig(seed=0))
    hist = fd.gcg(lm, target, fd.EPOConfig(iters=100))        # M = 1, lambda = 0

One iteration: propose (gradients, only for prompts new to their slot) -> mutate (r children per
member, by the configured operators: fluentdream.core.operators) -> evaluate (forward only) ->
select (per slot, with replacement, from parents plus children) -> restart (every
`restart_frequency` iterations, iteration 0 included). The steps are fluentdream.core.steps; the
loop that runs them is `fluentdream.core.batched.epo_many`, of which `fd.epo` is one job. A
callback receives an `IterationReport` after every iteration and may return True to stop. Ctrl-C
returns the iterations done so far (history.meta["interrupted"] = True), resumable.
"""
from __future__ import annotations

from typing import Callable

from ..targets.kinds import Target
from .batched import IterationReport, epo_many
from .config import EPOConfig
from .history import History
from .progress import ProgressBar, interactive
from .scoring.scorer import Scorer


Callback = Callable[[IterationReport], bool | None]


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
