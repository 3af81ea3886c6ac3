"""Scoring prompts: target value, self cross-entropy, one-hot gradients (paper §2).

    scorer = Scorer(lm, target)                     # fluency model = lm unless given
    f, ce = scorer.score(ids)                       # ids (B, n) -> (B,), (B,); no grad
    g = scorer.gradients(ids, lambdas)              # (M, n) -> (M, n, V): d(f - lambda*CE)/d one-hot

CE is the mean next-token cross-entropy of the prompt's own tokens: logits at positions 0..n-2
scored against tokens 1..n-1, no BOS, computed in float32. Rejected prompts (banned text, failed
retokenization) score target = -inf and CE = nan and are never run through the model.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .targets import Site, Target


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


class Scorer:
    """Target + fluency scoring of token prompts for one (model, target, fluency model)."""

    def __init__(self, lm, target: Target, fluency=None, batch_size: int = 256,
                 retokenize: bool = True):
        self.lm, self.target, self.batch_size, self.retokenize = lm, target, batch_size, retokenize
        self.fluency = fluency if fluency is not None else lm
        if self.fluency is not lm:
            check_same_vocab(lm, self.fluency)

    def rejected(self, ids: torch.Tensor) -> np.ndarray:
        """(B, n) -> (B,) bool: prompts the target bans or that do not retokenize."""
        bad = self.target.rejects(decode(self.lm.tokenizer, ids))
        if self.retokenize:
            bad |= ~retokenizes(self.lm.tokenizer, ids)
        return bad

    def forward(self, ids: torch.Tensor | None = None, one_hot: torch.Tensor | None = None):
        """One batch through target and fluency models -> (f (B,), ce (B,)), float32.

        Give `ids` (B, n), or `one_hot` (B, n, V) to differentiate through the embeddings.
        """
        if one_hot is not None:
            ids = one_hot.argmax(-1)
        ids = ids.to(self.lm.device)
        with capture(self.lm, self.target.sites) as acts:
            if one_hot is None:
                out = self.lm.model(input_ids=ids, use_cache=False)
            else:
                emb = one_hot @ self.lm.model.get_input_embeddings().weight
                out = self.lm.model(inputs_embeds=emb, use_cache=False)
            f = self.target.value(acts, out.logits).float()
        logits = out.logits
        if self.fluency is not self.lm:
            if one_hot is None:
                logits = self.fluency.model(input_ids=ids.to(self.fluency.device), use_cache=False).logits
            else:
                emb = one_hot.to(self.fluency.device, self.fluency.dtype) @ \
                    self.fluency.model.get_input_embeddings().weight
                logits = self.fluency.model(inputs_embeds=emb, use_cache=False).logits
        return f, xentropy(logits, ids.to(logits.device)).to(f.device)

    @torch.no_grad()
    def score(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) -> f (B,), ce (B,) on CPU, float32; rejected rows are (-inf, nan)."""
        f = torch.full((len(ids),), -torch.inf)
        ce = torch.full((len(ids),), torch.nan)
        keep = torch.from_numpy(~self.rejected(ids))
        rows = keep.nonzero().squeeze(1)
        for start in range(0, len(rows), self.batch_size):
            idx = rows[start:start + self.batch_size]
            fb, ceb = self.forward(ids[idx])
            f[idx], ce[idx] = fb.cpu(), ceb.cpu()
        return f, ce

    def gradients(self, ids: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
        """(M, n), (M,) -> (M, n, V) float32 gradient of f - lambda * CE w.r.t. the one-hot tokens.

        Each row's objective depends on that row alone, so one backward of the sum gives every
        row its own gradient, with its own lambda (paper §2; DESIGN §4 step 7).
        """
        V = self.lm.vocab_size
        grads = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size].to(self.lm.device)
            one_hot = F.one_hot(chunk, V).to(self.lm.dtype).requires_grad_(True)
            with torch.enable_grad():
                f, ce = self.forward(one_hot=one_hot)
                lam = lambdas[start:start + self.batch_size].to(f.device, torch.float32)
                (f - lam * ce).sum().backward()
            grads.append(one_hot.grad.float().cpu())
        return torch.cat(grads)


def check_same_vocab(lm, fluency) -> None:
    if lm.vocab_size != fluency.vocab_size or lm.tokenizer.get_vocab() != fluency.tokenizer.get_vocab():
        raise ValueError(f"the fluency model {fluency.name!r} and the target model {lm.name!r} "
                         "have different vocabularies; both must share one tokenizer")
