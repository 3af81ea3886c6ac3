"""The packed layout (fluentdream.core.scoring.packed) on hand-made plans, padding, and the packed pass against
a plain forward of the model (logits, activations, keys and values at every position)."""
from __future__ import annotations

import torch

import fluentdream as fd
from fluentdream.core.scoring import Scorer
from fluentdream.core.scoring.hooks import capture
from fluentdream.core.scoring.packed import (SHAPE_STEP, Plan, attention_implementation, pad_rows,
                                 packed_attention, packed_nll, padded, row_nll)


def test_plan_lays_rows_end_to_end_and_fills_from_the_source():
    # row 0 is a parent (all 4 positions), rows 1 and 2 its children from positions 2 and 3
    plan = Plan.build(torch.tensor([0, 2, 3]), torch.tensor([0, 0, 0]), n=4)
    assert plan.row.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert plan.pos.tolist() == [0, 1, 2, 3, 2, 3, 3]
    assert plan.last.tolist() == [3, 5, 6]
    assert plan.index(torch.tensor([1, 2]), torch.tensor([3, 3])).tolist() == [5, 6]
    # every (row, position) is read from the packed token holding it: the parent's before start
    assert plan.source.view(3, 4).tolist() == [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 2, 6]]
    values = torch.arange(7.0)[:, None]                     # (T, 1)
    assert plan.unpack(values)[..., 0].tolist() == [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 2, 6]]


def test_padding_rounds_the_packed_length_and_keeps_every_row():
    ids = torch.randint(100, (5, 12), generator=torch.Generator().manual_seed(0))
    start, src = torch.tensor([0, 3, 7, 11, 0]), torch.tensor([0, 0, 0, 0, 4])
    which = torch.zeros(5, dtype=torch.long)
    ids2, start2, src2, which2 = pad_rows(ids, start, src, which)
    computed = (ids2 >= 0).sum(1) - start2               # a dummy row may be short (-1 after it)
    assert int(computed.sum()) == padded(int((12 - start).sum()))
    assert int(computed.sum()) % SHAPE_STEP == 0
    assert torch.equal(ids2[:5], ids) and torch.equal(start2[:5], start)
    Plan.build(start2, src2, 12, length=(ids2 >= 0).sum(1))  # every source computes all positions
    assert padded(SHAPE_STEP) == SHAPE_STEP and padded(SHAPE_STEP + 1) == 2 * SHAPE_STEP


def test_packed_pass_equals_a_plain_forward(make_lm):
    """Hidden states of every computed position, the MLP hidden units there, and the losses
    assembled from the parent, against the model's own unpacked forward of each full prompt."""
    for arch in ("gpt_neox", "llama", "gpt2"):
        lm = make_lm(arch)
        g = torch.Generator().manual_seed(5)
        parent = torch.randint(lm.vocab_size, (1, 12), generator=g)
        kids = parent.repeat(4, 1)
        kids[torch.arange(4), torch.tensor([0, 4, 9, 11])] = torch.randint(lm.vocab_size, (4,), generator=g)
        ids = torch.cat([parent, kids])
        plan = Plan.build(torch.tensor([0, 0, 4, 9, 11]), torch.tensor([0, 1, 0, 0, 0]), 12)
        with torch.no_grad(), packed_attention(lm.model, plan), capture(lm, (("mlp", 1),), False) as acts:
            hidden = lm.trunk(input_ids=plan.tokens(ids), position_ids=plan.pos[None]).last_hidden_state[0]
            nll = packed_nll(hidden, lm.unembed, plan, ids)
        packed_mlp = acts["mlp", 1][0]
        with torch.no_grad(), capture(lm, (("mlp", 1),)) as acts:
            out = lm.model(input_ids=ids)
        full = out.logits.log_softmax(-1)
        ref_nll = -full[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
        torch.testing.assert_close(nll, ref_nll, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(packed_mlp, acts["mlp", 1][plan.row, plan.pos], atol=1e-4, rtol=1e-4)
        logits = lm.unembed(hidden)
        torch.testing.assert_close(logits, out.logits[plan.row, plan.pos], atol=1e-4, rtol=1e-4)


def test_written_out_attention_equals_the_model_with_grouped_query_heads(make_lm):
    """The written-out attention (layers whose probabilities a target reads; low precision on
    CPU) on a grouped-query model (8 query heads, 2 key-value heads): hidden states and every
    layer's probabilities against the model's own eager forward of each full prompt."""
    lm = make_lm("llama", heads=8, kv_heads=2)
    g = torch.Generator().manual_seed(3)
    parent = torch.randint(lm.vocab_size, (2, 12), generator=g)
    kids = parent[[0, 0, 1, 1]].clone()
    kids[torch.arange(4), torch.tensor([1, 6, 0, 11])] = torch.randint(lm.vocab_size, (4,), generator=g)
    ids = torch.cat([parent, kids])
    plan = Plan.build(torch.tensor([0, 0, 1, 6, 0, 11]), torch.tensor([0, 1, 0, 0, 1, 1]), 12,
                      probs_layers={0, 1})
    with torch.no_grad(), packed_attention(lm.model, plan):
        out = lm.trunk(input_ids=plan.tokens(ids), position_ids=plan.pos[None], output_attentions=True)
    with torch.no_grad(), attention_implementation(lm.model, "eager"):
        plain = lm.model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state[0],
                               plain.hidden_states[-1][plan.row, plan.pos])
    for layer in (0, 1):                                  # (B, heads, n, n) each
        torch.testing.assert_close(out.attentions[layer], plain.attentions[layer])


def test_scorer_counts_half_the_tokens_of_a_full_pass(tiny_lm):
    g = torch.Generator().manual_seed(2)
    parents = torch.randint(tiny_lm.vocab_size, (4, 12), generator=g)
    rows = parents.repeat_interleave(32, 0)
    kids = rows.clone()
    kids[torch.arange(128), torch.randint(12, (128,), generator=g)] = torch.randint(
        tiny_lm.vocab_size, (128,), generator=g)
    scorer = Scorer(tiny_lm, fd.Neuron(1, 3), retokenize=False)
    scorer.score(kids, parents=rows)
    # 128 children: about 6.5 positions each, plus 4 parents, padded: well under 12 per child
    assert scorer.counts["model_tokens"] < 0.65 * 128 * 12
    assert scorer.counts["parent_rows"] == 4


def test_block0_token_local_modules_run_once_per_distinct_token(make_lm):
    """GPT-NeoX's QKV and (parallel) MLP in block 0 read the embedding only, so the packed pass
    runs them on one row per distinct token; the modules are put back afterwards."""
    lm = make_lm("gpt_neox")
    assert lm.token_local == ("attention.query_key_value", "mlp")
    block = lm.blocks[0]
    qkv, mlp = block.attention.query_key_value, block.mlp
    rows = []
    handle = qkv.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[-2]))
    parent = torch.randint(lm.vocab_size, (1, 12), generator=torch.Generator().manual_seed(7))
    kids = parent.repeat(40, 1)
    kids[torch.arange(40), torch.arange(40) % 12] = torch.arange(40) + 100
    try:
        Scorer(lm, fd.Neuron(1, 0), retokenize=False).score(kids, parents=parent.repeat(40, 1))
    finally:
        handle.remove()
    assert rows and rows[0] <= padded(12 + 40) < padded(int(sum(12 - i % 12 for i in range(40))) + 12)
    assert block.attention.query_key_value is qkv and block.mlp is mlp
    assert make_lm("gpt2").token_local == ()              # learned positions are added first


def test_row_nll_is_minus_log_softmax_at_the_next_token_in_every_dtype():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = (4 * torch.randn(70, 5000, generator=gen)).to(dtype)      # (R, V)
        y = torch.randint(5000, (70,), generator=gen)
        exact = -logits.double().log_softmax(-1)[torch.arange(70), y]       # from the definition
        got = row_nll(logits, y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=2e-5)


def test_values_stop_after_the_deepest_site_and_run_everything_for_logits(make_lm):
    """Scorer.values runs block L + 1 only when a target reads past block L: a layer-0 neuron
    never reaches block 1, layer 0's attention never reaches the final norm, the residual
    stream entering the final norm and a logit run it all."""
    lm = make_lm("llama")
    ids = torch.randint(1, lm.vocab_size, (3, 7), generator=torch.Generator().manual_seed(2))
    goal = lm.tokenizer.encode(" the", add_special_tokens=False)[0]
    for target, reaches in ((fd.Neuron(0, 3), (1, 0, 0)), (fd.AttentionEntry(0, 0, 0), (1, 1, 0)),
                            (fd.ResidualDirection(lm.n_layers, torch.ones(lm.d_model)), (1, 1, 1)),
                            (fd.Logit(goal, " the"), (1, 1, 1))):
        calls = []
        hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: calls.append(i))
                 for i, m in enumerate([lm.blocks[0], lm.blocks[1], lm.final_norm])]
        try:
            Scorer(lm, target, retokenize=False).values(ids)
        finally:
            for h in hooks:
                h.remove()
        assert tuple(int(i in calls) for i in range(3)) == reaches, target.name
