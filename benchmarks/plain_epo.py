"""The baseline: EPO written the plain way, without any of fluentdream's savings (DESIGN §10).

Same algorithm as `fd.epo` (DESIGN §4), and it draws its random numbers in the same order, so on one
seed both follow the same trajectory up to floating-point rounding. What it does not do:
- every child is scored by a full forward pass over all n positions (no prefix reuse);
- a candidate seen before is scored again (no memo), duplicates included;
- every slot's gradient is recomputed every iteration (survivors do not keep theirs);
- one run at a time, in the model's dtype (fp32 in the benchmark).
It reuses fluentdream's hooks, retokenization check and step functions for the parts that are not
savings, so that the only differences are the ones being measured.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

import fluentdream as fd
from fluentdream.core.batched import reportable
from fluentdream.core.operators import mutate
from fluentdream.core.steps import initial_prompts, restart, select
from fluentdream.core.scoring import xentropy
from fluentdream.core.scoring.hooks import capture
from fluentdream.core.tokens import allowed_tokens, decode, retokenizes
from fluentdream.core.history import EPOState


def plain_forward(lm, target, ids=None, one_hot=None):
    """Full forward pass -> (f (B,), ce (B,)); one_hot (B, n, V) makes it differentiable, as the
    input and as CE's labels."""
    with capture(lm, target.sites) as acts:
        if one_hot is None:
            out = lm.model(input_ids=ids, use_cache=False)
        else:
            out = lm.model(inputs_embeds=one_hot @ lm.model.get_input_embeddings().weight,
                           use_cache=False)
        f = target.value(acts, out.logits).float()
    if one_hot is None:
        return f, xentropy(out.logits, ids)
    # The one-hot is CE's labels too (paper §2): its gradient holds the label term.
    logp = out.logits[:, :-1].float().log_softmax(-1)                  # (B, n-1, V)
    return f, -(one_hot[:, 1:].float() * logp).sum(-1).mean(1)


@torch.no_grad()
def plain_score(lm, target, ids, batch_size, retokenize=True):
    """(B, n) -> f, ce: every row through the whole model; rejected rows (-inf, nan): those the
    target bans and, with retokenize, those that do not retokenize."""
    bad = target.rejects(decode(lm.tokenizer, ids))
    if retokenize:
        bad |= ~retokenizes(lm.tokenizer, ids)
    f, ce = torch.full((len(ids),), -torch.inf), torch.full((len(ids),), torch.nan)
    rows = torch.from_numpy(~bad).nonzero().squeeze(1)
    for a in range(0, len(rows), batch_size):
        r = rows[a:a + batch_size]
        f[r], ce[r] = (x.cpu() for x in plain_forward(lm, target, ids[r].to(lm.device)))
    return f, ce


def plain_gradients(lm, target, ids, lambdas):
    """(M, n) -> (M, n, V) gradient of f - lambda * CE w.r.t. the one-hot tokens."""
    one_hot = F.one_hot(ids.to(lm.device), lm.vocab_size).to(lm.dtype).requires_grad_(True)
    with torch.enable_grad():
        f, ce = plain_forward(lm, target, one_hot=one_hot)
        (f - lambdas.to(f.device) * ce).sum().backward()
    return one_hot.grad.float().cpu()


def plain_epo(lm, target, cfg: fd.EPOConfig, timer: dict | None = None) -> fd.History:
    """EPO without savings; `timer` (if given) accumulates seconds spent scoring children
    (score_seconds, score_tokens) and computing gradients (grad_seconds)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lambdas = torch.tensor(cfg.lambdas, dtype=torch.float32)
    allowed = allowed_tokens(lm)
    M, r = cfg.population_size, cfg.explore_per_pop
    ids = initial_prompts(lm, cfg, gen)
    f0, ce0 = plain_score(lm, target, ids, cfg.batch_size, cfg.retokenize)
    state = EPOState(0, ids.numpy(), f0.numpy(), ce0.numpy(),
                     np.zeros((M, cfg.seq_len, cfg.topk), np.int32), np.ones(M, bool), None)
    hist = fd.History(lambdas=cfg.lambdas.copy(), meta=dict(method="plain", target=target.name))
    for t in range(cfg.iters):
        t0 = time.perf_counter()
        grad = plain_gradients(lm, target, torch.from_numpy(state.slot_ids), lambdas)
        if timer is not None:
            timer["grad_seconds"] = timer.get("grad_seconds", 0.0) + time.perf_counter() - t0
        grad[..., ~allowed] = -torch.inf
        state.topk = grad.topk(cfg.topk, dim=-1).indices.to(torch.int32).numpy()
        children = mutate(state, r, gen)
        t1 = time.perf_counter()
        f_kids, ce_kids = plain_score(lm, target, children, cfg.batch_size, cfg.retokenize)
        if timer is not None:
            timer["score_seconds"] = timer.get("score_seconds", 0.0) + time.perf_counter() - t1
            timer["score_tokens"] = timer.get("score_tokens", 0) + children.numel()
        pool = torch.cat([torch.from_numpy(state.slot_ids), children])
        f = torch.cat([torch.from_numpy(state.slot_target), f_kids])
        ce = torch.cat([torch.from_numpy(state.slot_xentropy), ce_kids])
        kept = select(f, ce, lambdas)
        lam_r = float("nan")
        if cfg.restart_frequency and t % cfg.restart_frequency == 0:
            kept, lam_r = restart(f, ce, M, cfg, gen)
        state.slot_ids = pool[kept].numpy()
        state.slot_target, state.slot_xentropy = f[kept].numpy(), ce[kept].numpy()
        hist.append(pool.numpy(), f.numpy(), ce.numpy(), kept.numpy(), lam_r,
                    time.perf_counter() - t0, len(children),
                    valid=reportable(lm.tokenizer, pool, f, ce, cfg.retokenize))
    return hist
