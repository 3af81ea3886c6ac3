"""The proposal gradient of EPO (paper §2, DESIGN §4 steps 2 and 7): d(f - lambda * CE) / d X
for the one-hot tokens X of every slot's prompt, through the target and fluency models of a
`fluentdream.core.scoring.Scorer` (its context and targets), in chunks that back off when
memory runs out (chunks.py).

    g = one_hot_gradients(scorer, ids, lambdas)     # (M, n), (M,) -> (M, n, V); Scorer.gradients
"""
from __future__ import annotations

import torch

from ..ragged import lengths
from .chunks import in_chunks
from .forward import forward_logits
from .packed import attention_implementation


def one_hot_gradients(scorer, ids: torch.Tensor, lambdas: torch.Tensor, which=None,
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
    with -1, fluentdream.core.ragged) go one length at a time, n their own in the formula above;
    a row's gradient past its end is 0.

    next_logprobs, optional (M, W + 1, V) float32, is filled from the same pass (one more
    logit row per prompt) with the fluency model's log-probabilities of the token at each x
    position p given everything before it, at p = first_scored .. len (p = len: a token
    appended after x), -inf elsewhere: where EPOConfig.operators insert draws from.
    """
    V, W = scorer.lm.vocab_size, ids.shape[1]
    next_tokens = next_logprobs is not None
    which = scorer.row_targets(which, len(ids))
    uniq, inv = torch.unique(torch.cat([which[:, None], ids], 1), dim=0, return_inverse=True)
    n_of = lengths(uniq[:, 1:])
    ragged = bool((n_of < W).any())
    make = torch.zeros if ragged else torch.empty
    g_f, g_ce = make(len(uniq), W, V), make(len(uniq), W, V)
    nxt = torch.full((len(uniq), W + 1, V), -torch.inf) if next_tokens else None
    models = [scorer.lm] if scorer.fluency is scorer.lm else [scorer.lm, scorer.fluency]
    tables = [m.model.get_input_embeddings().weight for m in models]
    first = scorer.context.first_scored()

    def one_hot_grad(grads) -> torch.Tensor:
        # d(one_hot @ E)/d one_hot: the gradient for token v at a position is E[v] . g, with g
        # the gradient of that position's embedding, so lookups replace the one-hot product.
        return sum((g @ E.T).float().cpu() for g, E in zip(grads, tables) if g is not None)

    def run(r, n):
        x = uniq[r, 1:n + 1].to(scorer.lm.device)
        embs = [E[x.to(E.device)].detach().requires_grad_(True) for E in tables]
        with torch.enable_grad(), attention_implementation(scorer.lm.model, "eager"), \
                attention_implementation(scorer.fluency.model, "eager"):
            f, ce, logits = forward_logits(scorer, x, None, uniq[r, 0], (embs[0], embs[-1]),
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
        in_chunks(scorer, len(rows), lambda a, b: run(rows[a:b] if ragged else slice(a, b), n))
    if nxt is not None:
        next_logprobs[:] = nxt[inv]
    return g_f[inv] - lambdas.float()[:, None, None] * g_ce[inv]
