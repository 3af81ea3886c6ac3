"""Scoring prompts: target value, self cross-entropy, one-hot gradients (paper §2, DESIGN §10).

    scorer = Scorer(lm, target)                     # fluency model = lm unless given
    f, ce = scorer.score(ids)                       # ids (B, n) -> (B,), (B,); no grad
    f, ce = scorer.score(children, parents=rows)    # same numbers, reusing each parent's prefix
    g = scorer.gradients(ids, lambdas)              # (M, n) -> (M, n, V): d(f - lambda*CE)/d one-hot

CE is the mean next-token cross-entropy of the prompt's own tokens: logits at positions 0..n-2
scored against tokens 1..n-1, no BOS, computed in float32. Rejected prompts (banned text, failed
retokenization) score target = -inf and CE = nan and are never run through the model.

Where the time goes (DESIGN §10): an EPO child differs from its parent from position p on. The
parent's keys/values before p, its log-probabilities there and (for targets that read every
position) its activations there are unchanged, so they are computed once per parent and only
positions p..n-1 of each child run through the model, children grouped by p. A prompt scored
before by this scorer is not scored again (`memo`). A batch that runs out of memory is halved and
retried. One scorer can serve several targets on one model (`fluentdream.batched`): the captured
activations of one forward pass feed every target.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .targets import AttentionEntry, Logit, Neuron, ResidualDirection, SAELatent, Site, Target

log = logging.getLogger(__name__)

# Targets whose value at position "last" depends on the last position's activations alone.
_PER_POSITION = (Neuron, Logit, ResidualDirection, AttentionEntry, SAELatent)


@contextmanager
def capture(lm, sites: tuple[Site, ...]):
    """Hooks that fill a dict {site: activation} on every forward pass of `lm.model`."""
    acts: dict[Site, torch.Tensor] = {}
    handles = []

    def save_input(site):
        def hook(module, args, kwargs):
            acts[site] = args[0] if args else kwargs["hidden_states"]
        return hook

    def save_attn(site):
        def hook(module, args, output):
            acts[site] = output[1]
        return hook

    needs_eager = any(kind == "attn" for kind, _ in sites)
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
            elif kind == "attn":
                handles.append(lm.attention(layer).register_forward_hook(save_attn(site)))
            else:
                raise ValueError(f"unknown site kind {kind!r}; allowed: mlp, resid, attn")
        yield acts
    finally:
        for h in handles:
            h.remove()
        if needs_eager:
            lm.model.set_attn_implementation(previous)


def xentropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, n, V), (B, n) -> (B,) mean CE of tokens 1..n-1 given their prefixes, in float32."""
    B, n, V = logits.shape
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                         reduction="none")
    return ce.view(B, n - 1).mean(dim=1)


@functools.lru_cache(maxsize=8)
def _allowed_cached(tokenizer, vocab_size: int) -> torch.Tensor:
    n = min(len(tokenizer), vocab_size)
    texts = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(n)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    ok[:n] = torch.tensor([e == [i] and "\ufffd" not in t for i, (e, t) in enumerate(zip(encoded, texts))])
    ok[list(tokenizer.all_special_ids)] = False
    return ok


def allowed_tokens(lm) -> torch.Tensor:
    """(V,) bool: tokens that may be drawn or proposed: not special, survive decode -> encode."""
    return _allowed_cached(lm.tokenizer, lm.vocab_size)


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.batch_decode(ids.tolist(), clean_up_tokenization_spaces=False)


def retokenizes(tokenizer, ids: torch.Tensor) -> np.ndarray:
    """(B, n) -> (B,) bool: decoding then encoding gives back exactly these tokens."""
    back = tokenizer(decode(tokenizer, ids), add_special_tokens=False)["input_ids"]
    return np.array([b == row for b, row in zip(back, ids.tolist())], dtype=bool)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def plan_groups(counts: list[int], overhead: float) -> list[int]:
    """counts[p] children first differ from their parent at p (n = len(counts)) -> for every p
    the position its group starts computing from (<= p).

    A group is one forward pass over positions s..n-1 of its children; it costs `overhead` (in
    token-positions: call, kernel launches, hooks) plus one unit per child and computed position.
    Merging neighbouring p into one pass trades a little recomputation for fewer calls; the
    cheapest contiguous split is found by dynamic programming over p.
    """
    n = len(counts)
    best, cut = [0.0] * (n + 1), [n] * (n + 1)
    for s in range(n - 1, -1, -1):
        best[s] = float("inf")
        for e in range(s + 1, n + 1):
            rows = sum(counts[s:e])
            cost = (overhead + rows * (n - s) if rows else 0.0) + best[e]
            if cost < best[s]:
                best[s], cut[s] = cost, e
    start, s = [0] * n, 0
    while s < n:
        start[s:cut[s]] = [s] * (cut[s] - s)
        s = cut[s]
    return start


@dataclass
class _Prefix:
    """What children may reuse from U parent prompts of length n (computed once per call)."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer of lm: (U, heads, n, head_dim) x 2
    acts: dict[Site, torch.Tensor]    # (U, n, d) or, for attn, (U, heads, n, n)
    logits: torch.Tensor | None       # (U, n, V) lm logits, kept only when a target reads them all
    flu_kv: list | None               # the fluency model's kv when it is not lm
    logp: torch.Tensor                # (U, n-1, V) float32 fluency log-softmax at positions 0..n-2
    nll: torch.Tensor                 # (U, n-1) each parent's own next-token losses


def _layer_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _join_kv(chunks: list[list]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks]))
            for i in range(len(chunks[0]))]


def _cache(kv, rows: torch.Tensor, p: int):
    """A DynamicCache holding positions < p of the parents `rows` (one per child), or None."""
    from transformers import DynamicCache
    return DynamicCache([(k[rows, :, :p], v[rows, :, :p]) for k, v in kv]) if p else None


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits predicting (B, L) tokens -> (B, L) float32 losses."""
    B, L, V = logits.shape
    return F.cross_entropy(logits.reshape(-1, V).float(), ids.reshape(-1).to(logits.device),
                           reduction="none").view(B, L)


class Scorer:
    """Target + fluency scoring of token prompts for one (model, target(s), fluency model).

    `target` may be a sequence of targets on the same model; then `score`, `gradients` and
    `forward` take `which` (B,), the target index of every row (fluentdream.batched).
    reuse_prefix=False and memo_size=0 turn the savings off (benchmarks, exactness tests).
    """

    def __init__(self, lm, target: Target | Sequence[Target], fluency=None,
                 batch_size: int = 256, retokenize: bool = True, *, reuse_prefix: bool = True,
                 memo_size: int = 1_000_000, group_overhead: float = 32.0):
        self.lm, self.batch_size, self.retokenize = lm, batch_size, retokenize
        self.targets = (target,) if isinstance(target, Target) else tuple(target)
        self.sites = tuple(sorted({s for t in self.targets for s in t.sites}))
        self.fluency = fluency if fluency is not None else lm
        if self.fluency is not lm:
            check_same_vocab(lm, self.fluency)
        self.reuse_prefix, self.memo_size, self.group_overhead = reuse_prefix, memo_size, group_overhead
        self.memo: dict[bytes, tuple[float, float]] = {}   # (target index, tokens) -> (f, ce)
        self.counts = dict(requested=0, model_rows=0, model_tokens=0, parent_rows=0)
        # Built-in targets other than Logit never read logits; at "last" they read one position.
        self.reads_logits = not all(isinstance(t, _PER_POSITION) and not isinstance(t, Logit)
                                    for t in self.targets)
        self.reads_prefix = not all(isinstance(t, _PER_POSITION) and t.position == "last"
                                    for t in self.targets)

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
            bad |= ~retokenizes(self.lm.tokenizer, ids)
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

    def _pass(self, model, x=None, emb=None, cache=None, capture_sites=(), for_target=False):
        """One forward of `model` on tokens x (B, L) or embeddings emb (B, L, d) after `cache`
        -> (acts, logits). Logits of the last position are dropped unless a target reads them:
        CE never uses them."""
        L = (x if x is not None else emb).shape[1]
        keep = 0 if (for_target and self.reads_logits) else torch.arange(L - 1, device=model.device)
        with capture(self.lm, capture_sites) as acts:
            out = model.model(input_ids=x, inputs_embeds=emb, cache=cache, use_cache=False,
                              logits_to_keep=keep)
        return acts, out.logits

    def forward(self, ids: torch.Tensor | None = None, one_hot: torch.Tensor | None = None,
                which=None):
        """One batch through target and fluency models -> (f (B,), ce (B,)), float32.

        Give `ids` (B, n), or `one_hot` (B, n, V) to differentiate through the embeddings.
        """
        if one_hot is not None:
            ids = one_hot.argmax(-1)
        ids = ids.to(self.lm.device)
        emb = None if one_hot is None else one_hot @ self.lm.model.get_input_embeddings().weight
        acts, logits = self._pass(self.lm, None if emb is not None else ids, emb,
                                  capture_sites=self.sites, for_target=True)
        f = self._values(acts, logits, self._which(which, len(ids)))
        if self.fluency is not self.lm:
            emb = None if one_hot is None else one_hot.to(self.fluency.device, self.fluency.dtype) \
                @ self.fluency.model.get_input_embeddings().weight
            _, logits = self._pass(self.fluency, None if emb is not None else ids.to(self.fluency.device), emb)
        n = ids.shape[1]
        ce = _nll(logits[:, :n - 1], ids[:, 1:]).mean(1)
        return f, ce.to(f.device)

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
        """(B, n) -> f (B,), ce (B,) on CPU, float32; rejected rows are (-inf, nan).

        parents (B, n), optional: a prompt each row was made from. Positions before the first
        difference are then reused from the parent instead of recomputed; the numbers are the
        same up to floating-point rounding. Prompts this scorer has scored before are looked up.
        """
        B = len(ids)
        which = self._which(which, B)
        keys = [t.to_bytes(4, "little") + row.tobytes() for t, row in zip(which.tolist(), ids.numpy())]
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
        for t, row, fi, ci in zip(self._which(which, len(ids)).tolist(), ids.numpy(),
                                  torch.as_tensor(f).tolist(), torch.as_tensor(ce).tolist()):
            key = t.to_bytes(4, "little") + row.tobytes()
            if key not in self.memo:
                new.setdefault(key, (fi, ci))
        if len(self.memo) + len(new) > self.memo_size:
            self.memo.clear()
        if len(new) <= self.memo_size:
            self.memo.update(new)

    def _score_new(self, ids, parents, which) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct unseen rows -> (f, ce): reject, then one forward pass per group of rows
        that share the first position to compute (plan_groups)."""
        f = torch.full((len(ids),), -torch.inf)
        ce = torch.full((len(ids),), torch.nan)
        keep = torch.from_numpy(~self.rejected(ids, which)).nonzero().squeeze(1)
        if len(keep) == 0:
            return f, ce
        ids, which = ids[keep], which[keep]
        n = ids.shape[1]
        start = torch.zeros(len(ids), dtype=torch.long)    # first position each row computes
        prefix = owner = None
        if parents is not None and self.reuse_prefix:
            diff = ids != parents[keep]
            first = torch.where(diff.any(1), diff.int().argmax(1), 0)  # identical rows: full pass
            start = torch.tensor(plan_groups(torch.bincount(first, minlength=n).tolist(),
                                             self.group_overhead))[first]
            if (start > 0).any():
                uniq, owner = torch.unique(parents[keep], dim=0, return_inverse=True)
                prefix = self._prefix(uniq)
        fk, cek = torch.empty(len(ids)), torch.empty(len(ids))
        for p in start.unique().tolist():
            rows = (start == p).nonzero().squeeze(1)

            def run(a, b, rows=rows, p=p):
                r = rows[a:b]
                fk[r], cek[r] = self._suffix(ids[r], p, prefix, None if owner is None else owner[r],
                                             which[r])
            self._in_chunks(len(rows), run)
            self.counts["model_tokens"] += len(rows) * (n - p)
        self.counts["model_rows"] += len(ids)
        f[keep], ce[keep] = fk, cek
        return f, ce

    def _prefix(self, parents: torch.Tensor) -> _Prefix:
        """Run U distinct parents (U, n) once, keeping what their children reuse."""
        kv, acts, logits, flu_kv, logp = [], {}, [], [], []

        def run(a, b):
            x = parents[a:b].to(self.lm.device)
            with capture(self.lm, self.sites) as got:
                out = self.lm.model(input_ids=x, use_cache=True)
            kv.append(_layer_kv(out.cache))
            for s, v in got.items():
                acts.setdefault(s, []).append(v)
            if self.reads_logits and self.reads_prefix:
                logits.append(out.logits)
            flu = out
            if self.fluency is not self.lm:
                flu = self.fluency.model(input_ids=x.to(self.fluency.device), use_cache=True)
                flu_kv.append(_layer_kv(flu.cache))
            logp.append(torch.log_softmax(flu.logits[:, :-1].float(), dim=-1))
        self._in_chunks(len(parents), run)
        self.counts["parent_rows"] += len(parents)
        logp = torch.cat(logp)
        nxt = parents[:, 1:].to(logp.device)
        return _Prefix(kv=_join_kv(kv), acts={s: torch.cat(v) for s, v in acts.items()},
                       logits=torch.cat(logits) if logits else None,
                       flu_kv=_join_kv(flu_kv) if flu_kv else None, logp=logp,
                       nll=-logp.gather(2, nxt[..., None]).squeeze(2))

    def _suffix(self, ids, p: int, pre: _Prefix | None, owner, which):
        """(B, n) rows equal to their parents (`owner` into `pre`) before position p ->
        (f, ce) computing positions p..n-1 only; p = 0 is an ordinary full forward pass."""
        if p == 0:
            f, ce = self.forward(ids, which=which)
            return f.cpu(), ce.cpu()
        n = ids.shape[1]
        x = ids[:, p:].to(self.lm.device)
        own = owner.to(self.lm.device)
        acts, logits = self._pass(self.lm, x, cache=_cache(pre.kv, own, p),
                                  capture_sites=self.sites, for_target=True)
        flu_logits = logits[:, :n - 1 - p]                            # predict tokens p+1..n-1
        if self.reads_prefix:  # targets see whole prompts: the parent's prefix, then ours
            acts = {s: torch.cat([pre.acts[s][own, :, :p] if s[0] == "attn" else pre.acts[s][own, :p], a],
                                 dim=2 if s[0] == "attn" else 1) for s, a in acts.items()}
            if pre.logits is not None:
                logits = torch.cat([pre.logits[own, :p], logits], dim=1)
        f = self._values(acts, logits, which)
        if self.fluency is not self.lm:
            fx = x.to(self.fluency.device)
            _, flu_logits = self._pass(self.fluency, fx, cache=_cache(pre.flu_kv, owner.to(fx.device), p))
        own, y = owner.to(pre.logp.device), ids.to(pre.logp.device)
        before = pre.nll[own, :p - 1].sum(1)                           # tokens 1..p-1: unchanged
        at_p = -pre.logp[own, p - 1, y[:, p]]                          # token p: parent's logits
        after = _nll(flu_logits, y[:, p + 1:]).sum(1).to(before.device)  # tokens p+1..n-1
        return f.cpu(), ((before + at_p + after) / (n - 1)).cpu()

    def gradients(self, ids: torch.Tensor, lambdas: torch.Tensor, which=None) -> torch.Tensor:
        """(M, n), (M,) -> (M, n, V) float32 gradient of f - lambda * CE w.r.t. the one-hot tokens.

        Each row's objective depends on that row alone, so one backward of the sum gives every
        row its own gradient, with its own lambda (paper §2; DESIGN §4 step 7).
        """
        V = self.lm.vocab_size
        which = self._which(which, len(ids))
        grads = torch.empty(len(ids), ids.shape[1], V)

        def run(a, b):
            one_hot = F.one_hot(ids[a:b].to(self.lm.device), V).to(self.lm.dtype).requires_grad_(True)
            with torch.enable_grad():
                f, ce = self.forward(one_hot=one_hot, which=which[a:b])
                lam = lambdas[a:b].to(f.device, torch.float32)
                (f - lam * ce).sum().backward()
            grads[a:b] = one_hot.grad.float().cpu()
        self._in_chunks(len(ids), run)
        return grads


def check_same_vocab(lm, fluency) -> None:
    if lm.vocab_size != fluency.vocab_size or lm.tokenizer.get_vocab() != fluency.tokenizer.get_vocab():
        raise ValueError(f"the fluency model {fluency.name!r} and the target model {lm.name!r} "
                         "have different vocabularies; both must share one tokenizer")
