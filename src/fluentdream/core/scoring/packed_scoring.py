"""The packed scoring pass: the prompts a Scorer has not seen, through the models with every
child reusing its parent (DESIGN §10).

    f, ce = score_new(scorer, ids, parents, which)     # (B, W) distinct unseen rows -> (B,), (B,)

An EPO child differs from its parent from position p on, so before p its keys/values,
activations and log-probabilities are the parent's. Each chunk of rows runs as one packed
forward pass (fluentdream.core.scoring.packed): the distinct parents in full and every child's
positions p..n-1 only, laid end to end, so the model computes about half the tokens of a full
pass in large matrix products. Rejected prompts (banned text, with retokenize failed
retokenization: Scorer.rejected) score target = -inf and CE = nan and are never run through the
model.

Prompts of several lengths (EPOConfig.operators insert/delete) come as (B, W) ids padded with -1
(fluentdream.core.ragged). CE stays the mean over each prompt's own predicted tokens and "last"
is its own last position, so any lengths compare. An insert or delete child still reuses its
parent up to the edit (the first difference); targets that read every position (or attention
rows) score each length in its own pass, without reuse.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..ragged import is_ragged, lengths
from .chunks import in_chunks
from .forward import target_values
from .hooks import AllCaptured, capture, stop_after
from .packed import Plan, once_per_token, packed_attention, packed_nll, pad_rows, unembed_rows


def score_new(scorer, ids: torch.Tensor, parents: torch.Tensor | None,
              which: torch.Tensor, fluency: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct unseen rows (B, W), their parents (B, W) or None, target indices (B,) -> f (B,),
    ce (B,): the rejected ones set aside, then packed passes over chunks of rows, each with the
    distinct parents its rows reuse. The context's prefix is part of what a child shares with its parent, so it is
    computed for parents only. fluency=False: the target values alone (CE nan), the model run
    only as deep as the targets read (Scorer.values)."""
    if is_ragged(ids) and not scorer.mixes_lengths:       # one length at a time, in full
        f, ce, n = torch.empty(len(ids)), torch.empty(len(ids)), lengths(ids)
        for k in n.unique().tolist():
            g = (n == k).nonzero().squeeze(1)
            f[g], ce[g] = score_new(scorer, ids[g, :k], None, which[g], fluency)
        return f, ce
    f = torch.full((len(ids),), -torch.inf)
    ce = torch.full((len(ids),), torch.nan)
    keep = torch.from_numpy(~scorer.rejected(ids, which)).nonzero().squeeze(1)
    if len(keep) == 0:
        return f, ce
    ids, which, ctx = ids[keep], which[keep], scorer.context
    start = torch.zeros(len(ids), dtype=torch.long)    # first position each row computes
    owner = uniq = None
    if parents is not None and scorer.reuse_prefix:
        # The first difference, padding included (an insert or delete child differs from
        # its parent from the edit on); at most the child's last token, so that it computes
        # one position at least (a delete of the last token).
        diff = ids != parents[keep]
        last = ctx.length(lengths(ids)) - 1
        start = torch.where(diff.any(1), torch.minimum(ctx.P + diff.int().argmax(1), last),
                            0)                                          # identical: full
        uniq, owner = torch.unique(parents[keep], dim=0, return_inverse=True)
        uniq = ctx.wrap(uniq)
    ids = ctx.wrap(ids)                                   # (B, P + n + S) from here on
    fk, cek = torch.empty(len(ids)), torch.empty(len(ids))

    def run(a, b):
        rows = slice(a, b)
        if owner is None:
            fk[rows], cek[rows] = _packed(scorer, ids[rows], start[rows], torch.arange(b - a),
                                          which[rows], fluency)
            return
        used, src = torch.unique(owner[rows], return_inverse=True)  # parents this chunk reuses
        U = len(used)
        src = torch.where(start[rows] > 0, src, U + torch.arange(b - a))  # full rows: their own
        f2, ce2 = _packed(scorer, torch.cat([uniq[used], ids[rows]]),
                          torch.cat([torch.zeros(U, dtype=torch.long), start[rows]]),
                          torch.cat([torch.arange(U), src]),
                          torch.cat([which[rows][:1].expand(U), which[rows]]), fluency)
        fk[rows], cek[rows] = f2[U:], ce2[U:]
        scorer.counts["parent_rows"] += U
    in_chunks(scorer, len(ids), run)
    scorer.counts["model_rows"] += len(ids)
    f[keep], ce[keep] = fk, cek
    return f, ce


def _packed(scorer, ids, start, src, which, fluency: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) whole sequences, row b computing positions start[b].. and taking the rest from
    row src[b] -> (f, ce) (B,) on CPU, from one packed pass (per model). Dummy rows pad the
    packed length to a multiple of SHAPE_STEP tokens (fluentdream.core.scoring.packed.padded).
    fluency=False: f alone (ce nan), the pass stopping after the deepest site unless a target
    reads logits."""
    B, ragged = len(ids), is_ragged(ids)
    ids, start, src, which = pad_rows(ids, start, src, which)
    dev, n, length = scorer.lm.device, ids.shape[1], lengths(ids)
    ids, which = ids.to(dev), which.to(dev)
    plan = Plan.build(start.to(dev), src.to(dev), n, length=length.to(dev),
                      probs_layers={layer for kind, layer in scorer.sites if kind == "attn"})
    hidden, acts = _trunk(scorer.lm, ids, plan, scorer.sites,               # (T, d) or None
                          stop=not fluency and not scorer.reads_logits)
    f = target_values(scorer.targets, _unpack_sites(scorer, acts, plan),
                      _logits(scorer, hidden, plan), which)
    if not fluency:
        scorer.counts["model_tokens"] += len(plan.pos)
        return f[:B].cpu(), torch.full((B,), torch.nan)
    if scorer.fluency is not scorer.lm:
        fdev = scorer.fluency.device
        plan = Plan.build(start.to(fdev), src.to(fdev), n, length=length.to(fdev))
        ids = ids.to(fdev)
        hidden, _ = _trunk(scorer.fluency, ids, plan, ())
    scorer.counts["model_tokens"] += len(plan.pos)
    # CE scores x's tokens first..len-1: whole positions lo + 1 .. stop - 1 of each row
    lo = scorer.context.ce_span(n)[0]
    stop = (length - scorer.context.S).to(hidden.device)
    nll = packed_nll(hidden, scorer.fluency.unembed, plan, ids, lo + 1, stop)[:B]
    ce = nll.sum(1) / (stop[:B] - lo - 1) if ragged else nll.mean(1)
    return f[:B].cpu(), ce.cpu()


def _trunk(lm, ids: torch.Tensor, plan: Plan, sites, stop: bool = False
           ) -> tuple[torch.Tensor | None, dict]:
    """The packed pass of `lm`'s trunk -> final hidden states (T, d) and captured `sites`.
    Block 0's token-local modules run once per distinct token, unless a site is read there.
    stop: the pass ends once every site is captured (hidden states None)."""
    tokens = plan.tokens(ids)
    local = tuple(p for p in lm.token_local
                  if not (p == "mlp" and any(k.startswith("mlp") and L == 0 for k, L in sites)))
    with packed_attention(lm.model, plan), capture(lm, sites, eager_attention=False) as acts, \
            once_per_token(lm.blocks[0], local, tokens[0]), \
            stop_after(lm, sites) if stop else nullcontext():
        try:
            hidden = lm.trunk(input_ids=tokens, position_ids=plan.pos[None],
                              use_cache=False).last_hidden_state[0]
        except AllCaptured:
            hidden = None
    return hidden, acts


def _unpack_sites(scorer, acts: dict, plan: Plan) -> dict:
    """Captured packed activations -> what targets read: (B, n, ...) whole prompts when a
    target reads every position, else (B, 1, ...) the last position (attention: (B, h, n, n))."""
    out = {}
    for site, a in acts.items():
        if site[0] == "attn":
            out[site] = a
        else:
            out[site] = plan.unpack(a[0]) if scorer.reads_prefix else a[0][plan.last][:, None]
    return out


def _logits(scorer, hidden: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """Packed hidden states -> the logits targets read: (B, n, V) whole prompts, (B, 1, V) the
    last position, or (B, 0, V) when no target reads logits (hidden may then be None)."""
    if not scorer.reads_logits:
        return torch.zeros((plan.B, 0, scorer.lm.vocab_size), device=plan.start.device)
    if scorer.reads_prefix:
        return plan.unpack(scorer.lm.unembed(hidden))
    return unembed_rows(scorer.lm.unembed, hidden, plan.last)[:, None]
