"""The proposal gradient is the paper's (§2): d(f - lambda*CE)/d one-hot, with the one-hot both the
model's input and CE's labels, checked against plain autograd on the HF model on every supported
architecture.

The reference computation below is written from the paper's definition and uses nothing of
fluentdream: the MLP module paths are spelled out here, the neuron is read by a hook registered
here, and CE = -mean_{p>=1} sum_v X[p, v] log softmax(logits[p-1])[v] with X the one-hot.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import ARCHS, VOCAB
from fluentdream.core.steps import propose
from fluentdream.core.tokens import allowed_tokens
from fluentdream.core.history import EPOState

# Module whose input is layer L's MLP hidden units, per architecture (HF module names).
MLP_OUT = {"gpt_neox": "gpt_neox.layers.{L}.mlp.dense_4h_to_h", "phi": "model.layers.{L}.mlp.fc2",
           "gpt2": "transformer.h.{L}.mlp.c_proj", "llama": "model.layers.{L}.mlp.down_proj",
           "mistral": "model.layers.{L}.mlp.down_proj", "qwen2": "model.layers.{L}.mlp.down_proj"}
LAYER, NEURON = 1, 5


def paper_gradient(model, arch, ids, lam, fluency_model=None):
    """(n,) tokens -> (n, V) d(f - lam*CE)/dX by plain autograd; f = neuron NEURON of layer LAYER
    at the last position; CE under `fluency_model` (default: the same model), X its labels too."""
    fluency_model = fluency_model or model
    X = F.one_hot(ids, model.config.vocab_size).float()[None].requires_grad_(True)   # (1, n, V)
    seen = []
    module = model.get_submodule(MLP_OUT[arch].format(L=LAYER))
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.enable_grad():
            model(inputs_embeds=X @ model.get_input_embeddings().weight)
            f = seen[0][0, -1, NEURON]
            logits = fluency_model(inputs_embeds=X @ fluency_model.get_input_embeddings().weight).logits
            logp = logits[0, :-1].log_softmax(-1)                                      # (n-1, V)
            ce = -(X[0, 1:] * logp).sum(-1).mean()
            (f - lam * ce).backward()
    finally:
        handle.remove()
    return X.grad[0]


def ids_for(seed, B=3, n=7):
    return torch.randint(1, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


def assert_same_topk(proposed: np.ndarray, want: torch.Tensor, allowed: torch.Tensor, k: int):
    """Each position's proposed k tokens are a top-k set of `want` (n, V) over allowed tokens:
    none scores below the k-th best (up to rounding), none repeats, all are allowed."""
    masked = want.masked_fill(~allowed, -torch.inf)
    kth = masked.topk(k, dim=-1).values[:, -1]                                          # (n,)
    for p, row in enumerate(proposed):
        assert len(set(row.tolist())) == k and allowed[row].all()
        assert (masked[p, row] >= kth[p] - 1e-5).all(), f"position {p}"


@pytest.mark.parametrize("arch", ARCHS)
def test_proposal_gradient_is_the_papers(make_lm, arch):
    lm = make_lm(arch)
    ids = ids_for(seed=ARCHS.index(arch))
    ids[2] = ids[0]                                  # one prompt in two slots, two lambdas
    lambdas = torch.tensor([0.1, 1.4, 10.0])
    scorer = fd.Scorer(lm, fd.Neuron(LAYER, NEURON), retokenize=False)
    grad = scorer.gradients(ids, lambdas)                                              # (3, n, V)
    want = torch.stack([paper_gradient(lm.model, arch, row, lam) for row, lam in zip(ids, lambdas)])
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=2e-5)

    assert_proposes_top_k(scorer, ids, lambdas, want)


def assert_proposes_top_k(scorer, ids, lambdas, want: torch.Tensor, k: int = 16) -> None:
    """What EPO proposes for prompts ids (M, n) with penalties (M,) is each slot's top-k tokens
    per position of the gradient `want` (M, n, V) (DESIGN §4 step 2)."""
    M, n = ids.shape
    state = EPOState(0, ids.numpy(), np.zeros(M, np.float32), np.zeros(M, np.float32),
                     np.zeros((M, n, k), np.int32), np.zeros(M, bool), None)
    allowed = allowed_tokens(scorer.lm)
    propose(scorer, state, lambdas, allowed, k)
    for i in range(M):
        assert_same_topk(state.topk[i], want[i], allowed, k)


def test_label_term_moves_the_proposals(make_lm):
    """Without the label term the top-k sets differ on a high-lambda slot: the check above is
    not vacuous, and the term is large where fluency weighs most."""
    lm = make_lm("llama")
    ids = ids_for(seed=7, B=1)
    lam = torch.tensor([10.0])
    grad = fd.Scorer(lm, fd.Neuron(LAYER, NEURON), retokenize=False).gradients(ids, lam)[0]
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1].float()
    label_term = lam * logits.log_softmax(-1) / (ids.shape[1] - 1)                     # (n-1, V)
    reduced = grad.clone()
    reduced[1:] -= label_term
    k = 16
    differs = [set(grad[p].topk(k).indices.tolist()) != set(reduced[p].topk(k).indices.tolist())
               for p in range(1, ids.shape[1])]
    assert all(differs)


def test_separate_fluency_model(make_lm):
    """Target model and fluency model differ: both embedding paths and the fluency model's label
    term enter the gradient."""
    lm, flu = make_lm("gpt_neox"), make_lm("llama")
    ids = ids_for(seed=3, B=2)
    lambdas = torch.tensor([0.5, 6.0])
    grad = fd.Scorer(lm, fd.Neuron(LAYER, NEURON), fluency=flu, retokenize=False).gradients(ids, lambdas)
    want = torch.stack([paper_gradient(lm.model, "gpt_neox", row, lam, flu.model)
                        for row, lam in zip(ids, lambdas)])
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=2e-5)
