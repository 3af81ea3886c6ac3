"""The arms of benchmarks/ablation.py: what each one changes in fluentdream's defaults, and how.
Settings change through the config (arm_config); steps that are not settings are replaced in this
process only, for the duration of one run (`patched`), never in the library."""
from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import torch

import fluentdream as fd
from fluentdream.core import batched
from fluentdream.core import steps as epo_steps
from fluentdream.core.scoring import Scorer
from fluentdream.core.tokens import decode

ARMS = {
    "reference": "the published reference code, fp32, its own search (no retokenization rule)",
    "defaults": "fluentdream's defaults: bf16 (fd.fast_dtype); prompts that do not retokenize "
                "are rejected in the search",
    "pass-through": "the search passes through prompts that do not retokenize and the run reports "
                    "only those that do (the rule from a898f3e to the restored rejection)",
    "no-retokenize": "no retokenization rule at all (judged with it)",
    "fp32": "the model in fp32",
    "fixed-restart": "restarts select at the fixed penalty 2.0, the reference's",
    "no-label-term": "the proposal gradient without CE's label term",
    "all-tokens": "every token may be proposed (the reference ranks the whole vocabulary)",
    "vocab-init": "initial prompts drawn from the whole vocabulary, unchecked (the reference's)",
    "row-lambda": "prompts new to slots take gradients at the lowest penalties in row order "
                  "(the reference's), not at their slot's",
}


class NoLabelScorer(Scorer):
    """A Scorer whose proposal gradient leaves out CE's label term, the lambda * log p(v | x<p)
    / (n - 1) that fluentdream.core.scoring.gradients adds (paper §2): fixed-length runs without a context."""

    def gradients(self, ids, lambdas, which=None, next_logprobs=None):
        n = ids.shape[1]
        logp = torch.empty(len(ids), n + 1, self.lm.vocab_size)
        g = super().gradients(ids, lambdas, which, next_logprobs=logp)   # (M, n, V)
        g[:, 1:] -= lambdas.float()[:, None, None] * logp[:, 1:n] / (n - 1)
        if next_logprobs is not None:
            next_logprobs[:] = logp
        return g


def row_lambda(propose_many):
    """propose_many giving the prompts new to their slots the lowest penalties in row order."""
    def wrapped(scorer, runs, allowed):
        swapped = []
        for state, lambdas, k, which in runs:
            stale = np.flatnonzero(~state.fresh)
            lam = lambdas.clone()
            lam[stale] = lambdas[:len(stale)]
            swapped.append((state, lam, k, which))
        return propose_many(scorer, swapped, allowed)
    return wrapped


def banned_only(self, ids, which=None):
    """Scorer.rejected without the retokenization rule: the search scores and may hold prompts
    that do not retokenize; batched.reportable still keeps them out of what the run reports."""
    return self.banned(decode(self.lm.tokenizer, ids), which)


@contextlib.contextmanager
def patched(arm: str, lm):
    """fluentdream's steps as `arm` has them, for the duration of one run."""
    every = torch.ones(lm.vocab_size, dtype=torch.bool)
    with contextlib.ExitStack() as stack:
        if arm == "all-tokens":
            stack.enter_context(mock.patch.object(batched, "allowed_tokens", lambda _: every))
        if arm == "vocab-init":
            drawable = torch.zeros(lm.vocab_size, dtype=torch.bool)
            drawable[:len(lm.tokenizer)] = True
            stack.enter_context(mock.patch.object(epo_steps, "drawable_tokens", lambda _: drawable))
            stack.enter_context(mock.patch.object(epo_steps, "retokenizes",
                                                  lambda tok, ids, texts=None: np.ones(len(ids), bool)))
        if arm == "pass-through":
            stack.enter_context(mock.patch.object(Scorer, "rejected", banned_only))
        if arm == "row-lambda":
            stack.enter_context(mock.patch.object(batched, "propose_many",
                                                  row_lambda(batched.propose_many)))
        yield


def arm_config(arm: str, cfg: fd.EPOConfig) -> fd.EPOConfig:
    if arm in ("no-retokenize", "reference"):
        return cfg.replace(retokenize=False)
    if arm == "fixed-restart":
        return cfg.replace(restart_xentropy_min=2.0, restart_xentropy_max=2.0)
    return cfg
