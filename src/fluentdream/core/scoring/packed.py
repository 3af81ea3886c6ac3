"""Packed forward passes: many one-token children of a few parents in one pass, computing only the
positions that changed (DESIGN §10). `Scorer.score` is the user; the pieces:

    plan = Plan.build(start, src, n)       # row b computes positions start[b]..n-1, the rest is src[b]'s
    with packed_attention(lm.model, plan):
        hidden = lm.trunk(input_ids=plan.tokens(ids), position_ids=plan.pos[None]).last_hidden_state
    nll = packed_nll(hidden[0], lm.unembed, plan, ids)      # (B, n - 1) token losses

An EPO child equals its parent before the swapped position p, so there its keys, values,
activations and log-probabilities are the parent's. The parents (start 0) and the positions
p..n-1 of every child are laid end to end as one sequence of T tokens (about half of the B * n a
full pass computes), so every projection, MLP and unembedding is one large matrix product over T
rows: no padding to n and no per-position groups. Only attention needs the prompt layout: a
registered attention function gathers the T queries, keys and values into (heads, B, n, head_dim),
taking the positions a row did not compute from its source row (the parent, in the same pass),
runs causal attention there and gathers the T outputs back. Rotary and learned position
embeddings see every token's true position through `position_ids`, so this works unchanged for
each architecture whose attention goes through transformers' attention interface (all of
`fluentdream.models.ARCHITECTURES`). On top: row counts are padded to a few shapes (`padded`),
and block 0's token-local modules run once per distinct token (`once_per_token`). Rows may have
different lengths (Plan.length; an insert or delete child beside its parent): the attention layout
pads each to n at its end, which causal attention keeps from every real position.
"""
from __future__ import annotations

import contextvars
import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import UserError

NAME = "fluentdream_packed"
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar(NAME, default=None)


@dataclass
class Plan:
    """The layout of T packed tokens from B prompts of at most n tokens (all tensors on one
    device). Row b has length[b] tokens (n unless given: prompts of several lengths, an insert
    or delete child beside its parent); the attention layout pads it to n at the end, where
    causal attention keeps the padding from every real position."""
    row: torch.Tensor        # (T,) prompt of each packed token
    pos: torch.Tensor        # (T,) its position in the prompt
    start: torch.Tensor      # (B,) first position a prompt computes
    src: torch.Tensor        # (B,) the row whose entries a prompt takes before `start`
    n: int
    probs_layers: frozenset = frozenset()   # layers whose attention probabilities are returned
    length: torch.Tensor | None = None      # (B,) tokens of each prompt

    @staticmethod
    def build(start: torch.Tensor, src: torch.Tensor, n: int, probs_layers=frozenset(),
              length: torch.Tensor | None = None) -> Plan:
        """Rows are laid out in order, each as positions start[b]..length[b]-1. A row with
        start > 0 must have a source row with start 0 (its parent, in the same pass) holding
        its positions before start."""
        assert bool((start[src[start > 0]] == 0).all()), "a source row must compute every position"
        length = torch.full_like(start, n) if length is None else length
        row = torch.repeat_interleave(torch.arange(len(start), device=start.device), length - start)
        plan = Plan(row, row, start, src, n, frozenset(probs_layers), length)
        plan.pos = start[row] + torch.arange(len(row), device=start.device) - plan._first[row]
        return plan

    @property
    def B(self) -> int:
        return len(self.start)

    @functools.cached_property
    def _first(self) -> torch.Tensor:
        """(B,) packed index of each row's first computed position."""
        lengths = self.length - self.start
        return torch.cumsum(lengths, 0) - lengths

    def index(self, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Packed index of (row, pos) pairs; pos >= start[row]."""
        return self._first[row] + pos - self.start[row]

    @functools.cached_property
    def source(self) -> torch.Tensor:
        """(B * n,) for every (row, position) the packed token that holds it: its own where the
        row computes it, else its source row's (the parent's, unchanged before start); past a
        short row's end, its last token (padding that no real position attends to)."""
        grid = torch.arange(self.n, device=self.start.device).expand(self.B, self.n)
        grid = torch.minimum(grid, self.length[:, None] - 1)
        rows = torch.where(grid >= self.start[:, None],
                           torch.arange(self.B, device=grid.device)[:, None], self.src[:, None])
        return self.index(rows, grid).reshape(-1)

    @functools.cached_property
    def flat(self) -> torch.Tensor:
        """(T,) each packed token's index in the (B * n) prompt layout."""
        return self.row * self.n + self.pos

    @property
    def last(self) -> torch.Tensor:
        """(B,) packed index of every row's last position."""
        return self._first + self.length - 1 - self.start

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, n) prompts -> (1, T) the packed tokens."""
        return ids[self.row, self.pos][None]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, ...) per-token values -> (B, n, ...), positions before `start` from the source."""
        return packed[self.source].view((self.B, self.n) + packed.shape[1:])


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query (1, heads, T, hd), key and value (1, kv_heads, T, hd) -> (1, T, heads, hd), and the
    (B, heads, n, n) probabilities on layers of plan.probs_layers (else None)."""
    plan: Plan = _ACTIVE.get()
    assert plan is not None, "packed attention runs only inside packed_attention()"
    window = kwargs.get("sliding_window")
    if window is not None and window < plan.n:
        raise UserError(f"sliding-window attention with a window of {window} tokens is not "
                        f"supported for {plan.n}-token prompts; use prompts of at most {window}")

    def layout(x):               # (1, h, T, hd) -> (h, B, n, hd), every position filled
        return x[0].index_select(1, plan.source).view(x.shape[1], plan.B, plan.n, -1)
    Q, K, V = layout(query), layout(key), layout(value)
    heads, B, n, hd = Q.shape
    probs = None
    # Explicit attention where a target reads the probabilities, and for low precision on CPU,
    # where it beats the SDPA kernels at these tiny (n x n) blocks by ~1.5x (LOG.md).
    if module.layer_idx in plan.probs_layers or (Q.device.type == "cpu" and Q.dtype != torch.float32):
        out, weights = _explicit(Q, K, V, scaling if scaling is not None else hd ** -0.5)
        if module.layer_idx in plan.probs_layers:                       # (B, heads, n, n)
            probs = weights.view(K.shape[0], B, -1, n, n).transpose(0, 1).reshape(B, heads, n, n)
    else:
        out = F.scaled_dot_product_attention(Q.transpose(0, 1), K.transpose(0, 1), V.transpose(0, 1),
                                             is_causal=True, scale=scaling,
                                             enable_gqa=heads != K.shape[0]).permute(0, 2, 1, 3)
    out = out.reshape(B * n, heads, hd).index_select(0, plan.flat)      # (T, heads, hd)
    return out[None], probs


def _explicit(Q, K, V, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention written out: Q (heads, B, n, hd), K and V (kv_heads, B, n, hd) ->
    outputs (B, n, kv_heads, g, hd), i.e. (B, n, heads, hd) with head h = kv * g + j, and
    probabilities (kv_heads * B, g * n, n). Grouped-query heads
    share their key-value head's product: the g = heads / kv_heads query heads of a group are
    stacked as g * n rows against its n keys (head h reads key-value head h // g, as
    transformers' repeat_kv lays them out), so keys and values are never copied g times."""
    heads, B, n, hd = Q.shape
    kv = K.shape[0]
    g = heads // kv
    Qg = Q.view(kv, g, B, n, hd).transpose(1, 2).reshape(kv * B, g * n, hd)
    causal = torch.full((n, n), -torch.inf, dtype=Q.dtype, device=Q.device).triu(1).repeat(g, 1)
    scores = torch.baddbmm(causal.expand(kv * B, g * n, n), Qg,
                           K.reshape(kv * B, n, hd).transpose(1, 2), alpha=scale)
    # softmax written out: torch's kernel is ~3x slower on rows of only n = 12 entries
    weights = (scores.float() - scores.amax(-1, keepdim=True).float()).exp_()
    weights = (weights / weights.sum(-1, keepdim=True)).to(Q.dtype)     # (kv * B, g * n, n)
    out = torch.bmm(weights, V.reshape(kv * B, n, hd))                  # (kv * B, g * n, hd)
    return out.view(kv, B, g, n, hd).permute(1, 3, 0, 2, 4), weights    # (B, n, kv, g, hd)


def _no_mask(**kwargs):
    return None                      # the causal structure lives in the plan


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _no_mask)


@contextmanager
def attention_implementation(model, name: str):
    """Switch `model` (a transformers model) to attention implementation `name` inside the block."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextmanager
def packed_attention(model, plan: Plan):
    """Route `model`'s attention through `plan` inside the block."""
    _register()
    token = _ACTIVE.set(plan)
    try:
        with attention_implementation(model, NAME):
            yield plan
    finally:
        _ACTIVE.reset(token)


SHAPE_STEP = 64


def padded(count: int) -> int:
    """`count` rounded up to a multiple of SHAPE_STEP. On CPU, oneDNN builds (JIT-compiles) a
    kernel for every new matrix shape, which costs more than a product of this size (6 ms against
    0.7 ms for 1700 x 256 x 1024 in bf16, LOG.md); the number of packed tokens changes every
    iteration, so products run on a few rounded sizes instead, padded with rows that are dropped."""
    return -(-count // SHAPE_STEP) * SHAPE_STEP


class _OncePerToken(torch.nn.Module):
    """`module` run on one row per distinct token, its output expanded to every packed token."""

    def __init__(self, module, first: torch.Tensor, inverse: torch.Tensor):
        super().__init__()
        self.module, self.first, self.inverse = module, first, inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (1, T, d) -> (1, T, out)
        return self.module(x[:, self.first])[:, self.inverse]


@contextmanager
def once_per_token(block, paths: tuple[str, ...], tokens: torch.Tensor):
    """Inside the block, the modules `paths` of `block` (their input a function of the token
    alone) compute each distinct token of the (T,) packed `tokens` once: a batch of 256 children
    of 8 parents holds ~350 distinct tokens among ~1,700."""
    uniq, inverse = torch.unique(tokens, return_inverse=True)
    first = torch.full((len(uniq),), len(tokens), device=tokens.device).scatter_reduce(
        0, inverse, torch.arange(len(tokens), device=tokens.device), "amin")
    first = torch.cat([first, first[:1].expand(padded(len(first)) - len(first))])
    swapped = []
    try:
        for path in paths:
            owner_path, _, name = path.rpartition(".")
            owner = block.get_submodule(owner_path)
            swapped.append((owner, name, getattr(owner, name)))
            setattr(owner, name, _OncePerToken(swapped[-1][2], first, inverse))
        yield
    finally:
        for owner, name, module in reversed(swapped):
            setattr(owner, name, module)


def pad_rows(ids: torch.Tensor, start: torch.Tensor, src: torch.Tensor, which: torch.Tensor):
    """(B, n) rows (padded with -1 after a short row's tokens, fluentdream.core.ragged) and their (B,)
    start, src, which -> the same with k dummy rows appended, so that the packed length
    sum(length - start) is padded(): full copies of row 0, then one copy of its first r tokens
    for the remaining r, each computing all its positions."""
    n = ids.shape[1]
    total = int(((ids >= 0).sum(1) - start).sum())
    extra = padded(total) - total
    if extra == 0:
        return ids, start, src, which
    B, (full, r) = len(ids), divmod(extra, n)
    k = full + (r > 0)
    dummy = ids[:1].clamp_min(0).expand(k, n).clone()     # real tokens where row 0 is short
    if r:
        dummy[-1, r:] = -1
    return (torch.cat([ids, dummy]), torch.cat([start, start.new_zeros(k)]),
            torch.cat([src, B + torch.arange(k, dtype=src.dtype)]),
            torch.cat([which, which[:1].expand(k)]))


def unembed_rows(unembed, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Logits (len(index), V) of hidden[index], computed on a padded number of rows."""
    pad = index.new_full((padded(len(index)) - len(index),), int(index[0]) if len(index) else 0)
    return unembed(hidden[torch.cat([index, pad])])[:len(index)]


def row_nll(logits: torch.Tensor, y: torch.Tensor, rows: int = 32) -> torch.Tensor:
    """(R, V) logits, (R,) next tokens -> (R,) float32 losses. Lower-precision logits take
    logsumexp - logit, `rows` rows at a time: cross_entropy's float32 copy and (R, V) log-softmax
    go through memory and cost more than the unembedding itself on a CPU, while a few rows' float
    copy stays in cache (about 2x for this phase on SmolLM2; LOG.md). Float32 logits keep
    cross_entropy, whose rounding the saved float32 histories were made with."""
    if logits.dtype == torch.float32:
        return F.cross_entropy(logits, y, reduction="none")
    out = torch.empty(len(y), dtype=torch.float32, device=logits.device)
    for a in range(0, len(y), rows):
        part = logits[a:a + rows]
        out[a:a + rows] = (torch.logsumexp(part.float(), dim=-1)
                           - part.gather(1, y[a:a + rows, None])[:, 0].float())
    return out


def packed_nll(hidden: torch.Tensor, unembed, plan: Plan, ids: torch.Tensor, first: int = 1,
               stop: int | torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states (T, d) of the packed tokens -> (B, stop - first) float32 next-token
    losses of the tokens at positions first..stop-1 (default 1..n-1; entry j: the loss of token
    first + j), unembedding a few hundred rows at a time so the float32 logits stay in cache
    instead of making a (T, V) round trip through memory. Positions outside that range (a fixed
    prefix and suffix, fluentdream.core.context) are not unembedded. `stop` may be (B,), one per row
    (prompts of several lengths): the result is then (B, max(stop) - first), 0 past a row's stop.

    A row's losses of tokens before `start` are its source's (same tokens, same context); the
    loss of its token at `start` comes from the source's logits at start - 1."""
    B, n = plan.B, plan.n
    stop = n if stop is None else stop
    stops = torch.as_tensor(stop, device=plan.start.device).expand(B)          # (B,)
    width = int(stops.max())
    assert 1 <= first < width <= n, (first, stop, n)        # rows with stop <= first: no losses
    rows = ((plan.pos >= first - 1) & (plan.pos < stops[plan.row] - 1)).nonzero().squeeze(1)
    nxt = ids[plan.row[rows], plan.pos[rows] + 1]                           # rows: the predictors
    own = torch.zeros(len(plan.pos), dtype=torch.float32, device=hidden.device)
    chunk = max(256, (1 << 20) // unembed.out_features)
    for a in range(0, len(rows), chunk):
        r = rows[a:a + chunk]
        own[r] = row_nll(unembed_rows(unembed, hidden, r), nxt[a:a + chunk])
    nll = own[plan.source.view(B, n)[:, first - 1:width - 1]]
    b = ((plan.start >= first) & (plan.start < stops)).nonzero().squeeze(1)
    if len(b):                              # the swapped token, read off the source's logits
        p = plan.start[b]
        at, inv = torch.unique(plan.index(plan.src[b], p - 1), return_inverse=True)
        logits = unembed_rows(unembed, hidden, at).float()               # (A, V), A <= U (n - 1)
        lse = torch.logsumexp(logits, dim=-1)
        nll[b, p - first] = lse[inv] - logits[inv, ids[b, p]]
    if isinstance(stop, torch.Tensor):      # past a short row's end: another row's losses
        past = torch.arange(width - first, device=nll.device) >= (stops - first)[:, None]
        nll = nll.masked_fill(past, 0.0)
    return nll
