"""benchmarks/reference.py, the parts that are fluentdream's (no reference checkout needed): its
cache_run is the objective fluentdream scores (its logits in fp32 when asked), and a reference
History converts to ours under our rules."""
from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import REPO
from fluentdream.core.scoring import Scorer


def _load():
    spec = importlib.util.spec_from_file_location("bench_reference", REPO / "benchmarks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


def _targets(lm):
    the = lm.tokenizer.encode(" the", add_special_tokens=False)
    assert len(the) == 1
    return [fd.Neuron(1, 4), fd.Logit(the[0], " the"),
            fd.ResidualDirection(1, fd.ResidualDirection.random_vector(lm.d_model, 0))]


def _by_definition(lm, target, emb: torch.Tensor) -> torch.Tensor:
    """The target from its definition (DESIGN §5), with plain hooks on the HF modules."""
    seen = {}
    layers = lm.model.gpt_neox.layers
    hooks = [layers[1].mlp.dense_4h_to_h.register_forward_pre_hook(
                 lambda m, a: seen.__setitem__("mlp", a[0])),
             layers[1].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__(
                 "resid", a[0] if a else kw["hidden_states"]), with_kwargs=True)]
    try:
        logits = lm.model(inputs_embeds=emb, use_cache=False).logits[:, -1]     # (B, V)
    finally:
        for h in hooks:
            h.remove()
    if isinstance(target, fd.Neuron):
        return seen["mlp"][:, -1, target.neuron]
    if isinstance(target, fd.Logit):
        others = logits.clone()
        others[:, target.token_id] = -torch.inf
        return logits[:, target.token_id] - others.max(-1).values
    x = seen["resid"][:, -1]                                                   # (B, d)
    return ((x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)) @ target.vector


@pytest.mark.parametrize("which", [0, 1, 2], ids=["neuron", "logit", "resid"])
def test_cache_run_is_the_objective_fluentdream_scores(tiny_lm, which):
    target = _targets(tiny_lm)[which]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(tiny_lm.vocab_size, (8, 12), generator=g)     # some fail retokenization
    ids[0, 3] = tiny_lm.tokenizer.encode(" the", add_special_tokens=False)[0]   # banned by logit
    cache_run = bench.ReferenceObjective(tiny_lm, target)
    with torch.no_grad():
        out = cache_run(input_ids=ids)
    f, ce = Scorer(tiny_lm, target).score(ids)
    assert out["logits"].shape == (8, 12, tiny_lm.vocab_size)
    assert torch.equal(torch.isinf(out["target"]), torch.isinf(f)) and torch.isinf(f).any()
    ok = torch.isfinite(f)
    torch.testing.assert_close(out["target"][ok], f[ok], atol=1e-5, rtol=1e-5)
    # the reference's own CE formula, the one-hot tokens as labels
    one_hot = F.one_hot(ids, tiny_lm.vocab_size).float()
    mine = -(torch.log_softmax(out["logits"][:, :-1], -1) * one_hot[:, 1:]).sum(-1).mean(-1)
    torch.testing.assert_close(mine[ok], ce[ok], atol=1e-4, rtol=1e-5)
    # the gradient pass: embeddings in, no rules (no text), the target as defined
    emb = one_hot @ tiny_lm.model.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(cache_run(inputs_embeds=emb)["target"],
                                   _by_definition(tiny_lm, target, emb), atol=1e-5, rtol=1e-5)


def test_cache_run_takes_ids_or_embeddings(tiny_lm):
    cache_run = bench.ReferenceObjective(tiny_lm, fd.Neuron(1, 4))
    with pytest.raises(ValueError, match="exactly one"):
        cache_run()


def _reference_history(ids: np.ndarray, target: np.ndarray, xentropy: np.ndarray, M: int):
    """What dreamy's History holds after _finalize: stacked arrays, ids (T, P, n)."""
    T = ids.shape[0]
    return types.SimpleNamespace(ids=ids, target=target, xentropy=xentropy,
                                 keep=np.zeros((T, M), np.int32), runtime=np.arange(T) + 0.5)


def test_reference_history_converts_with_our_rules(tiny_lm):
    target = _targets(tiny_lm)[1]
    tok = tiny_lm.tokenizer
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(tok.vocab_size, (2, 6, 12), generator=g).numpy()
    ids[1, 2, 5] = target.token_id                                     # contains " the"
    rng = np.random.default_rng(0)
    f, ce = rng.normal(size=(2, 6)).astype(np.float32), rng.uniform(3, 9, (2, 6)).astype(np.float32)
    hist = bench.to_history(_reference_history(ids, f, ce, 2), np.array([0.1, 10.0]),
                            Scorer(tiny_lm, target))
    # which prompts are valid, decided here from the text: no "the" in any case (the goal text,
    # stripped), and decode -> encode gives the tokens back
    flat = ids.reshape(12, 12)
    texts = [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in flat]
    valid = np.array(["the" not in t.lower() and tok.encode(t, add_special_tokens=False) == row.tolist()
                      for t, row in zip(texts, flat)])
    assert not valid.all() and valid.any()
    got_ids, got_f, got_ce = hist.candidates()
    np.testing.assert_array_equal(got_ids, flat[valid])
    np.testing.assert_array_equal(got_f, f.reshape(-1)[valid])
    np.testing.assert_array_equal(got_ce, ce.reshape(-1)[valid])
    assert list(hist.arrays()["seconds"]) == [0.5, 1.5] and hist.n_iters == 2
    front = fd.pareto_frontier([hist])
    direct = fd.pareto_frontier([(flat[valid], f.reshape(-1)[valid], ce.reshape(-1)[valid])])
    np.testing.assert_array_equal(front.ids, direct.ids)


def test_cache_run_can_give_fp32_logits_from_a_bf16_model(tokenizer):
    # The reference's setting "bf16 with its CE in fp32": the same bf16 forward, logits cast.
    from conftest import build_model
    lm = fd.wrap_model(build_model("gpt_neox").to(torch.bfloat16), tokenizer, "tiny-bf16")
    ids = torch.randint(lm.vocab_size, (4, 6), generator=torch.Generator().manual_seed(0))
    plain = bench.ReferenceObjective(lm, fd.Neuron(1, 4))(input_ids=ids)["logits"]
    cast = bench.ReferenceObjective(lm, fd.Neuron(1, 4), fp32_logits=True)(input_ids=ids)["logits"]
    assert plain.dtype == torch.bfloat16 and cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain.float())
