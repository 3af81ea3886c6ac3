"""Running the published reference implementation (Confirm-Solutions/dreamy, given by path and
never vendored) on fluentdream's targets, for the benchmarks that race it (time_to_quality.py)
or take it apart (ablation.py).

    module = load_reference("/tmp/dreamy")            # git clone .../Confirm-Solutions/dreamy
    raw, seconds = run_reference(module, lm, target, cfg, stamps=[])
    hist = to_history(raw, cfg.lambdas, fd.Scorer(lm, target, retokenize=False))

The reference optimizes fluentdream's target through `ReferenceObjective`, its `cache_run`: the
same hooks and target definition, and the rejection rules it is given (banned goal text, and
retokenization only where asked: the reference as published knows no such rule), so its values
equal `Scorer.score`. Its History converts to a fluentdream History (`to_history`), on which the
judge (benchmarks/judge.py) applies fluentdream's rules to every candidate.

The reference's quirks, worked around and not fixed: its `callback` is called with `final=True`
(and its `callback=False` stops at iteration 0), so a callback taking **kwargs is passed; it
prints a line at every restart (silenced); its restart keeps the pool member that is best at
lambda = restart_xentropy (2.0) whatever lambda it draws; its gradient for row i uses the penalty
of slot i in row order, so prompts new to the population take the lowest penalties; it seeds
torch's global RNG.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import fluentdream as fd
from fluentdream.core.scoring import Scorer
from fluentdream.core.scoring.hooks import capture


class ReferenceObjective:
    """The reference's `cache_run` for a fluentdream target on `lm`.

    Called with input_ids (B, n) or inputs_embeds (B, n, d); returns {"target": (B,) float32,
    "logits": (B, n, V)}. Prompts given as ids that the rules reject score -inf, as in
    `Scorer.score`; embeddings (the reference's gradient pass) carry no text to check.
    fp32_logits: the logits, and so the reference's CE and the CE in its gradient, in fp32 even
    when the model runs in bf16 (one of the reference's settings the speed pilot tries).
    """

    def __init__(self, lm, target: fd.Target, retokenize: bool = True, fp32_logits: bool = False):
        self.lm, self.target, self.fp32_logits = lm, target, fp32_logits
        self.rules = Scorer(lm, target, retokenize=retokenize)    # only its rejection rules

    def __call__(self, input_ids: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None) -> dict:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("cache_run takes exactly one of input_ids and inputs_embeds")
        with capture(self.lm, self.target.sites) as acts:
            out = self.lm.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        f = self.target.value(acts, out.logits).float()              # (B,)
        if input_ids is not None:
            bad = torch.from_numpy(self.rules.rejected(input_ids.cpu())).to(f.device)
            f = torch.where(bad, -torch.inf, f)
        return {"target": f, "logits": out.logits.float() if self.fp32_logits else out.logits}


def load_reference(path: str):
    """Import dreamy.epo from a checkout of Confirm-Solutions/dreamy at `path`."""
    root = Path(path).expanduser().resolve()
    if not (root / "dreamy" / "epo.py").is_file():
        raise fd.UserError(f"--reference {path!r} is not a checkout of Confirm-Solutions/dreamy; give "
                         "the folder that holds dreamy/epo.py")
    sys.path.insert(0, str(root))
    return importlib.import_module("dreamy.epo")


def _quiet(*args, **kwargs) -> None:
    """The reference's callback: never stops the run (it calls it with final=True at the end)."""


def _stamping(stamps: list) -> Callable:
    """A reference callback that never stops the run and appends (wall, process CPU) seconds
    each time it is called: before every iteration and once at the end, so the (T + 1) stamps
    bracket every iteration, its gradient pass included."""
    def callback(*args, **kwargs) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
    return callback


def run_reference(module, lm, target: fd.Target, cfg: fd.EPOConfig,
                  stamps: list | None = None, fp32_logits: bool = False) -> tuple[object, float]:
    """One reference run with cfg's settings -> (its History, wall seconds); `stamps`, if
    given, receives (wall, CPU) clock readings at the start, before each iteration and at the
    end: T + 2 of them, the end of iteration t (1-based) at stamps[t + 1]."""
    lo, hi = cfg.restart_xentropy_min, cfg.restart_xentropy_max
    t0 = time.perf_counter()
    if stamps is not None:
        stamps.append((t0, time.process_time()))
    with contextlib.redirect_stdout(io.StringIO()):          # it prints every restart
        hist = module.epo(
            ReferenceObjective(lm, target, cfg.retokenize, fp32_logits), lm.model, lm.tokenizer,
            seq_len=cfg.seq_len, population_size=cfg.population_size, iters=cfg.iters,
            explore_per_pop=cfg.explore_per_pop, batch_size=cfg.batch_size, topk=cfg.topk,
            x_penalty_min=cfg.x_penalty_min, x_penalty_max=cfg.x_penalty_max,
            restart_frequency=cfg.restart_frequency,
            # its restart range is [c / m, c * m]: c = sqrt(lo * hi), m = sqrt(hi / lo)
            restart_xentropy=math.sqrt(lo * hi), restart_xentropy_max_mult=math.sqrt(hi / lo),
            seed=cfg.seed, callback=_quiet if stamps is None else _stamping(stamps))
    return hist, time.perf_counter() - t0


def to_history(ref_hist, lambdas: np.ndarray, rules: Scorer) -> fd.History:
    """The reference's History (ids (T, P, n), target/xentropy (T, P), keep (T, M), runtime (T,))
    -> a fluentdream History; prompts `rules` rejects get target -inf and CE nan, as ours do."""
    ids = np.asarray(ref_hist.ids)
    T, P, n = ids.shape
    flat = torch.from_numpy(ids.reshape(T * P, n).astype(np.int64))
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    bad = torch.from_numpy(rules.rejected(uniq))[inverse].numpy().reshape(T, P)
    target = np.where(bad, -np.inf, np.asarray(ref_hist.target, dtype=np.float32))
    xentropy = np.where(bad, np.nan, np.asarray(ref_hist.xentropy, dtype=np.float32))
    hist = fd.History(lambdas=np.asarray(lambdas, dtype=np.float64),
                      meta=dict(implementation="reference"))
    for t in range(T):
        hist.append(ids[t], target[t], xentropy[t], ref_hist.keep[t], np.nan,
                    ref_hist.runtime[t], P - len(lambdas))
    return hist


def checkout_sha(path) -> str | None:
    """The commit checked out at `path`, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
