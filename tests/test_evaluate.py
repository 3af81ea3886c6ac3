"""Scorer: CE equals the model's own loss; one-hot gradients equal independent autograd and finite
differences, each row with its own lambda; rejected prompts; the allowed-token mask."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import ARCHS, VOCAB, build_model
from fluentdream.core.scoring import xentropy
from fluentdream.core.tokens import allowed_tokens, drawable_tokens, retokenizes


def random_ids(B=3, n=7, seed=0):
    return torch.randint(1, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_xentropy_equals_the_models_own_loss(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids(B=4, n=9)
    _, ce = fd.Scorer(lm, fd.Neuron(0, 1), retokenize=False).score(ids)
    with torch.no_grad():
        want = torch.stack([lm.model(input_ids=row[None], labels=row[None]).loss for row in ids])
    torch.testing.assert_close(ce, want, rtol=1e-5, atol=1e-5)


def test_xentropy_on_hand_made_logits():
    # Uniform over 4 tokens at every position: CE = log 4 whatever the tokens are.
    logits = torch.zeros(2, 3, 4)
    torch.testing.assert_close(xentropy(logits, torch.tensor([[0, 1, 2], [3, 3, 3]])),
                               torch.full((2,), float(torch.log(torch.tensor(4.0)))))
    # Position 2's logits predict nothing (there is no token 3), so they do not count.
    logits = torch.tensor([[[9.0, 0.0], [0.0, 9.0], [-50.0, 50.0]]])
    want = F.cross_entropy(logits[0, :2], torch.tensor([0, 1]))
    torch.testing.assert_close(xentropy(logits, torch.tensor([[1, 0, 1]])), want[None])


def test_fluency_model_scores_the_cross_entropy(make_lm):
    lm, other = make_lm("gpt_neox"), make_lm("llama")
    ids = random_ids()
    tgt = fd.Neuron(1, 5)
    f_self, ce_self = fd.Scorer(lm, tgt, retokenize=False).score(ids)
    f, ce = fd.Scorer(lm, tgt, fluency=other, retokenize=False).score(ids)
    _, ce_other = fd.Scorer(other, fd.Neuron(0, 0), retokenize=False).score(ids)
    torch.testing.assert_close(f, f_self)
    torch.testing.assert_close(ce, ce_other)
    assert not torch.allclose(ce, ce_self)


def test_fluency_model_with_another_vocabulary_is_refused(make_lm):
    with pytest.raises(ValueError, match="different vocabularies"):
        fd.Scorer(make_lm("gpt_neox"), fd.Neuron(0, 0), fluency=make_lm("gpt_neox", vocab=1100))


def test_batching_does_not_change_scores(make_lm):
    lm = make_lm("gpt2")
    ids = random_ids(B=7)
    tgt = fd.Neuron(1, 3, "max")
    f1, ce1 = fd.Scorer(lm, tgt, batch_size=2, retokenize=False).score(ids)
    f2, ce2 = fd.Scorer(lm, tgt, batch_size=256, retokenize=False).score(ids)
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce1, ce2, rtol=1e-5, atol=1e-5)


def independent_grads(lm, mlp_out, ids, neuron=5):
    """(B, n) -> grad f, grad CE (B, n, V) w.r.t. one-hot tokens, computed one row at a time with
    a hook registered here and a hand-written cross-entropy whose labels are the one-hot (paper §2)."""
    gf, gce = [], []
    for row in ids:
        for which in ("f", "ce"):
            one_hot = F.one_hot(row[None], lm.vocab_size).to(lm.dtype).requires_grad_(True)
            store = []
            h = mlp_out.register_forward_pre_hook(lambda mod, args: store.append(args[0]))
            try:
                with torch.enable_grad():
                    emb = one_hot @ lm.model.get_input_embeddings().weight
                    logits = lm.model(inputs_embeds=emb).logits[0]              # (n, V)
                    logp = logits[:-1].log_softmax(-1)
                    ce = -(one_hot[0, 1:] * logp).sum(-1).mean()   # the one-hot is the labels too
                    f = store[0][0, -1, neuron]
                    (f if which == "f" else ce).backward()
            finally:
                h.remove()
            (gf if which == "f" else gce).append(one_hot.grad[0].float())
    return torch.stack(gf), torch.stack(gce)


@pytest.mark.parametrize("arch", ["gpt_neox", "phi"])
def test_gradients_use_each_rows_own_lambda(make_lm, arch):
    lm = make_lm(arch)
    mlp_out = lm.mlp_out_proj(1)
    ids = random_ids(B=3, n=6)
    ids[2] = ids[0]                       # one prompt in two slots, two lambdas
    lambdas = torch.tensor([0.1, 2.0, 7.5])
    grad = fd.Scorer(lm, fd.Neuron(1, 5)).gradients(ids, lambdas)
    assert grad.shape == (3, 6, lm.vocab_size) and grad.dtype == torch.float32
    gf, gce = independent_grads(lm, mlp_out, ids)
    for i in range(3):
        torch.testing.assert_close(grad[i], gf[i] - lambdas[i] * gce[i], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(grad[0], grad[2])
    # Chunking into batches changes nothing.
    chunked = fd.Scorer(lm, fd.Neuron(1, 5), batch_size=1).gradients(ids, lambdas)
    torch.testing.assert_close(chunked, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["L1.N5@max", "resid:L1:3", "attn:L1.H2.K0", "logit: the"])
def test_gradients_match_finite_differences(make_lm, tokenizer, spec):
    """Directional derivative of f - lambda*CE along a random perturbation of the (relaxed)
    one-hot. The model runs in float64, but the Scorer returns float32 values, so the central
    difference carries ~1e-6 / (2 eps) of rounding: a 1% tolerance (a wrong lambda, sign or
    missing term is off by far more; the exact check is the autograd test above)."""
    base = make_lm("llama")
    lm = fd.wrap_model(copy.deepcopy(base.model).double(), tokenizer, "tiny-llama-f64")
    tgt = fd.parse_target(spec, lm)
    scorer = fd.Scorer(lm, tgt, retokenize=False)
    ids = random_ids(B=2, n=6, seed=1)
    lambdas = torch.tensor([0.5, 3.0])
    grad = scorer.gradients(ids, lambdas).double()                            # (B, n, V)
    one_hot = F.one_hot(ids, lm.vocab_size).double()
    direction = torch.randn(one_hot.shape, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)

    def objective(x):
        with torch.no_grad():
            f, ce = scorer.forward(one_hot=x)
        return f - lambdas.double() * ce

    eps = 1e-4
    numeric = (objective(one_hot + eps * direction) - objective(one_hot - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum(dim=(1, 2))
    torch.testing.assert_close(analytic, numeric, rtol=1e-2, atol=1e-3)
    assert analytic.abs().min() > 0.1      # the check is not vacuous


def test_rejected_prompts_score_minus_inf_and_nan(make_lm, tokenizer):
    lm = make_lm("gpt_neox")
    the = tokenizer.encode(" the", add_special_tokens=False)
    split = tokenizer.convert_tokens_to_ids(["Ġt", "he"])          # decodes to " the" = one token
    fill = tokenizer.encode(" return list", add_special_tokens=False)
    assert tokenizer.decode(split) == " the" and len(the) == 1 and len(fill) == 2
    rows = torch.tensor([fill + fill + fill,        # fine
                         fill + the + fill + [fill[0]],  # contains the banned goal text
                         fill + split + fill,       # does not survive decode -> encode
                         fill + fill + fill])
    assert retokenizes(tokenizer, rows).tolist() == [True, True, False, True]
    f, ce = fd.Scorer(lm, fd.parse_target("logit: the", lm)).score(rows)
    assert torch.isneginf(f[1:3]).all() and torch.isnan(ce[1:3]).all()
    assert torch.isfinite(f[[0, 3]]).all() and torch.isfinite(ce[[0, 3]]).all()
    # Without retokenization the split prompt is scored; a neuron target bans nothing.
    f, ce = fd.Scorer(lm, fd.Neuron(1, 5), retokenize=False).score(rows)
    assert torch.isfinite(f).all() and torch.isfinite(ce).all()


def test_allowed_tokens_exclude_special_and_non_roundtrip_tokens(make_lm, tokenizer):
    lm = make_lm("gpt_neox")
    allowed = allowed_tokens(lm)
    assert allowed.shape == (VOCAB,) and allowed.dtype == torch.bool
    assert not allowed[tokenizer.eos_token_id]
    survive = []
    for i in range(VOCAB):
        text = tokenizer.decode([i])
        survive.append(tokenizer.encode(text, add_special_tokens=False) == [i]
                       and "\ufffd" not in text and i not in tokenizer.all_special_ids)
    assert allowed.tolist() == survive
    assert 50 < (~allowed).sum() < 400        # partial-UTF-8 byte tokens are excluded, not all
    # Embedding rows beyond the tokenizer (padding) are never proposed.
    padded = allowed_tokens(make_lm("gpt_neox", vocab=1100))
    assert padded.shape == (1100,) and not padded[VOCAB:].any()
    assert padded[:VOCAB].tolist() == survive


def one_swap_children(parents, r, seed=0):
    """(U, n) parents -> (U*r, n) children differing in one random position, and their parents."""
    g = torch.Generator().manual_seed(seed)
    rows = parents.repeat_interleave(r, dim=0)
    children = rows.clone()
    pos = torch.randint(parents.shape[1], (len(rows),), generator=g)
    children[torch.arange(len(rows)), pos] = torch.randint(1, VOCAB, (len(rows),), generator=g)
    return children, rows


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reuse_equals_full_scoring(make_lm, arch):
    """DESIGN §10/§11: children scored from their parents' cached prefix = scored from scratch."""
    lm = make_lm(arch)
    children, parents = one_swap_children(random_ids(B=3, n=7), r=6)
    children[0] = parents[0]                    # a child equal to its parent
    for spec in ("L1.N5", "L0.N2@max", "attn:L1.H2.K0", "resid:L2:1@3", "logit: the"):
        tgt = fd.parse_target(spec, lm)
        f_full, ce_full = fd.Scorer(lm, tgt, retokenize=False, reuse_prefix=False).score(children)
        f, ce = fd.Scorer(lm, tgt, retokenize=False).score(children, parents=parents)
        torch.testing.assert_close(f, f_full, rtol=1e-4, atol=1e-5, msg=spec)
        torch.testing.assert_close(ce, ce_full, rtol=1e-4, atol=1e-5, equal_nan=True, msg=spec)


def test_fluency_model_prefix_reuse_equals_full_scoring(make_lm):
    lm, other = make_lm("gpt_neox"), make_lm("qwen2")
    children, parents = one_swap_children(random_ids(B=2, n=6, seed=3), r=5)
    tgt = fd.Neuron(1, 5)
    f_full, ce_full = fd.Scorer(lm, tgt, fluency=other, retokenize=False,
                                reuse_prefix=False).score(children)
    f, ce = fd.Scorer(lm, tgt, fluency=other, retokenize=False).score(children, parents=parents)
    torch.testing.assert_close(f, f_full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ce, ce_full, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    """A SentencePiece-style BPE tokenizer (Metaspace: "▁" marks a word start, as in Llama-2 and
    Mistral), trained here on the same text as the byte-level one."""
    import pydoc_data.topics
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(list(pydoc_data.topics.topics.values()), vocab_size=VOCAB,
                           special_tokens=["<unk>", "</s>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, unk_token="<unk>", eos_token="</s>")


def test_word_continuation_pieces_are_allowed_in_context(sentencepiece_tokenizer, make_lm):
    """A continuation piece ("ing") decodes alone to "ing", which re-encodes as "▁ing": judged
    alone, no continuation piece survives; judged after a neighbour token, they do."""
    tok = sentencepiece_tokenizer
    lm = fd.wrap_model(build_model("llama", vocab=len(tok)), tok, "tiny-llama-sp")
    allowed = allowed_tokens(lm)
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    continuation = torch.tensor([not p.startswith("▁") for p in pieces])
    alone = torch.tensor([tok.encode(tok.decode([i]), add_special_tokens=False) == [i]
                          for i in range(len(tok))])
    assert (alone & continuation).sum() < 0.01 * continuation.sum()      # the old rule's loss
    assert (allowed & continuation).sum() > 0.95 * continuation.sum()
    assert not allowed[[tok.unk_token_id, tok.eos_token_id]].any()
    ing = tok.convert_tokens_to_ids("ing")
    words = tok.encode("walking running", add_special_tokens=False)
    assert ing in words and allowed[ing]
    # Every allowed piece really survives next to some token: decode -> encode of the pair.
    for i in allowed.nonzero().squeeze(1)[::37].tolist():
        assert any(tok.encode(tok.decode([a, i]), add_special_tokens=False)[-1] == i
                   for a in tok.encode(". a the (", add_special_tokens=False))
    # Random prompts are drawn from the pieces that survive alone (words side by side survive
    # retokenization); byte-level BPE draws from every allowed token.
    assert (drawable_tokens(lm) == (allowed & alone)).all()
    byte_level = make_lm("gpt2")
    assert (drawable_tokens(byte_level) == allowed_tokens(byte_level)).all()
    # EPO on such a model draws random words and proposes continuation pieces too.
    hist = fd.epo(lm, fd.Neuron(1, 5), fd.EPOConfig(population_size=2, explore_per_pop=8,
                                                     topk=32, seq_len=8, iters=3))
    seen = np.unique(hist.ids[-1]) if hasattr(hist.ids, "shape") else np.unique(np.stack(hist.ids))
    assert continuation[torch.from_numpy(seen.astype(np.int64))].any()


def test_memo_starts_afresh_when_full_and_never_holds_more_than_its_size():
    from fluentdream.core.scoring.memo import Memo
    memo = Memo(3)
    memo.add({b"a": (1.0, 2.0), b"b": (3.0, 4.0)})
    memo.add({b"c": (5.0, 6.0)})
    assert len(memo) == 3 and memo[b"a"] == (1.0, 2.0)
    memo.add({b"d": (7.0, 8.0)})                    # would be 4: cleared, then the new entry
    assert dict(memo) == {b"d": (7.0, 8.0)}
    memo.add({k: (0.0, 0.0) for k in (b"1", b"2", b"3", b"4")})     # larger than the memo
    assert len(memo) == 0
    assert len(Memo(0)) == 0 and (Memo(0).add({b"x": (0.0, 0.0)}) is None)
