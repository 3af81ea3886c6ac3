"""Scoring prompts: target value, self cross-entropy, one-hot gradients (paper §2, DESIGN §10).

    scorer = Scorer(lm, target)                     # fluency model = lm unless given
    f, ce = scorer.score(ids)                       # ids (B, n) -> (B,), (B,); no grad
    f, ce = scorer.score(children, parents=rows)    # same numbers, reusing each parent's prefix
    f = scorer.values(ids)                          # f alone, the pass ending at the target
    g = scorer.gradients(ids, lambdas)              # (M, n) -> (M, n, V): d(f - lambda*CE)/d one-hot

CE is the mean next-token cross-entropy of the prompt's own tokens: logits at positions 0..n-2
scored against tokens 1..n-1, no BOS, computed in float32. Prompts the target bans (a Logit's
goal text) and, with retokenize, prompts whose decoded text does not encode back to them score
target = -inf and CE = nan and are never run through the model: the search never holds them
(rejecting them there did better on SmolLM2 than passing through them; LOG.md, 2026-12-07).

The Scorer is the public face; the work is done in its neighbours:
  packed_scoring  prompts not seen before, one packed pass per chunk, children reusing parents
  memo            prompts seen before are looked up, not scored again
  forward         the models' own differentiable pass (Scorer.forward, the gradients)
  gradients       the proposal gradient d(f - lambda * CE) / d one-hot
  chunks          batches halved when they run out of memory
One scorer can serve several targets on one model (fluentdream.core.batched): the captured
activations of one pass feed every target.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...targets.kinds import AttentionEntry, Logit, Neuron, ResidualDirection, SAELatent, Target
from ..context import Context
from ..tokens import check_same_vocab, decode, retokenizes
from .forward import forward_logits
from .gradients import one_hot_gradients
from .memo import Memo, prompt_keys
from .packed_scoring import score_new

# Targets whose value at position "last" depends on the last position's activations alone.
_PER_POSITION = (Neuron, Logit, ResidualDirection, AttentionEntry, SAELatent)


class Scorer:
    """Target + fluency scoring of token prompts for one (model, target(s), fluency model).

    `target` may be a sequence of targets on the same model; then `score`, `gradients` and
    `forward` take `which` (B,), the target index of every row (fluentdream.core.batched).
    reuse_prefix=False and memo_size=0 turn the savings off: every prompt then goes through the
    model's own forward pass, unpacked (benchmarks, exactness tests).
    `context` holds fixed tokens around every prompt (fluentdream.core.context): the methods
    take and return the optimized tokens x (B, n) only, and the models read prefix + x + suffix.
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

    def row_targets(self, which, B: int) -> torch.Tensor:
        """(B,) long: each row's target index; None = the first target for all."""
        return torch.zeros(B, dtype=torch.long) if which is None else torch.as_tensor(which).long()

    def rejected(self, ids: torch.Tensor, which=None) -> np.ndarray:
        """(B, n) -> (B,) bool: prompts the target bans, or (with retokenize) that do not
        retokenize."""
        texts = decode(self.lm.tokenizer, ids)
        bad = self.banned(texts, which)
        if self.retokenize:
            bad |= ~retokenizes(self.lm.tokenizer, ids, texts)
        return bad

    def banned(self, texts: list[str], which=None) -> np.ndarray:
        """B decoded prompts -> (B,) bool: those their row's target bans (a Logit's goal text)."""
        which = self.row_targets(which, len(texts)).numpy()
        bad = np.zeros(len(texts), dtype=bool)
        for t, target in enumerate(self.targets):
            rows = np.flatnonzero(which == t)
            if len(rows):
                bad[rows] = target.rejects([texts[i] for i in rows])
        return bad

    def forward(self, ids: torch.Tensor | None = None, one_hot: torch.Tensor | None = None,
                which=None, embeds: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch through target and fluency models -> (f (B,), ce (B,)), float32.

        Give `ids` (B, n); to differentiate through the embeddings, also `one_hot` (B, n, V)
        (a relaxed one-hot works too) or `embeds`, the (B, n, d) input embeddings of the target
        and of the fluency model. With `one_hot`, CE reads it as the labels too (paper §2):
        CE = -mean_p sum_v one_hot[p, v] log softmax(logits[p - 1])[v], over p >= 1 (p >= 0
        after a prefix, whose last position predicts x's first token). The context's tokens
        are constants around x (fluentdream.core.context).
        """
        f, ce, _ = forward_logits(self, ids, one_hot, which, embeds)
        return f, ce

    @torch.no_grad()
    def score(self, ids: torch.Tensor, parents: torch.Tensor | None = None,
              which=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) -> f (B,), ce (B,) on CPU, float32; rejected rows are (-inf, nan): prompts the
        target bans, and with retokenize those that do not retokenize. Rows may be shorter than
        n, padded with -1 (fluentdream.core.ragged).

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
        which = self.row_targets(which, B)
        keys = prompt_keys(ids, which)
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
            f_new, ce_new = score_new(self, ids[rows], None if parents is None else parents[rows],
                                      which[rows])
            computed[rows.numpy()] = torch.isfinite(ce_new).numpy()   # rejected: CE nan
            new = dict(zip(todo, zip(f_new.tolist(), ce_new.tolist())))
            known.update(new)
            self.memo.add(new)
        values = torch.tensor([known[key] for key in keys], dtype=torch.float32).view(B, 2)
        return values[:, 0].contiguous(), values[:, 1].contiguous(), computed

    @torch.no_grad()
    def values(self, ids: torch.Tensor, which=None) -> torch.Tensor:
        """(B, n) -> f (B,) on CPU, float32: the target values of score() alone, without the
        fluency pass and with the model run only as deep as the targets read (attribution
        scores many swaps and needs no CE). Rejected rows are -inf; nothing is memoized."""
        f, _ = score_new(self, ids, None, self.row_targets(which, len(ids)), fluency=False)
        return f

    def remember(self, ids: torch.Tensor, f, ce, which=None) -> None:
        """Enter prompts (B, n) scored earlier, with their f (B,) and ce (B,), into the memo exactly
        as score() would have: a resumed run then batches, reuses and rounds like an
        uninterrupted one, so its History is identical (DESIGN §7)."""
        new: dict[bytes, tuple[float, float]] = {}
        keys = prompt_keys(ids, self.row_targets(which, len(ids)))
        for key, fi, ci in zip(keys, np.asarray(f).tolist(), np.asarray(ce).tolist()):
            if key not in self.memo:
                new.setdefault(key, (fi, ci))
        self.memo.add(new)

    def gradients(self, ids: torch.Tensor, lambdas: torch.Tensor, which=None,
                  next_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """(M, n), (M,) -> (M, n, V) float32 gradient of f - lambda * CE w.r.t. the one-hot
        tokens, each slot with its own lambda; next_logprobs (M, n + 1, V), optional, receives
        the fluency model's next-token log-probabilities from the same pass
        (fluentdream.core.scoring.gradients.one_hot_gradients has the formula)."""
        return one_hot_gradients(self, ids, lambdas, which, next_logprobs)
