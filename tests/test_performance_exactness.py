"""The savings of DESIGN §10 change nothing that EPO computes: prefix reuse equals full scoring on
every architecture, the memo and out-of-memory backoff return the same numbers, and batched runs
equal separate ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.core.batched import epo_many
from fluentdream.core.scoring import Scorer

ARCHS = ("gpt_neox", "phi", "gpt2", "llama", "mistral", "qwen2")


def children_of(parents: torch.Tensor, per_parent: int, vocab: int, seed: int = 0):
    """(U, n) parents -> (U*r, n) one-token children and their (U*r, n) parent rows."""
    g = torch.Generator().manual_seed(seed)
    rows = parents.repeat_interleave(per_parent, dim=0)
    kids = rows.clone()
    pos = torch.randint(parents.shape[1], (len(kids),), generator=g)
    kids[torch.arange(len(kids)), pos] = torch.randint(vocab, (len(kids),), generator=g)
    return kids, rows


def assert_same_scores(a, b, atol):
    (fa, ca), (fb, cb) = a, b
    assert torch.equal(torch.isfinite(fa), torch.isfinite(fb))
    ok = torch.isfinite(fa)
    assert ok.sum() > 0
    assert (fa[ok] - fb[ok]).abs().max() <= atol
    assert (ca[ok] - cb[ok]).abs().max() <= atol


def targets_for(lm):
    return [fd.Neuron(1, 3), fd.Neuron(0, 2, "max"), fd.Logit(7, "zz", 4),
            fd.AttentionEntry(1, 0, 2), fd.ResidualDirection(2, torch.ones(lm.d_model) / 8, position=5)]


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reuse_equals_full_scoring(make_lm, arch):
    lm = make_lm(arch)
    parents = torch.randint(lm.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    kids, rows = children_of(parents, 16, lm.vocab_size)
    kids[0] = rows[0]                                   # a child identical to its parent
    kids[1, 3:] = torch.randint(lm.vocab_size, (9,))    # several changes: reuse before the first
    for target in targets_for(lm):
        full = Scorer(lm, target, retokenize=False, reuse_prefix=False, memo_size=0).score(kids)
        fast = Scorer(lm, target, retokenize=False)
        assert_same_scores(fast.score(kids, parents=rows), full, atol=1e-4)
        assert fast.counts["model_tokens"] < 0.75 * len(kids) * 12   # the prefix was not recomputed


def test_prefix_reuse_with_separate_fluency_model_and_bf16(make_lm):
    lm, flu = make_lm("gpt_neox"), make_lm("llama")
    parents = torch.randint(lm.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    kids, rows = children_of(parents, 20, lm.vocab_size)
    target = fd.Neuron(1, 5, "max")
    full = Scorer(lm, target, flu, retokenize=False, reuse_prefix=False).score(kids)
    assert_same_scores(Scorer(lm, target, flu, retokenize=False).score(kids, parents=rows), full, 1e-4)
    half = make_lm("gpt_neox", layers=3)
    half.model.to(torch.bfloat16)
    full = Scorer(half, target, retokenize=False, reuse_prefix=False).score(kids)
    fast = Scorer(half, target, retokenize=False).score(kids, parents=rows)
    assert_same_scores(fast, full, atol=0.1)            # bf16 has ~3 significant digits


def test_memo_scores_each_prompt_once(tiny_lm):
    scorer = Scorer(tiny_lm, fd.Neuron(1, 2), retokenize=False)
    ids = torch.randint(tiny_lm.vocab_size, (6, 12), generator=torch.Generator().manual_seed(3))
    batch = torch.cat([ids, ids[:3]])                    # duplicates within one call
    first = scorer.score(batch)
    assert scorer.counts["model_rows"] == 6
    again = scorer.score(ids.flip(0))
    assert scorer.counts["model_rows"] == 6
    assert torch.equal(again[0], first[0][:6].flip(0))


def test_out_of_memory_halves_the_batch_and_gives_the_same_numbers(tiny_lm):
    target = fd.Neuron(1, 2)
    parents = torch.randint(tiny_lm.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4))
    kids, rows = children_of(parents, 24, tiny_lm.vocab_size)
    expected = Scorer(tiny_lm, target, retokenize=False).score(kids, parents=rows)
    grads = Scorer(tiny_lm, target, retokenize=False).gradients(kids[:8], torch.ones(8))

    def limit(module, args, kwargs):                     # a device that holds 90 tokens at most
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        if x.shape[0] * x.shape[1] > 90:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    handle = tiny_lm.trunk.register_forward_pre_hook(limit, with_kwargs=True)
    try:
        scorer = Scorer(tiny_lm, target, retokenize=False, batch_size=64)
        assert_same_scores(scorer.score(kids, parents=rows), expected, atol=1e-5)
        assert scorer.batch_size <= 5
        assert torch.allclose(scorer.gradients(kids[:8], torch.ones(8)), grads, atol=1e-5)
    finally:
        handle.remove()


def test_epo_with_savings_selects_what_plain_scoring_selects(tiny_lm):
    target = fd.Neuron(1, 4)
    cfg = fd.EPOConfig(iters=6, population_size=4, explore_per_pop=8, topk=16, restart_frequency=4)
    fast = fd.epo(tiny_lm, target, cfg)
    plain = fd.epo(tiny_lm, target, cfg, scorer=Scorer(tiny_lm, target, reuse_prefix=False, memo_size=0))
    assert np.array_equal(fast.arrays()["kept"], plain.arrays()["kept"])
    assert np.array_equal(fast.arrays()["ids"], plain.arrays()["ids"])
    np.testing.assert_allclose(fast.arrays()["xentropy"], plain.arrays()["xentropy"], atol=1e-4)


def test_epo_many_equals_separate_runs(tiny_lm):
    cfg = fd.EPOConfig(iters=5, population_size=3, explore_per_pop=6, topk=12, restart_frequency=2)
    neuron = fd.Neuron(1, 3)
    jobs = [(neuron, cfg.replace(seed=0)), (neuron, cfg.replace(seed=1)),
            (fd.ResidualDirection(1, torch.ones(tiny_lm.d_model) / 8), cfg.replace(seed=2, iters=3))]
    together = epo_many(tiny_lm, jobs)
    for (target, c), hist in zip(jobs, together):
        alone = fd.epo(tiny_lm, target, c)
        assert len(hist) == c.iters
        assert np.array_equal(hist.arrays()["ids"], alone.arrays()["ids"])
        np.testing.assert_allclose(hist.arrays()["target"], alone.arrays()["target"], atol=1e-4)
    with pytest.raises(ValueError, match="seq_len"):
        epo_many(tiny_lm, [(neuron, cfg), (neuron, cfg.replace(seq_len=8))])
