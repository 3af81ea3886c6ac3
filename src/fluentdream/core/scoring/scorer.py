"""Scoring prompts: target value, self cross-entropy, one-hot gradients (paper §2, DESIGN §10).

    scorer = Scorer(lm, target)                     # fluency model = lm unless given
    f, ce = scorer.score(ids)                       # ids (B, n) -> (B,), (B,); no grad
    f, ce = scorer.score(children, parents=rows)    # same numbers, reusing each parent's prefix
    g = scorer.gradients(ids, lambdas)              # (M, n) -> (M, n, V): d(f - lambda*CE)/d one-hot

CE is the mean next-token cross-entropy of the prompt's own tokens: logits at positions 0..n-2
scored against tokens 1..n-1, no BOS, computed in float32. Rejected prompts (banned text, failed
retokenization) score target = -inf and CE = nan and are never run through the model.

Where the time goes (DESIGN §10): an EPO child differs from its parent from position p on, so
before p its keys/values, activations and log-probabilities are the parent's. Each batch runs as
one packed forward pass (`fluentdream.core.scoring.packed`): the distinct parents in full and every child's
positions p..n-1 only, laid end to end, so the model computes about half the tokens of a full pass
in large matrix products. A prompt scored before by this scorer is not scored again (`memo`). A
batch that runs out of memory is halved and retried. One scorer can serve several targets on one
model (`fluentdream.core.batched`): the captured activations of one pass feed every target.

Prompts of several lengths (EPOConfig.operators insert/delete) come as (B, W) ids padded with -1
(fluentdream.core.ragged). CE stays the mean over each prompt's own predicted tokens and "last" is its
own last position, so any lengths compare. An insert or delete child still reuses its parent up
to the edit (the first difference); targets that read every position (or attention rows) score
each length in its own pass, without reuse.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...targets.kinds import AttentionEntry, Logit, Neuron, ResidualDirection, SAELatent, Target
from ..context import Context
from ..ragged import is_ragged, lengths
from ..tokens import check_same_vocab, decode, retokenizes
from .gradients import one_hot_gradients
from .hooks import capture
from .packed import Plan, once_per_token, packed_attention, packed_nll, pad_rows, unembed_rows

log = logging.getLogger(__name__)

# Targets whose value at position "last" depends on the last position's activations alone.
_PER_POSITION = (Neuron, Logit, ResidualDirection, AttentionEntry, SAELatent)


def xentropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, n, V), (B, n) -> (B,) mean CE of tokens 1..n-1 given their prefixes, in float32."""
    B, n, V = logits.shape
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                         reduction="none")
    return ce.view(B, n - 1).mean(dim=1)


class Memo(dict):
    """(target index, prompt) -> (f, ce) of every prompt a Scorer has scored (keys: `_keys`).
    When adding would pass `size` entries it starts afresh: a bounded memory, and a run still
    scores each prompt at most once between clearings."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def add(self, new: dict[bytes, tuple[float, float]]) -> None:
        if len(self) + len(new) > self.size:
            self.clear()
        if len(new) <= self.size:
            self.update(new)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits predicting (B, L) tokens -> (B, L) float32 losses."""
    B, L, V = logits.shape
    return F.cross_entropy(logits.reshape(-1, V).float(), ids.reshape(-1).to(logits.device),
                           reduction="none").view(B, L)


class Scorer:
    """Target + fluency scoring of token prompts for one (model, target(s), fluency model).

    `target` may be a sequence of targets on the same model; then `score`, `gradients` and
    `forward` take `which` (B,), the target index of every row (fluentdream.core.batched).
    reuse_prefix=False and memo_size=0 turn the savings off: every prompt then goes through the
    model's own forward pass, unpacked (benchmarks, exactness tests).
    `context` holds fixed tokens around every prompt (fluentdream.core.context): the methods take and
    return the optimized tokens x (B, n) only, and the models read prefix + x + suffix.
    """

    def __init__(self, lm, target: Target | Sequence[Target], fluency=None,
                 batch_size: int = 256, retokenize: bool = True, *, reuse_prefix: bool = True,
                 memo_size: int = 1_000_000, context: Context = Context()):
        self.lm, self.batch_size, self.retokenize = lm, batch_size, retokenize
        self.context = context
        self.targets = (target,) if isinstance(target, Target) else tuple(target)
        self.sites = tuple(sorted({s for t in self.targets for s in t.sites}))
        self.fluency = fluency if fluency is not None else lm
        if self.fluency is not lm:
            check_same_vocab(lm, self.fluency)
        self.reuse_prefix = reuse_prefix
        self.memo = Memo(memo_size)
        self.counts = dict(requested=0, model_rows=0, model_tokens=0, parent_rows=0)
        # Built-in targets other than Logit never read logits; at "last" they read one position.
        self.reads_logits = not all(isinstance(t, _PER_POSITION) and not isinstance(t, Logit)
                                    for t in self.targets)
        self.reads_prefix = not all(isinstance(t, _PER_POSITION) and t.position == "last"
                                    for t in self.targets)
        # Prompts of several lengths share a packed pass when targets read each one's last
        # position alone; otherwise (every position, attention rows) each length runs apart.
        self.mixes_lengths = not self.reads_prefix and not any(k == "attn" for k, _ in self.sites)

    @property
    def target(self) -> Target:
        return self.targets[0]

    def _which(self, which, B: int) -> torch.Tensor:
        return torch.zeros(B, dtype=torch.long) if which is None else torch.as_tensor(which).long()

    def rejected(self, ids: torch.Tensor, which=None) -> np.ndarray:
        """(B, n) -> (B,) bool: prompts the target bans or that do not retokenize."""
        which = self._which(which, len(ids)).numpy()
        texts = decode(self.lm.tokenizer, ids)
        bad = np.zeros(len(ids), dtype=bool)
        for t, target in enumerate(self.targets):
            rows = np.flatnonzero(which == t)
            if len(rows):
                bad[rows] = target.rejects([texts[i] for i in rows])
        if self.retokenize:
            bad |= ~retokenizes(self.lm.tokenizer, ids, texts)
        return bad

    def _values(self, acts: dict, logits: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Each row's own target on (B, ...) activations and logits -> (B,) float32."""
        if len(self.targets) == 1:
            return self.targets[0].value(acts, logits).float()
        f = logits.new_zeros(len(logits), dtype=torch.float32)
        for t, target in enumerate(self.targets):
            rows = (which == t).nonzero().squeeze(1).to(logits.device)
            if len(rows):
                f = f.index_put((rows,), target.value(
                    {s: a[rows] for s, a in acts.items()}, logits[rows]).float())
        return f

    def _pass(self, model, x=None, emb=None, capture_sites=(), for_target=False, extra=0):
        """One forward of `model` on whole sequences, tokens x (B, L) or embeddings emb (B, L, d)
        -> (acts, logits). Logits (B, L, V) where a target reads them, else only those CE reads
        (B, hi - lo, V), positions lo..hi-1 of Context.ce_span, and `extra` more after them."""
        L = (x if x is not None else emb).shape[1]
        lo, hi = self.context.ce_span(L - self.context.P - self.context.S)
        keep = 0 if (for_target and self.reads_logits) else torch.arange(lo, hi + extra,
                                                                         device=model.device)
        with capture(self.lm, capture_sites) as acts:
            out = model.model(input_ids=x, inputs_embeds=emb, use_cache=False,
                              logits_to_keep=keep)
        return acts, out.logits

    def forward(self, ids: torch.Tensor | None = None, one_hot: torch.Tensor | None = None,
                which=None, embeds: tuple | None = None):
        """One batch through target and fluency models -> (f (B,), ce (B,)), float32.

        Give `ids` (B, n); to differentiate through the embeddings, also `one_hot` (B, n, V)
        (a relaxed one-hot works too) or `embeds`, the (B, n, d) input embeddings of the target
        and of the fluency model. With `one_hot`, CE reads it as the labels too (paper §2):
        CE = -mean_p sum_v one_hot[p, v] log softmax(logits[p - 1])[v], over p >= 1 (p >= 0
        after a prefix, whose last position predicts x's first token). The context's tokens
        are constants around x (fluentdream.core.context).
        """
        f, ce, _ = self._forward(ids, one_hot, which, embeds)
        return f, ce

    def _forward(self, ids, one_hot, which, embeds, extra=0):
        """forward(), also returning the fluency model's logits (B, n - first_scored + extra, V):
        row p predicts x[first_scored + p]; CE reads the first n - first_scored rows (extra = 1:
        also the last position's, which predicts a token appended to x)."""
        if ids is None:
            ids = one_hot.argmax(-1)
        ids, ctx = ids.to(self.lm.device), self.context
        if one_hot is not None:
            embeds = tuple(one_hot.to(m.device, m.dtype) @ m.model.get_input_embeddings().weight
                           for m in (self.lm, self.fluency))
        emb = flu_emb = None
        if embeds is not None:                     # x's (B, n, d) -> the whole sequence's
            emb = ctx.wrap_embeds(embeds[0], self.lm.model.get_input_embeddings().weight)
            flu_emb = emb if self.fluency is self.lm else ctx.wrap_embeds(
                embeds[1], self.fluency.model.get_input_embeddings().weight)
        full = ctx.wrap(ids)                                                   # (B, P + n + S)
        acts, logits = self._pass(self.lm, None if emb is not None else full, emb,
                                  capture_sites=self.sites, for_target=True, extra=extra)
        f = self._values(acts, logits, self._which(which, len(ids)))
        lo, hi = ctx.ce_span(ids.shape[1])
        if self.fluency is not self.lm:
            x = None if flu_emb is not None else full.to(self.fluency.device)
            _, logits = self._pass(self.fluency, x, flu_emb, extra=extra)
        elif self.reads_logits:
            logits = logits[:, lo:hi + extra]          # the target's pass kept every position
        first = ctx.first_scored()
        scored = logits[:, :hi - lo]                   # (B, n - first, V)
        if one_hot is None:
            ce = _nll(scored, ids[:, first:]).mean(1)
        else:
            labels = one_hot[:, first:].to(logits.device).float()
            ce = -(labels * scored.float().log_softmax(-1)).sum(-1).mean(1)
        return f, ce.to(f.device), logits

    def _in_chunks(self, n_rows: int, run) -> None:
        """Call run(start, stop) over row chunks of at most `batch_size`, halving it for good
        whenever a chunk runs out of memory (DESIGN §10: back off instead of failing)."""
        start = 0
        while start < n_rows:
            stop = min(start + self.batch_size, n_rows)
            try:
                run(start, stop)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory at %d prompts per batch; retrying with %d",
                            stop - start, self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start = stop

    @torch.no_grad()
    def score(self, ids: torch.Tensor, parents: torch.Tensor | None = None,
              which=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) -> f (B,), ce (B,) on CPU, float32; rejected rows are (-inf, nan). Rows may be
        shorter than n, padded with -1 (fluentdream.core.ragged).

        parents (B, n), optional: a prompt each row was made from. Positions before the first
        difference are then reused from the parent instead of recomputed; the numbers are the
        same up to floating-point rounding. Prompts this scorer has scored before are looked up.
        """
        f, ce, _ = self.score_counted(ids, parents, which)
        return f, ce

    @torch.no_grad()
    def score_counted(self, ids: torch.Tensor, parents: torch.Tensor | None = None,
                      which=None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """score(), also returning (B,) bool: the rows the model computed (a finite CE came
        back). The others were looked up (scored before, or a repeat of an earlier row of this
        call) or rejected."""
        B = len(ids)
        which = self._which(which, B)
        keys = _keys(ids, which)
        self.counts["requested"] += B
        known: dict[bytes, tuple[float, float]] = {}
        todo: dict[bytes, int] = {}              # distinct unseen prompts -> first row
        for i, key in enumerate(keys):
            hit = self.memo.get(key)
            if hit is None:
                todo.setdefault(key, i)
            else:
                known[key] = hit
        computed = np.zeros(B, dtype=bool)
        if todo:
            rows = torch.tensor(list(todo.values()))
            f_new, ce_new = self._score_new(ids[rows], None if parents is None else parents[rows],
                                            which[rows])
            computed[rows.numpy()] = torch.isfinite(ce_new).numpy()   # rejected: CE nan
            new = dict(zip(todo, zip(f_new.tolist(), ce_new.tolist())))
            known.update(new)
            self.memo.add(new)
        values = torch.tensor([known[key] for key in keys], dtype=torch.float32).view(B, 2)
        return values[:, 0].contiguous(), values[:, 1].contiguous(), computed

    def remember(self, ids: torch.Tensor, f, ce, which=None) -> None:
        """Enter prompts (B, n) scored earlier, with their f (B,) and ce (B,), into the memo exactly
        as score() would have: a resumed run then batches, reuses and rounds like an
        uninterrupted one, so its History is identical (DESIGN §7)."""
        new: dict[bytes, tuple[float, float]] = {}
        for key, fi, ci in zip(_keys(ids, self._which(which, len(ids))), np.asarray(f).tolist(),
                               np.asarray(ce).tolist()):
            if key not in self.memo:
                new.setdefault(key, (fi, ci))
        self.memo.add(new)

    def _score_new(self, ids, parents, which) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct unseen rows -> (f, ce): reject, then packed passes over chunks of rows, each
        with the distinct parents its rows reuse (fluentdream.core.scoring.packed). The context's prefix is
        part of what a child shares with its parent, so it is computed for parents only."""
        if is_ragged(ids) and not self.mixes_lengths:       # one length at a time, in full
            f, ce, n = torch.empty(len(ids)), torch.empty(len(ids)), lengths(ids)
            for k in n.unique().tolist():
                g = (n == k).nonzero().squeeze(1)
                f[g], ce[g] = self._score_new(ids[g, :k], None, which[g])
            return f, ce
        f = torch.full((len(ids),), -torch.inf)
        ce = torch.full((len(ids),), torch.nan)
        keep = torch.from_numpy(~self.rejected(ids, which)).nonzero().squeeze(1)
        if len(keep) == 0:
            return f, ce
        ids, which, ctx = ids[keep], which[keep], self.context
        start = torch.zeros(len(ids), dtype=torch.long)    # first position each row computes
        owner = uniq = None
        if parents is not None and self.reuse_prefix:
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
                fk[rows], cek[rows] = self._packed(ids[rows], start[rows], torch.arange(b - a), which[rows])
                return
            used, src = torch.unique(owner[rows], return_inverse=True)  # parents this chunk reuses
            U = len(used)
            src = torch.where(start[rows] > 0, src, U + torch.arange(b - a))  # full rows: their own
            f2, ce2 = self._packed(torch.cat([uniq[used], ids[rows]]),
                                   torch.cat([torch.zeros(U, dtype=torch.long), start[rows]]),
                                   torch.cat([torch.arange(U), src]),
                                   torch.cat([which[rows][:1].expand(U), which[rows]]))
            fk[rows], cek[rows] = f2[U:], ce2[U:]
            self.counts["parent_rows"] += U
        self._in_chunks(len(ids), run)
        self.counts["model_rows"] += len(ids)
        f[keep], ce[keep] = fk, cek
        return f, ce

    def _packed(self, ids, start, src, which) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) whole sequences, row b computing positions start[b].. and taking the rest from
        row src[b] -> (f, ce) (B,) on CPU, from one packed pass (per model). Dummy rows pad the
        packed length to a multiple of SHAPE_STEP tokens (fluentdream.core.scoring.packed.padded)."""
        B, ragged = len(ids), is_ragged(ids)
        ids, start, src, which = pad_rows(ids, start, src, which)
        dev, n, length = self.lm.device, ids.shape[1], lengths(ids)
        ids, which = ids.to(dev), which.to(dev)
        plan = Plan.build(start.to(dev), src.to(dev), n, length=length.to(dev),
                          probs_layers={layer for kind, layer in self.sites if kind == "attn"})
        hidden, acts = self._trunk(self.lm, ids, plan, self.sites)                # (T, d)
        f = self._values(self._unpack_sites(acts, plan), self._logits(hidden, plan), which)
        if self.fluency is not self.lm:
            fdev = self.fluency.device
            plan = Plan.build(start.to(fdev), src.to(fdev), n, length=length.to(fdev))
            ids = ids.to(fdev)
            hidden, _ = self._trunk(self.fluency, ids, plan, ())
        self.counts["model_tokens"] += len(plan.pos)
        # CE scores x's tokens first..len-1: whole positions lo + 1 .. stop - 1 of each row
        lo = self.context.ce_span(n)[0]
        stop = (length - self.context.S).to(hidden.device)
        nll = packed_nll(hidden, self.fluency.unembed, plan, ids, lo + 1, stop)[:B]
        ce = nll.sum(1) / (stop[:B] - lo - 1) if ragged else nll.mean(1)
        return f[:B].cpu(), ce.cpu()

    def _trunk(self, lm, ids: torch.Tensor, plan: Plan, sites) -> tuple[torch.Tensor, dict]:
        """The packed pass of `lm`'s trunk -> final hidden states (T, d) and captured `sites`.
        Block 0's token-local modules run once per distinct token, unless a site is read there."""
        tokens = plan.tokens(ids)
        local = tuple(p for p in lm.token_local
                      if not (p == "mlp" and any(k.startswith("mlp") and L == 0 for k, L in sites)))
        with packed_attention(lm.model, plan), capture(lm, sites, eager_attention=False) as acts, \
                once_per_token(lm.blocks[0], local, tokens[0]):
            hidden = lm.trunk(input_ids=tokens, position_ids=plan.pos[None],
                              use_cache=False).last_hidden_state[0]
        return hidden, acts

    def _unpack_sites(self, acts: dict, plan: Plan) -> dict:
        """Captured packed activations -> what targets read: (B, n, ...) whole prompts when a
        target reads every position, else (B, 1, ...) the last position (attention: (B, h, n, n))."""
        out = {}
        for site, a in acts.items():
            if site[0] == "attn":
                out[site] = a
            else:
                out[site] = plan.unpack(a[0]) if self.reads_prefix else a[0][plan.last][:, None]
        return out

    def _logits(self, hidden: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Packed hidden states -> the logits targets read: (B, n, V) whole prompts, (B, 1, V) the
        last position, or (B, 0, V) when no target reads logits."""
        if not self.reads_logits:
            return hidden.new_zeros((plan.B, 0, self.lm.vocab_size))
        if self.reads_prefix:
            return plan.unpack(self.lm.unembed(hidden))
        return unembed_rows(self.lm.unembed, hidden, plan.last)[:, None]

    def gradients(self, ids: torch.Tensor, lambdas: torch.Tensor, which=None,
                  next_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """(M, n), (M,) -> (M, n, V) float32 gradient of f - lambda * CE w.r.t. the one-hot
        tokens, each slot with its own lambda; next_logprobs (M, n + 1, V), optional, receives
        the fluency model's next-token log-probabilities from the same pass
        (fluentdream.core.scoring.gradients.one_hot_gradients has the formula)."""
        return one_hot_gradients(self, ids, lambdas, which, next_logprobs)

def _keys(ids: torch.Tensor, which: torch.Tensor) -> list[bytes]:
    """(B, W) prompts (padded with -1, fluentdream.core.ragged), (B,) target index -> memo keys:
    target index, length and the prompt's own tokens."""
    return [t.to_bytes(4, "little") + k.to_bytes(4, "little") + row[:k].tobytes()
            for t, k, row in zip(which.tolist(), lengths(ids).tolist(), ids.numpy())]
