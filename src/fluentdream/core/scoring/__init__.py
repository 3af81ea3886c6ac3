"""Scoring prompts: what the Scorer computes and how (paper §2, DESIGN §10).

    scorer = Scorer(lm, target)
    f, ce = scorer.score(ids)                 # target and CE of (B, n) prompts, no grad
    g = scorer.gradients(ids, lambdas)        # (M, n, V) proposal gradients

  scorer          the Scorer: score, score_counted, forward, gradients, remember, rejected
  packed_scoring  the packed pass over prompts not seen before (children reuse their parents)
  packed          packed attention: the plan, the attention function, token losses
  memo            prompts scored before, looked up instead of scored again
  forward         the models' own differentiable pass; xentropy
  gradients       the proposal gradient d(f - lambda * CE) / d one-hot
  chunks          batches that back off when memory runs out
  hooks           forward hooks that capture activations at the targets' sites

Part of core, below the EPO loop. Imports: core.context, core.tokens, core.ragged, targets,
models and the shared modules; never the rest of core, data, runs or cli.
"""
from .forward import xentropy
from .scorer import Scorer

__all__ = ["Scorer", "xentropy"]
