"""The models' own forward pass over whole prompts, differentiable: target values and CE of a
batch, with the context around it (fluentdream.core.context). Scorer.forward and the proposal
gradients (fluentdream.core.scoring.gradients) run it; scoring many children goes through the
packed pass instead (fluentdream.core.scoring.packed_scoring), which gives the same numbers up
to rounding.

    f, ce, logits = forward_logits(scorer, ids, None, which, None)   # (B,), (B,), (B, n - first, V)
    ce = xentropy(logits, ids)                                        # a plain HF forward's CE

CE is the mean next-token cross-entropy of the prompt's own tokens, computed in float32. With a
one-hot (or relaxed) encoding X, CE reads X as its labels too (paper §2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...targets.kinds import Target
from .hooks import capture


def xentropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, n, V), (B, n) -> (B,) mean CE of tokens 1..n-1 given their prefixes, in float32."""
    B, n, V = logits.shape
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                         reduction="none")
    return ce.view(B, n - 1).mean(dim=1)


def _token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits predicting (B, L) tokens -> (B, L) float32 losses."""
    B, L, V = logits.shape
    return F.cross_entropy(logits.reshape(-1, V).float(), ids.reshape(-1).to(logits.device),
                           reduction="none").view(B, L)


def target_values(targets: tuple[Target, ...], acts: dict, logits: torch.Tensor,
                  which: torch.Tensor) -> torch.Tensor:
    """Each row's own target (targets[which[b]]) on (B, ...) activations and logits -> (B,)
    float32."""
    if len(targets) == 1:
        return targets[0].value(acts, logits).float()
    f = logits.new_zeros(len(logits), dtype=torch.float32)
    for t, target in enumerate(targets):
        rows = (which == t).nonzero().squeeze(1).to(logits.device)
        if len(rows):
            f = f.index_put((rows,), target.value(
                {s: a[rows] for s, a in acts.items()}, logits[rows]).float())
    return f


def _model_pass(scorer, model, x=None, emb=None, capture_sites=(), for_target=False,
                extra=0) -> tuple[dict, torch.Tensor]:
    """One forward of `model` on whole sequences, tokens x (B, L) or embeddings emb (B, L, d)
    -> (acts, logits). Logits (B, L, V) where a target reads them, else only those CE reads
    (B, hi - lo, V), positions lo..hi-1 of Context.ce_span, and `extra` more after them."""
    L = (x if x is not None else emb).shape[1]
    lo, hi = scorer.context.ce_span(L - scorer.context.P - scorer.context.S)
    keep = 0 if (for_target and scorer.reads_logits) else torch.arange(lo, hi + extra,
                                                                     device=model.device)
    with capture(scorer.lm, capture_sites) as acts:
        out = model.model(input_ids=x, inputs_embeds=emb, use_cache=False,
                          logits_to_keep=keep)
    return acts, out.logits


def forward_logits(scorer, ids: torch.Tensor | None, one_hot: torch.Tensor | None, which,
                   embeds: tuple | None, extra: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scorer.forward, also returning the fluency model's logits (B, n - first_scored + extra, V):
    row p predicts x[first_scored + p]; CE reads the first n - first_scored rows (extra = 1:
    also the last position's, which predicts a token appended to x)."""
    if ids is None:
        ids = one_hot.argmax(-1)
    ids, ctx = ids.to(scorer.lm.device), scorer.context
    if one_hot is not None:
        embeds = tuple(one_hot.to(m.device, m.dtype) @ m.model.get_input_embeddings().weight
                       for m in (scorer.lm, scorer.fluency))
    emb = flu_emb = None
    if embeds is not None:                     # x's (B, n, d) -> the whole sequence's
        emb = ctx.wrap_embeds(embeds[0], scorer.lm.model.get_input_embeddings().weight)
        flu_emb = emb if scorer.fluency is scorer.lm else ctx.wrap_embeds(
            embeds[1], scorer.fluency.model.get_input_embeddings().weight)
    full = ctx.wrap(ids)                                                   # (B, P + n + S)
    acts, logits = _model_pass(scorer, scorer.lm, None if emb is not None else full, emb,
                               capture_sites=scorer.sites, for_target=True, extra=extra)
    f = target_values(scorer.targets, acts, logits, scorer.row_targets(which, len(ids)))
    lo, hi = ctx.ce_span(ids.shape[1])
    if scorer.fluency is not scorer.lm:
        x = None if flu_emb is not None else full.to(scorer.fluency.device)
        _, logits = _model_pass(scorer, scorer.fluency, x, flu_emb, extra=extra)
    elif scorer.reads_logits:
        logits = logits[:, lo:hi + extra]          # the target's pass kept every position
    first = ctx.first_scored()
    scored = logits[:, :hi - lo]                   # (B, n - first, V)
    if one_hot is None:
        ce = _token_nll(scored, ids[:, first:]).mean(1)
    else:
        labels = one_hot[:, first:].to(logits.device).float()
        ce = -(labels * scored.float().log_softmax(-1)).sum(-1).mean(1)
    return f, ce.to(f.device), logits
