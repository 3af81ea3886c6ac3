"""A fixed prefix and suffix around the optimized tokens (issue 12): the model reads prefix + x +
suffix, CE averages x's own tokens (each given everything before it), the target reads the whole
sequence, and only x is differentiated, proposed and mutated.

The reference below uses nothing of fluentdream: a plain HF forward on the whole sequence, the
neuron read by a hook registered here, CE written out over x's positions, and the gradient by
autograd on a one-hot X of x alone, which is both the input and CE's labels (paper §2).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import VOCAB
from fluentdream.core.batched import epo_many
from fluentdream.core.context import Context
from fluentdream.core.scoring.packed import padded
from test_gradient_paper import MLP_OUT, assert_proposes_top_k
from test_performance_exactness import assert_same_scores, children_of, targets_for

LAYER, NEURON = 1, 5
CONTEXTS = {"prefix and suffix": ((5, 9, 13, 300), (7, 2)), "suffix only": ((), (7, 2, 40)),
            "prefix only": ((5, 9, 13), ()), "none": ((), ())}
SMALL = dict(population_size=4, explore_per_pop=8, topk=32, seq_len=6)


def reference(model, arch, prefix, x, suffix, lam, position=-1, fluency=None):
    """x (n,) -> (f, ce, d(f - lam * ce)/dX (n, V)) from the definitions: f = neuron NEURON of
    layer LAYER at `position` of prefix + x + suffix; ce = -mean over x's tokens that have
    something before them of log p(x_i | everything before it) under `fluency` (default: the
    same model), with X x's one-hot."""
    fluency = fluency or model
    X = F.one_hot(x, model.config.vocab_size).float().requires_grad_(True)              # (n, V)

    def wrapped(m):                                                                 # (1, N, d)
        E = m.get_input_embeddings().weight
        return torch.cat([E[list(prefix)], X @ E, E[list(suffix)]])[None]
    seen = []
    handle = model.get_submodule(MLP_OUT[arch].format(L=LAYER)).register_forward_pre_hook(
        lambda mod, args: seen.append(args[0]))
    try:
        with torch.enable_grad():
            model(inputs_embeds=wrapped(model))
            f = seen[0][0, position, NEURON]
            logp = fluency(inputs_embeds=wrapped(fluency)).logits[0].log_softmax(-1)    # (N, V)
            P = len(prefix)
            # x_i sits at position P + i and is predicted by the logits at P + i - 1
            terms = [(X[i] * logp[P + i - 1]).sum() for i in range(len(x)) if P + i >= 1]
            ce = -torch.stack(terms).mean()
            (f - lam * ce).backward()
    finally:
        handle.remove()
    return f.item(), ce.item(), X.grad


def random_ids(seed, B=3, n=6):
    return torch.randint(1, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CONTEXTS))
@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_scores_and_gradients_are_the_definitions(make_lm, arch, case):
    lm = make_lm(arch)
    prefix, suffix = CONTEXTS[case]
    ctx = Context(prefix, suffix)
    ids = random_ids(seed=len(case))
    lambdas = torch.tensor([0.3, 2.0, 9.0])
    scorer = fd.Scorer(lm, fd.Neuron(LAYER, NEURON), retokenize=False, context=ctx)
    want = [reference(lm.model, arch, prefix, row, suffix, lam) for row, lam in zip(ids, lambdas)]
    f_want = torch.tensor([w[0] for w in want])
    ce_want = torch.tensor([w[1] for w in want])
    g_want = torch.stack([w[2] for w in want])
    for f, ce in (scorer.forward(ids), scorer.score(ids)):          # plain pass, packed pass
        torch.testing.assert_close(f, f_want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ce, ce_want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scorer.gradients(ids, lambdas), g_want, rtol=1e-4, atol=2e-5)

    assert_proposes_top_k(scorer, ids, lambdas, g_want)


def test_a_separate_fluency_model_scores_x_in_context(make_lm):
    lm, flu = make_lm("gpt_neox"), make_lm("llama")
    prefix, suffix = CONTEXTS["prefix and suffix"]
    ids, lambdas = random_ids(seed=4, B=2), torch.tensor([0.5, 6.0])
    scorer = fd.Scorer(lm, fd.Neuron(LAYER, NEURON), fluency=flu, retokenize=False,
                       context=Context(prefix, suffix))
    want = [reference(lm.model, "gpt_neox", prefix, row, suffix, lam, fluency=flu.model)
            for row, lam in zip(ids, lambdas)]
    f, ce = scorer.score(ids)
    torch.testing.assert_close(f, torch.tensor([w[0] for w in want]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ce, torch.tensor([w[1] for w in want]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scorer.gradients(ids, lambdas), torch.stack([w[2] for w in want]),
                               rtol=1e-4, atol=2e-5)


def test_target_positions_count_in_the_whole_sequence(make_lm):
    """A target's named position indexes prefix + x + suffix: here x's third token."""
    lm, (prefix, suffix) = make_lm("gpt_neox"), CONTEXTS["prefix and suffix"]
    ids = random_ids(seed=11, B=2)
    at = len(prefix) + 2
    scorer = fd.Scorer(lm, fd.Neuron(LAYER, NEURON, at), retokenize=False,
                       context=Context(prefix, suffix))
    want = torch.tensor([reference(lm.model, "gpt_neox", prefix, row, suffix, 0.0, at)[0]
                         for row in ids])
    torch.testing.assert_close(scorer.score(ids)[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_a_logit_target_reads_the_position_after_the_suffix(make_lm, arch):
    """Logit targets keep every position's logits; CE still reads x's positions only."""
    lm, (prefix, suffix) = make_lm(arch), CONTEXTS["prefix and suffix"]
    ids = random_ids(seed=5)
    scorer = fd.Scorer(lm, fd.Logit(7, "zz"), retokenize=False, context=Context(prefix, suffix))
    full = torch.cat([torch.tensor(prefix).expand(3, -1), ids, torch.tensor(suffix).expand(3, -1)], 1)
    with torch.no_grad():
        logits = lm.model(input_ids=full).logits.float()                               # (B, N, V)
    last = logits[:, -1]
    f_want = last[:, 7] - torch.cat([last[:, :7], last[:, 8:]], 1).max(1).values
    P, n = len(prefix), ids.shape[1]
    ce_want = F.cross_entropy(logits[:, P - 1:P + n - 1].transpose(1, 2), ids, reduction="none").mean(1)
    for f, ce in (scorer.forward(ids), scorer.score(ids)):
        torch.testing.assert_close(f, f_want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ce, ce_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt_neox", "mistral"])
def test_packed_children_reuse_the_prefix_and_equal_full_scoring(make_lm, arch):
    lm, (prefix, suffix) = make_lm(arch), CONTEXTS["prefix and suffix"]
    ctx = Context(prefix, suffix)
    parents = random_ids(seed=2, B=3, n=8).repeat_interleave(6, 0)                      # (18, 8)
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(8, (len(parents),), generator=g)
    pos[:3] = 0                                                      # x's first token swapped too
    kids = parents.clone()
    kids[torch.arange(len(kids)), pos] = (parents[torch.arange(len(kids)), pos] + 1 +
                                          torch.randint(VOCAB - 2, (len(kids),), generator=g)) % VOCAB
    target = fd.Neuron(LAYER, NEURON)
    packed = fd.Scorer(lm, target, retokenize=False, memo_size=0, context=ctx)
    got = packed.score(kids, parents=parents)
    plain = fd.Scorer(lm, target, retokenize=False, reuse_prefix=False, memo_size=0, context=ctx)
    for a, b in zip(got, plain.forward(kids)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Each distinct parent computes all of prefix + x + suffix once; a child only from its swap.
    N = ctx.length(8)
    assert packed.counts["model_tokens"] == padded(3 * N + int((N - len(prefix) - pos).sum()))


@pytest.mark.parametrize("arch", ["phi", "qwen2"])
def test_every_kind_of_target_in_context_packed_equals_a_plain_forward(make_lm, arch):
    """Positions "max", 4 and 5 and the attention key 2 index the whole sequence."""
    lm, (prefix, suffix) = make_lm(arch), CONTEXTS["prefix and suffix"]
    parents = random_ids(seed=6, B=2, n=7)
    kids, rows = children_of(parents, 8, VOCAB)
    for target in targets_for(lm):
        scorer = fd.Scorer(lm, target, retokenize=False, memo_size=0, context=Context(prefix, suffix))
        assert_same_scores(scorer.score(kids, parents=rows), scorer.forward(kids), atol=1e-4)


def small(**changes) -> fd.EPOConfig:
    return fd.EPOConfig(**dict(SMALL, **changes))


def test_epo_raises_the_target_and_keeps_the_context_fixed(tiny_lm, tokenizer):
    cfg = small(iters=8, restart_frequency=4, seed=1, prefix="The answer is:", suffix=" So")
    hist = fd.epo(tiny_lm, fd.Neuron(LAYER, NEURON), cfg, progress=False)
    pre = tokenizer.encode("The answer is:", add_special_tokens=False)
    post = tokenizer.encode(" So", add_special_tokens=False)
    assert hist.meta["prefix_ids"] == pre and hist.meta["suffix_ids"] == post
    assert hist.meta["config"]["prefix"] == "The answer is:"
    a = hist.arrays()
    assert a["ids"].shape[2] == 6                                    # the History holds x only
    assert a["target"][-1].max() > a["target"][0, :4].max()
    # What the run recorded is the score of the wrapped sequence, not of x alone.
    x = torch.from_numpy(a["ids"][-1, :2].astype(np.int64))
    want = [reference(tiny_lm.model, "gpt_neox", pre, row, post, 0.0) for row in x]
    np.testing.assert_allclose(a["target"][-1, :2], [w[0] for w in want], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["xentropy"][-1, :2], [w[1] for w in want], rtol=1e-4, atol=1e-5)


def test_resume_with_a_context_equals_uninterrupted(tiny_lm, tmp_path):
    tgt, ctx = fd.Neuron(LAYER, NEURON), dict(prefix="Q: what is", suffix=" A:")
    full = fd.epo(tiny_lm, tgt, small(iters=6, restart_frequency=4, seed=2, **ctx), progress=False)
    first = fd.epo(tiny_lm, tgt, small(iters=3, restart_frequency=4, seed=2, **ctx), progress=False)
    first.save(tmp_path / "h.npz")
    resumed = fd.epo(tiny_lm, tgt, small(iters=6, restart_frequency=4, seed=2, **ctx),
                     resume=fd.History.load(tmp_path / "h.npz"), progress=False)
    x, y = resumed.arrays(), full.arrays()
    for name in ("ids", "target", "xentropy", "kept", "restart_lambda", "n_scored"):
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    with pytest.raises(ValueError, match="cannot resume: the History was made with prefix"):
        fd.epo(tiny_lm, tgt, small(iters=6, seed=2, prefix="Q: who is"),
               resume=fd.History.load(tmp_path / "h.npz"), progress=False)


@pytest.mark.parametrize("changes, message", [
    (dict(prefix="word " * 130), "plus the .* tokens of --prefix and --suffix exceeds the 128 "
                                 "positions"),
    (dict(suffix=3), "suffix must be text"),
    (dict(prefix=["a"]), "prefix must be text"),
    (dict(prefix="x", suffix="The", seq_len=6, iters=1), None),      # short context: fine
])
def test_bad_contexts_are_one_line_errors(tiny_lm, changes, message):
    if message is None:
        fd.epo(tiny_lm, fd.Neuron(LAYER, NEURON), small(**changes), progress=False)
        return
    with pytest.raises(ValueError, match=message) as err:
        fd.epo(tiny_lm, fd.Neuron(LAYER, NEURON), small(**changes), progress=False)
    assert "\n" not in str(err.value)


def test_text_that_encodes_to_nothing_is_refused():
    """A word-level tokenizer drops whitespace: a prefix of spaces would silently be no prefix."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    lm = SimpleNamespace(tokenizer=PreTrainedTokenizerFast(tokenizer_object=words))
    assert Context.of(lm, small(prefix="hello ")).prefix == (1,)
    with pytest.raises(ValueError, match="prefix '  ' encodes to no tokens"):
        Context.of(lm, small(prefix="  "))


def test_runs_with_different_contexts_are_not_batched_or_given_a_foreign_scorer(tiny_lm):
    tgt = fd.Neuron(LAYER, NEURON)
    with pytest.raises(ValueError, match="these differ: prefix"):
        epo_many(tiny_lm, [(tgt, small(prefix="A")), (tgt, small(prefix="B"))])
    with pytest.raises(ValueError, match="built for context .*, the config.s prefix and suffix"):
        fd.epo(tiny_lm, tgt, small(prefix="A"), scorer=fd.Scorer(tiny_lm, tgt), progress=False)


def test_cli_dream_with_prefix_and_suffix(tiny_model_dir, tmp_path, capsys):
    from fluentdream.cli import main
    from fluentdream.runs.files import read_json

    run_dir = tmp_path / "run"
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir", str(run_dir),
            "--iters", "3", "--population-size", "4", "--explore-per-pop", "8", "--topk", "32",
            "--seq-len", "6", "--wandb", "disabled", "--no-progress",
            "--prefix", "User: tell me", "--suffix", "\nBot:"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "as 'User: tell me' + text + '\\nBot:'" in out
    config = read_json(run_dir / "config.json")
    assert (config["prefix"], config["suffix"]) == ("User: tell me", "\nBot:")
    hist = fd.History.load(run_dir / "history.npz")
    assert len(hist.meta["prefix_ids"]) > 1 and hist.arrays()["ids"].shape[2] == 6
    # A different prefix is another experiment: resuming or extending with it is refused.
    assert main(args[:-4] + ["--prefix", "User: say", "--suffix", "\nBot:", "--iters", "5",
                             "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "prefix (saved 'User: tell me', requested 'User: say')" in err
    assert main(args + ["--iters", "5", "--resume"]) == 0                  # the same one extends
    assert len(fd.History.load(run_dir / "history.npz")) == 5
    # Too long for the model's 128 positions: one line, exit 2.
    capsys.readouterr()
    assert main(args + ["--prefix", "word " * 130, "--run-dir", str(tmp_path / "long")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exceeds the 128 positions" in err


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_attribution_in_a_context_is_the_definition(make_lm, arch):
    """Swaps of x alone, each scored by a plain forward of prefix + swapped x + suffix; the
    substitutes are the top k of the in-context gradient (own token and disallowed excluded)."""
    from fluentdream.core.tokens import allowed_tokens
    lm = make_lm(arch)
    prefix, suffix = CONTEXTS["prefix and suffix"]
    x, k = random_ids(seed=11, B=1)[0], 4
    att = fd.attribution.attribute(lm, fd.Neuron(LAYER, NEURON), x.numpy(), k=k,
                                   context=Context(prefix, suffix))
    f0, _, grad = reference(lm.model, arch, prefix, x, suffix, 0.0)
    assert att.value == pytest.approx(f0, rel=1e-4, abs=1e-5)
    for i, j in [(0, 0), (2, 3), (5, 1)]:
        y = x.clone()
        y[i] = int(att.swap_ids[i, j])
        assert att.swap_values[i, j] == pytest.approx(reference(lm.model, arch, prefix, y, suffix, 0.0)[0],
                                                      rel=1e-4, abs=1e-5)
    grad[:, ~allowed_tokens(lm)] = -torch.inf
    grad[torch.arange(len(x)), x] = -torch.inf
    for i in range(len(x)):
        assert set(att.swap_ids[i].tolist()) == set(grad[i].topk(k).indices.tolist())


def test_a_run_directory_gives_back_its_context(tiny_lm, tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps(dict(prefix="The answer", suffix=" is")))
    cfg = SimpleNamespace(prefix="The answer", suffix=" is")
    assert Context.of_run(tiny_lm, tmp_path) == Context.of(tiny_lm, cfg) != Context()
    (tmp_path / "config.json").write_text(json.dumps(dict(seq_len=12)))     # made before contexts
    assert Context.of_run(tiny_lm, tmp_path) == Context()
