"""Prompts of several lengths downstream of the operators (issue 14): ragged scoring and gradients
against each prompt alone, the memo, the History's ragged schema, the frontier over mixed lengths, resume,
the W&B length metric, attribution, and the command line end to end.

The reference (test_context.reference) uses nothing of fluentdream: a plain HF forward of prefix +
x + suffix for one prompt alone, the neuron read by a hook, CE written out over x's own tokens,
and the gradient by autograd on x's one-hot.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from analysis.dataset import candidates
from conftest import VOCAB
from fluentdream.cli import main
from fluentdream.core.context import Context
from fluentdream.core.ragged import pad
from fluentdream.runs.files import same_complete_run
from fluentdream.runs import read_json
from fluentdream.runs.tracking import IterationMetrics, first_iterations
from test_context import MLP_OUT, reference

CONTEXTS = {"none": ((), ()), "prefix and suffix": ((5, 9, 13), (7, 2))}
OPS = dict(swap=0.4, swap2=0.2, insert=0.2, delete=0.2)
SMALL = dict(population_size=4, explore_per_pop=8, topk=16, seq_len=6, min_len=4, max_len=9,
             operators=OPS, restart_frequency=4)


def edited_children(seed: int = 0):
    """Parents of lengths 5, 7, 4 and children made from them by each kind of edit: a swap, a
    two-token swap, inserts at the start, middle and end, deletes of the first, middle and
    last token. -> parents, children (B, 8) padded with -1, row by row."""
    g = torch.Generator().manual_seed(seed)
    parents, kids = [], []
    for n in (5, 7, 4):
        x = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        new = torch.randint(1, VOCAB, (3,), generator=g).tolist()
        edits = [x[:2] + new[:1] + x[3:], new[:1] + x[1:3] + new[1:2] + x[4:],
                 new[:1] + x, x[:2] + new[1:2] + x[2:], x + new[2:], x[1:],
                 x[:n // 2] + x[n // 2 + 1:], x[:-1]]
        kids += edits
        parents += [x] * len(edits)
    return torch.from_numpy(pad(parents, 8)), torch.from_numpy(pad(kids, 8))


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
@pytest.mark.parametrize("context", CONTEXTS)
def test_ragged_scores_gradients_and_next_tokens_equal_each_prompt_alone(make_lm, arch, context):
    lm = make_lm(arch)
    prefix, suffix = CONTEXTS[context]
    parents, kids = edited_children()
    ctx = Context(prefix, suffix)
    packed = fd.Scorer(lm, fd.Neuron(1, 5), retokenize=False, context=ctx)
    f, ce = packed.score(kids, parents=parents)            # children reuse their parent's prefix
    plain = fd.Scorer(lm, fd.Neuron(1, 5), retokenize=False, context=ctx, reuse_prefix=False,
                      memo_size=0)
    f_plain, ce_plain = plain.score(kids)
    assert packed.counts["parent_rows"] == 3 and plain.counts["parent_rows"] == 0
    lam = torch.linspace(0.5, 3.0, len(parents))
    logp = torch.empty(len(parents), 9, lm.vocab_size)
    grads = packed.gradients(parents, lam, next_logprobs=logp)
    first = 0 if prefix else 1
    for i, (x, p) in enumerate(zip(kids, parents)):
        x = x[x >= 0]
        want_f, want_ce, _ = reference(lm.model, arch, prefix, x, suffix, 0.0)
        for got_f, got_ce in ((f[i], ce[i]), (f_plain[i], ce_plain[i])):
            assert abs(float(got_f) - want_f) < 1e-4 and abs(float(got_ce) - want_ce) < 1e-4, i
        p = p[p >= 0]
        n = len(p)
        _, _, want_g = reference(lm.model, arch, prefix, p, suffix, float(lam[i]))
        torch.testing.assert_close(grads[i, :n], want_g, atol=1e-4, rtol=1e-4)
        assert (grads[i, n:] == 0).all()
        with torch.no_grad():                              # x position q is predicted at P + q - 1
            out = lm.model(input_ids=torch.tensor([list(prefix) + p.tolist()])).logits[0]
        want_next = out.log_softmax(-1)[len(prefix) + first - 1:]          # q = first .. n
        torch.testing.assert_close(logp[i, first:n + 1], want_next, atol=1e-4, rtol=1e-4)
        assert torch.isinf(logp[i, n + 1:]).all() and torch.isinf(logp[i, :first]).all()


def test_targets_reading_every_position_score_each_length_apart(make_lm):
    lm = make_lm("gpt_neox")
    parents, kids = edited_children(seed=3)
    scorer = fd.Scorer(lm, fd.Neuron(1, 5, position="max"), retokenize=False)
    f, _ = scorer.score(kids, parents=parents)
    module = lm.model.get_submodule(MLP_OUT["gpt_neox"].format(L=1))
    for i, x in enumerate(kids):
        seen = []
        handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        with torch.no_grad():
            lm.model(input_ids=x[x >= 0][None])
        handle.remove()
        assert abs(float(f[i]) - float(seen[0][0, :, 5].max())) < 1e-4


def test_the_memo_key_holds_the_length(make_lm):
    lm = make_lm("gpt_neox")
    scorer = fd.Scorer(lm, fd.Neuron(1, 5), retokenize=False)
    short, longer = [11, 12, 13], [11, 12, 13, 14]
    f1, _ = scorer.score(torch.from_numpy(pad([short, longer], 6)))
    rows = scorer.counts["model_rows"]
    f2, _ = scorer.score(torch.tensor([short]))             # the same prompt, unpadded
    assert scorer.counts["model_rows"] == rows and float(f2[0]) == float(f1[0])
    assert float(f1[0]) != float(f1[1])                   # a prompt and its extension differ


def test_a_saved_history_holds_ragged_pools_and_the_insertion_state(tmp_path, make_lm):
    lm = make_lm("gpt_neox")
    hist = fd.epo(lm, fd.Neuron(1, 5), fd.EPOConfig(iters=6, seed=2, **SMALL), progress=False)
    lengths = hist.lengths
    assert lengths.min() >= 4 and lengths.max() <= 9 and len(np.unique(lengths)) > 1
    assert hist.ids.shape[2] == 9 and ((hist.ids >= 0).sum(-1) == lengths).all()
    back = fd.History.load(hist.save(tmp_path / "h.npz"))
    with np.load(tmp_path / "h.npz") as z:
        assert int(z["schema_version"]) == 3
    np.testing.assert_array_equal(back.ids, hist.ids)
    assert back.state.next_ids.shape == (4, 10, 16)
    np.testing.assert_array_equal(back.state.next_probs, hist.state.next_probs)
    # every candidate the run recorded equals a plain forward of it alone
    for t in (0, 5):
        for j in range(0, hist.ids.shape[1], 5):
            x = torch.from_numpy(hist.ids[t, j].astype(np.int64))
            want_f, want_ce, _ = reference(lm.model, "gpt_neox", (), x[x >= 0], (), 0.0)
            if np.isfinite(hist.target[t, j]):
                assert abs(hist.target[t, j] - want_f) < 1e-4
                assert abs(hist.xentropy[t, j] - want_ce) < 1e-4


def test_frontier_over_mixed_lengths(tokenizer):
    short = (np.array([[5, 6, 7]]), np.array([1.0]), np.array([2.0]))
    longer = (np.array([[5, 6, 7, 8, -1], [9, 10, 11, 12, 13]]), np.array([3.0, 0.5]),
              np.array([4.0, 5.0]))
    front = fd.pareto_frontier([short, longer], tokenizer)
    assert front.ids.tolist() == [[5, 6, 7, -1, -1], [5, 6, 7, 8, -1]]
    assert front.text == [tokenizer.decode([5, 6, 7]), tokenizer.decode([5, 6, 7, 8])]
    assert [r["ids"] for r in front.records()] == [[5, 6, 7], [5, 6, 7, 8]]


def test_resume_with_operators_is_exact(make_lm, tmp_path):
    lm = make_lm("llama")
    cfg = fd.EPOConfig(iters=9, seed=4, prefix="The ", **SMALL)
    straight = fd.epo(lm, fd.Neuron(1, 5), cfg, progress=False)
    part = fd.epo(lm, fd.Neuron(1, 5), cfg.replace(iters=5), progress=False)
    saved = fd.History.load(part.save(tmp_path / "h.npz"))
    resumed = fd.epo(lm, fd.Neuron(1, 5), cfg, resume=saved, progress=False)
    for key in ("ids", "target", "xentropy", "kept", "restart_lambda"):
        np.testing.assert_array_equal(resumed.arrays()[key], straight.arrays()[key], err_msg=key)
    # W&B's length metric and the frontier's first iterations read the ragged pools
    metrics = IterationMetrics()
    for t in range(len(straight)):
        row = metrics(straight, t)
        slots = straight.ids[t][straight.kept[t]]
        assert row["epo/mean_length"] == pytest.approx(np.mean([(s >= 0).sum() for s in slots]))
    records = fd.pareto_frontier([straight], lm.tokenizer).records()
    found = first_iterations(straight, [r["ids"] for r in records])
    assert len(found) == len(records) and (found < 9).all()


def test_attribution_takes_a_padded_frontier_row(make_lm):
    lm = make_lm("gpt_neox")
    att = fd.attribution.attribute(lm, fd.Neuron(1, 5), np.array([11, 12, 13, 14, -1, -1]), k=4)
    assert att.swap_values.shape == (4, 4) and len(att.tokens) == 4
    want, _, _ = reference(lm.model, "gpt_neox", (), torch.tensor([11, 12, 13, 14]), (), 0.0)
    assert abs(att.value - want) < 1e-4


def test_dream_with_operators_end_to_end_with_resume(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir", str(run),
            "--wandb", "disabled", "--no-progress", "--dtype", "float32", "--population-size", "4",
            "--explore-per-pop", "8", "--topk", "16", "--seq-len", "6", "--restart-frequency",
            "4", "--seed", "5", "--operators", "swap=0.5,insert=0.25,delete=0.25",
            "--min-len", "4", "--max-len", "9"]
    assert main(args + ["--iters", "3"]) == 0
    assert main(args + ["--iters", "7", "--resume"]) == 0           # extends the finished run
    capsys.readouterr()
    assert main(args[:-6] + ["--operators", "swap=1", "--iters", "7", "--resume"]) == 2
    assert "operators (saved" in capsys.readouterr().err               # another operator set
    config = read_json(run / "config.json")
    other = dict(config, operators=dict(swap=0.5, swap2=0.5), min_len=None, max_len=None)
    with pytest.raises(fd.UserError, match="operators"):             # sweeps: not the same run
        same_complete_run(run, other)
    assert same_complete_run(run, config)
    assert config["operators"] == dict(swap=0.5, insert=0.25, delete=0.25)
    assert (config["min_len"], config["max_len"]) == (4, 9)
    lm = fd.load_model(str(tiny_model_dir), dtype="float32")
    cfg = fd.EPOConfig(iters=7, population_size=4, explore_per_pop=8, topk=16, seq_len=6,
                       restart_frequency=4, seed=5, operators=dict(swap=2, insert=1, delete=1),
                       min_len=4, max_len=9, dtype="float32")
    straight = fd.epo(lm, fd.parse_target("L1.N5", lm), cfg, progress=False)
    got = fd.History.load(run / "history.npz")
    for key in ("ids", "target", "xentropy", "kept"):
        np.testing.assert_array_equal(got.arrays()[key], straight.arrays()[key], err_msg=key)
    front = read_json(run / "frontier.json")
    assert all(4 <= len(p["ids"]) <= 9 for p in front)
    lengths = candidates(run)["length"]                  # the dream-vs-dataset tables' input
    assert lengths.between(4, 9).all() and lengths.nunique() > 1


def test_runs_of_different_max_len_batch_like_each_alone(make_lm):
    # One epo_many call with max_len 9 and 11: the proposal pass pads to the widest and each
    # run takes its own width back; every run's History is the one it gives alone (its tokens
    # exactly, its scores up to the rounding of another batch composition).
    lm = make_lm("gpt_neox")
    target = fd.Neuron(1, 5)
    cfgs = [fd.EPOConfig(iters=4, seed=3, **SMALL), fd.EPOConfig(iters=4, seed=4, **{**SMALL, "max_len": 11})]
    together = fd.batched.epo_many(lm, [(target, c) for c in cfgs])
    for cfg, hist in zip(cfgs, together):
        alone = fd.epo(lm, target, cfg, progress=False)
        assert hist.ids.shape[2] == cfg.length_range[1]
        np.testing.assert_array_equal(hist.ids, alone.ids)
        np.testing.assert_allclose(hist.target, alone.target, rtol=1e-4, atol=1e-5)
