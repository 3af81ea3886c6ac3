"""Mutation operators: how a member makes its r children (DESIGN §4 step 3; issue 14).

    cfg = fd.EPOConfig(operators={"swap": 0.5, "insert": 0.25, "delete": 0.25},
                       min_len=8, max_len=16)
    children = mutate(state, r, gen, cfg)       # (M*r, W) ids, -1 after each child's tokens

Each child takes one operator, drawn with the configured probabilities among those its parent
allows (an insert needs length < max_len, a delete length > min_len):

- swap: one uniform position takes a uniform token among its k gradient candidates (paper §2).
- swap2: two distinct uniform positions each take a uniform token among their own k candidates,
  in one step (paper §4's multi-token swap): a word the tokenizer splits in two tokens can then be
  formed at once, where single swaps would have to pass through a worse half-formed prompt.
- insert: a new token at a uniform position p in 0..len, drawn from the fluency model's own
  next-token distribution there (the logits at p - 1 of the parent, which the gradient pass
  computes for CE anyway, plus one row for p = len), restricted to allowed tokens, top-k sampled
  in proportion to probability. Why not the one-hot gradient: the new position has no one-hot
  entry to differentiate, and a gradient taken at the shifted positions ranks tokens for the
  wrong context; the model's own continuation keeps the prompt fluent, and selection judges the
  target. At p = 0 without a prefix nothing predicts the token, so it is a uniform draw among the
  gradient candidates of position 0 (the token it displaces).
- delete: a uniform position is removed.

Prompts of several lengths live in (M, W) arrays with W = max_len, padded with -1
(fluentdream.core.ragged). A swap-only run draws exactly what it drew before operators existed, so its
History is unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import OPERATORS, EPOConfig
from .history import EPOState
from .ragged import PAD, lengths


def mutate(state: EPOState, r: int, gen: torch.Generator,
           cfg: EPOConfig | None = None) -> torch.Tensor:
    """(M*r, W) children of the M slots, r per slot in slot order, by cfg.operators (default:
    swap only)."""
    ops = {"swap": 1.0} if cfg is None else cfg.operators
    if list(ops) == ["swap"]:
        return _swap(state, r, gen)
    return _mixed(state, r, gen, ops, *cfg.length_range)


def _swap(state: EPOState, r: int, gen: torch.Generator) -> torch.Tensor:
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


def _mixed(state: EPOState, r: int, gen: torch.Generator, ops: dict[str, float],
           min_len: int, max_len: int) -> torch.Tensor:
    """(M*r, W) children, each by one operator drawn from `ops` among those its parent allows."""
    M, W, k = state.topk.shape
    B, slot = M * r, torch.arange(M).repeat_interleave(r)
    parents = torch.from_numpy(state.slot_ids).long()[slot]                 # (B, W)
    L = lengths(parents)                                                     # (B,)
    allows = torch.stack([torch.ones(B, dtype=torch.bool), L >= 2, L < max_len, L > min_len], 1)
    weight = torch.tensor([ops.get(name, 0.0) for name in OPERATORS], dtype=torch.float64)
    op = torch.multinomial(weight * allows, 1, generator=gen).squeeze(1)    # index in OPERATORS
    two, ins, dele = op == 1, op == 2, op == 3
    u = torch.rand(B, 2, generator=gen, dtype=torch.float64)
    choice = torch.randint(k, (B, 2), generator=gen)
    p1 = (u[:, 0] * (L + ins)).long()                  # insert: 0..L; others: 0..L-1
    p2 = (u[:, 1] * (L - 1)).long()
    p2 = p2 + (p2 >= p1)                               # a second position, distinct from p1
    topk = torch.from_numpy(state.topk).long()
    t1 = topk[slot, p1.clamp(max=W - 1), choice[:, 0]]
    t2 = topk[slot, p2.clamp(max=W - 1), choice[:, 1]]
    if "insert" in ops:
        probs = torch.from_numpy(state.next_probs)[slot, p1]                # (B, k)
        drawn = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        t1 = torch.where(ins, torch.from_numpy(state.next_ids).long()[slot, p1, drawn], t1)
    # Column j of a child reads column src[j] of its parent (PAD appended as column W):
    # shifted right after an insert at p1, left from a delete at p1.
    j = torch.arange(W)[None]
    src = j - (ins[:, None] & (j > p1[:, None])).long() \
        + (dele[:, None] & (j >= p1[:, None])).long()
    child = torch.cat([parents, parents.new_full((B, 1), PAD)], 1).gather(1, src)
    child[j >= (L + ins.long() - dele.long())[:, None]] = PAD
    rows = torch.arange(B)
    child[rows[~dele], p1[~dele]] = t1[~dele]
    child[rows[two], p2[two]] = t2[two]
    return child


def insertion_table(logp: torch.Tensor, allowed: torch.Tensor, k: int, first_topk: torch.Tensor,
                    prefixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(S, W + 1, V) next-token log-probabilities per insertion position (Scorer.proposal_pass),
    (V,) allowed tokens, (S, k) gradient candidates of position 0 -> the k candidates (S, W + 1, k)
    int32 and their probabilities (S, W + 1, k) float32 (renormalized over the k; 0 where no
    token is defined). Without a prefix, position 0 has no distribution: its gradient candidates,
    uniformly."""
    logp = logp.masked_fill(~allowed, -torch.inf)
    top, ids = logp.topk(k, dim=-1)
    probs = top.softmax(-1).nan_to_num(0.0)
    if not prefixed:
        ids[:, 0], probs[:, 0] = first_topk, 1.0 / k
    return ids.to(torch.int32).numpy(), probs.numpy()
