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
one packed forward pass (`fluentdream.packed`): the distinct parents in full and every child's
positions p..n-1 only, laid end to end, so the model computes about half the tokens of a full pass
in large matrix products. A prompt scored before by this scorer is not scored again (`memo`). A
batch that runs out of memory is halved and retried. One scorer can serve several targets on one
model (`fluentdream.batched`): the captured activations of one pass feed every target.

Prompts of several lengths (EPOConfig.operators insert/delete) come as (B, W) ids padded with -1
(fluentdream.ragged). CE stays the mean over each prompt's own predicted tokens and "last" is its
own last position, so any lengths compare. An insert or delete child still reuses its parent up
to the edit (the first difference); targets that read every position (or attention rows) score
each length in its own pass, without reuse.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .context import Context
from .errors import UserError
from .packed import (Plan, attention_implementation, once_per_token, packed_attention, packed_nll,
                     pad_rows, unembed_rows)
from .ragged import is_ragged, lengths, rows as token_rows
from .targets import AttentionEntry, Logit, Neuron, ResidualDirection, SAELatent, Site, Target

log = logging.getLogger(__name__)

# Targets whose value at position "last" depends on the last position's activations alone.
_PER_POSITION = (Neuron, Logit, ResidualDirection, AttentionEntry, SAELatent)


@contextmanager
def capture(lm, sites: tuple[Site, ...], eager_attention: bool = True):
    """Hooks that fill a dict {site: activation} on every forward pass of `lm.model`.
    Site kinds (fluentdream.targets): "mlp" the input of the MLP output projection, "mlp_pre" the
    input of the MLP activation function, "mlp_out" the output projection's output, "resid" the
    input of block L (of the final norm for L = n_layers), "attn" the attention probabilities.
    Attention sites switch the model to eager attention (SDPA hides the probabilities) unless
    `eager_attention` is False (the packed attention returns them itself)."""
    acts: dict[Site, torch.Tensor] = {}
    handles = []

    def save_input(site):
        def hook(module, args, kwargs):
            acts[site] = args[0] if args else kwargs["hidden_states"]
        return hook

    def save_output(site, item=None):
        def hook(module, args, output):
            acts[site] = output if item is None else output[item]
        return hook

    needs_eager = eager_attention and any(kind == "attn" for kind, _ in sites)
    previous = lm.model.config._attn_implementation
    if needs_eager:  # SDPA does not expose attention probabilities
        lm.model.set_attn_implementation("eager")
    try:
        for site in set(sites):
            kind, layer = site
            if kind == "mlp":
                handles.append(lm.mlp_out_proj(layer).register_forward_pre_hook(
                    save_input(site), with_kwargs=True))
            elif kind == "resid":
                module = lm.final_norm if layer == lm.n_layers else lm.blocks[layer]
                handles.append(module.register_forward_pre_hook(save_input(site), with_kwargs=True))
            elif kind == "mlp_pre":
                handles.append(mlp_activation(lm, layer).register_forward_pre_hook(
                    save_input(site), with_kwargs=True))
            elif kind == "mlp_out":
                handles.append(lm.mlp_out_proj(layer).register_forward_hook(save_output(site)))
            elif kind == "attn":
                handles.append(lm.attention(layer).register_forward_hook(save_output(site, 1)))
            else:
                raise UserError(f"unknown site kind {kind!r}; allowed: mlp, mlp_pre, mlp_out, "
                                "resid, attn")
        yield acts
    finally:
        for h in handles:
            h.remove()
        if needs_eager:
            lm.model.set_attn_implementation(previous)


# The activation function module of an MLP: GPT-NeoX and GPT-2 "act", Llama family "act_fn",
# Phi "activation_fn". Each layer holds its own instance (transformers' ACT2FN builds one per call),
# so a hook on it sees that layer alone.
_MLP_ACTIVATIONS = ("act", "act_fn", "activation_fn")


def mlp_activation(lm, layer: int) -> torch.nn.Module:
    """The module applying layer `layer`'s MLP nonlinearity; its input is (B, n, d_mlp)."""
    mlp = lm.blocks[layer].get_submodule(lm.arch.mlp_out.rpartition(".")[0])
    for name in _MLP_ACTIVATIONS:
        if isinstance(getattr(mlp, name, None), torch.nn.Module):
            return getattr(mlp, name)
    raise UserError(f"pre-activation targets need the MLP's activation function as a module "
                    f"named one of {', '.join(_MLP_ACTIVATIONS)}; {type(mlp).__name__} has none")


def xentropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, n, V), (B, n) -> (B,) mean CE of tokens 1..n-1 given their prefixes, in float32."""
    B, n, V = logits.shape
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                         reduction="none")
    return ce.view(B, n - 1).mean(dim=1)


# Texts whose tokens serve as left neighbours when a token is judged in context.
_ANCHOR_TEXTS = (".", "1", "a", " the", "\n", "(")


@functools.lru_cache(maxsize=8)
def _token_masks(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) bool masks (surviving decode -> encode alone, allowed in context); see below."""
    n = min(len(tokenizer), vocab_size)
    ids = list(range(n))
    texts = decode(tokenizer, torch.tensor(ids)[:, None])
    alone = [e == [i] for i, e in enumerate(encode(tokenizer, texts))]
    # In context: SentencePiece adds a "▁" before a text's first word, so a word-continuation
    # piece ("ing") never survives alone but does after a neighbour ("a" + "ing" -> ▁a, ing).
    # A token is allowed when it survives after at least one neighbour token. Only tokens that
    # fail alone are tried in context (few, for byte-level BPE vocabularies).
    survives = list(alone)
    for a in _anchor_tokens(tokenizer):
        todo = [i for i in ids if not survives[i]]
        if not todo:
            break
        prefix = encode(tokenizer, decode(tokenizer, torch.tensor([[a]])))[0]
        pairs = decode(tokenizer, torch.tensor([[a, i] for i in todo]))
        for i, e in zip(todo, encode(tokenizer, pairs)):
            survives[i] = e == prefix + [i]
    whole = ["\ufffd" not in t for t in texts]          # not a partial UTF-8 character
    masks = []
    for keep in (alone, survives):
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[:n] = torch.tensor([k and w for k, w in zip(keep, whole)])
        mask[list(tokenizer.all_special_ids)] = False
        masks.append(mask)
    return masks[0], masks[1]


def _anchor_tokens(tokenizer) -> list[int]:
    """Single tokens (one per anchor text that encodes to one token) used as left neighbours."""
    found = [e[0] for e in encode(tokenizer, list(_ANCHOR_TEXTS)) if len(e) == 1]
    return list(dict.fromkeys(found))


def allowed_tokens(lm) -> torch.Tensor:
    """(V,) bool: tokens that may be proposed: not special, not a partial UTF-8 character, and
    surviving decode -> encode alone or after a neighbour token (DESIGN §4)."""
    return _token_masks(lm.tokenizer, lm.vocab_size)[1]


def drawable_tokens(lm) -> torch.Tensor:
    """(V,) bool: the allowed tokens that also survive decode -> encode alone, from which random
    prompts are drawn. The same set as allowed_tokens for byte-level BPE; for SentencePiece, the
    word-start pieces, so that random prompts (words side by side) survive retokenization."""
    return _token_masks(lm.tokenizer, lm.vocab_size)[0]


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """(B, n) -> B texts (rows padded with -1 end where their tokens end), special tokens kept,
    no clean-up of spaces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)   # the Rust tokenizer: no wrapper cost
    if backend is not None:
        return backend.decode_batch(token_rows(ids), skip_special_tokens=False)
    return tokenizer.batch_decode(token_rows(ids), clean_up_tokenization_spaces=False)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """B texts -> their token ids, no special tokens added."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def retokenizes(tokenizer, ids: torch.Tensor, texts: list[str] | None = None) -> np.ndarray:
    """(B, n) -> (B,) bool: decoding (or the given `texts`, decoded already) then encoding gives
    back exactly these tokens."""
    back = encode(tokenizer, texts if texts is not None else decode(tokenizer, ids))
    return np.array([b == row for b, row in zip(back, token_rows(ids))], dtype=bool)


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
    `forward` take `which` (B,), the target index of every row (fluentdream.batched).
    reuse_prefix=False and memo_size=0 turn the savings off: every prompt then goes through the
    model's own forward pass, unpacked (benchmarks, exactness tests).
    `context` holds fixed tokens around every prompt (fluentdream.context): the methods take and
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
        self.reuse_prefix, self.memo_size = reuse_prefix, memo_size
        self.memo: dict[bytes, tuple[float, float]] = {}   # (target index, tokens) -> (f, ce)
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
        are constants around x (fluentdream.context).
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
        shorter than n, padded with -1 (fluentdream.ragged).

        parents (B, n), optional: a prompt each row was made from. Positions before the first
        difference are then reused from the parent instead of recomputed; the numbers are the
        same up to floating-point rounding. Prompts this scorer has scored before are looked up.
        """
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
        if todo:
            rows = torch.tensor(list(todo.values()))
            f_new, ce_new = self._score_new(ids[rows], None if parents is None else parents[rows],
                                            which[rows])
            new = dict(zip(todo, zip(f_new.tolist(), ce_new.tolist())))
            known.update(new)
            if len(self.memo) + len(new) > self.memo_size:
                self.memo.clear()
            if len(new) <= self.memo_size:
                self.memo.update(new)
        values = torch.tensor([known[key] for key in keys], dtype=torch.float32).view(B, 2)
        return values[:, 0].contiguous(), values[:, 1].contiguous()

    def remember(self, ids: torch.Tensor, f, ce, which=None) -> None:
        """Enter prompts (B, n) scored earlier, with their f (B,) and ce (B,), into the memo exactly
        as score() would have: a resumed run then batches, reuses and rounds like an
        uninterrupted one, so its History is identical (DESIGN §7)."""
        new: dict[bytes, tuple[float, float]] = {}
        for key, fi, ci in zip(_keys(ids, self._which(which, len(ids))), np.asarray(f).tolist(),
                               np.asarray(ce).tolist()):
            if key not in self.memo:
                new.setdefault(key, (fi, ci))
        if len(self.memo) + len(new) > self.memo_size:
            self.memo.clear()
        if len(new) <= self.memo_size:
            self.memo.update(new)

    def _score_new(self, ids, parents, which) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct unseen rows -> (f, ce): reject, then packed passes over chunks of rows, each
        with the distinct parents its rows reuse (fluentdream.packed). The context's prefix is
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
        packed length to a multiple of SHAPE_STEP tokens (fluentdream.packed.padded)."""
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
        """(M, n), (M,) -> (M, n, V) float32 gradient of f - lambda * CE w.r.t. the one-hot tokens.

        The one-hot X is both the models' input (embeddings X @ E) and CE's labels (paper §2,
        DESIGN §4 step 2), so dCE/dX has two parts: the path through the embeddings, and the label
        term -log p(v | tokens < p) / (n - 1) at positions p >= 1, read off the fluency logits
        this pass computes anyway (after a prefix: / n at every position p >= 0, the prefix being
        part of "tokens < p"). Only the optimized tokens are differentiated. Every slot gets the
        gradient of its own objective, with its own lambda (DESIGN §4 step 7). The objective is
        linear in lambda, so each distinct prompt is differentiated once, for f and for CE, and
        slots combine the two: after a restart all M slots hold one prompt, and on average fewer
        than half of the slots hold distinct ones. Attention runs eagerly here: at prompt lengths
        like 12, SDPA's backward costs several times the rest. Rows of several lengths (padded
        with -1, fluentdream.ragged) go one length at a time, n their own in the formula above;
        a row's gradient past its end is 0.

        next_logprobs, optional (M, W + 1, V) float32, is filled from the same pass (one more
        logit row per prompt) with the fluency model's log-probabilities of the token at each x
        position p given everything before it, at p = first_scored .. len (p = len: a token
        appended after x), -inf elsewhere: where EPOConfig.operators insert draws from.
        """
        V, W = self.lm.vocab_size, ids.shape[1]
        next_tokens = next_logprobs is not None
        which = self._which(which, len(ids))
        uniq, inv = torch.unique(torch.cat([which[:, None], ids], 1), dim=0, return_inverse=True)
        n_of = lengths(uniq[:, 1:])
        ragged = bool((n_of < W).any())
        make = torch.zeros if ragged else torch.empty
        g_f, g_ce = make(len(uniq), W, V), make(len(uniq), W, V)
        nxt = torch.full((len(uniq), W + 1, V), -torch.inf) if next_tokens else None
        models = [self.lm] if self.fluency is self.lm else [self.lm, self.fluency]
        tables = [m.model.get_input_embeddings().weight for m in models]
        first = self.context.first_scored()

        def one_hot_grad(grads) -> torch.Tensor:
            # d(one_hot @ E)/d one_hot: the gradient for token v at a position is E[v] . g, with g
            # the gradient of that position's embedding, so lookups replace the one-hot product.
            return sum((g @ E.T).float().cpu() for g, E in zip(grads, tables) if g is not None)

        def run(r, n):
            x = uniq[r, 1:n + 1].to(self.lm.device)
            embs = [E[x.to(E.device)].detach().requires_grad_(True) for E in tables]
            with torch.enable_grad(), attention_implementation(self.lm.model, "eager"), \
                    attention_implementation(self.fluency.model, "eager"):
                f, ce, logits = self._forward(x, None, uniq[r, 0], (embs[0], embs[-1]),
                                              extra=int(next_tokens))
                g_f[r, :n] = one_hot_grad(torch.autograd.grad(f.sum(), embs, retain_graph=True,
                                                              allow_unused=True))
                g_ce[r, :n] = one_hot_grad(torch.autograd.grad(ce.sum(), embs, allow_unused=True))
            # The label term: CE = -1/(n-1) sum_{p>=1} sum_v X[p, v] log softmax(logits[p-1])[v]
            # (p >= 0 and 1/n after a prefix); logits row j predicts x[first + j].
            logp = logits.detach().float().log_softmax(-1).cpu()
            g_ce[r, first:n] -= logp[:, :n - first] / (n - first)
            if nxt is not None:
                nxt[r, first:n + 1] = logp
        for n in n_of.unique().tolist():
            rows = (n_of == n).nonzero().squeeze(1)
            self._in_chunks(len(rows), lambda a, b: run(rows[a:b] if ragged else slice(a, b), n))
        if nxt is not None:
            next_logprobs[:] = nxt[inv]
        return g_f[inv] - lambdas.float()[:, None, None] * g_ce[inv]


def _keys(ids: torch.Tensor, which: torch.Tensor) -> list[bytes]:
    """(B, W) prompts (padded with -1, fluentdream.ragged), (B,) target index -> memo keys:
    target index, length and the prompt's own tokens."""
    return [t.to_bytes(4, "little") + k.to_bytes(4, "little") + row[:k].tobytes()
            for t, k, row in zip(which.tolist(), lengths(ids).tolist(), ids.numpy())]


def check_same_vocab(lm, fluency) -> None:
    if lm.vocab_size != fluency.vocab_size or lm.tokenizer.get_vocab() != fluency.tokenizer.get_vocab():
        raise UserError(f"the fluency model {fluency.name!r} and the target model {lm.name!r} "
                        "have different vocabularies; both must share one tokenizer")
