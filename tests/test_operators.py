"""Mutation operators (fluentdream.core.operators, issue 14) against their definitions on hand-made
states, the config's checks, and histories that the code written before operators existed saved
(tests/data/history_v1_*.npz, schema 1, made at 935b54f by the script in their test below: same
tiny models, same settings), which still load and resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.core.config import OPERATORS, parse_operators
from fluentdream.core.history import EPOState
from fluentdream.core.operators import insertion_table, mutate
from fluentdream.runs.files import config_diff

DATA = Path(__file__).parent / "data"
V1_RUNS = {"history_v1_gpt_neox.npz": ("gpt_neox", {}),
           "history_v1_llama_context.npz": ("llama", dict(prefix="The ", suffix=" end"))}
V1_CFG = dict(population_size=4, explore_per_pop=8, topk=16, seq_len=6, restart_frequency=4,
              seed=1)
COMPARED = ("ids", "target", "xentropy", "kept", "restart_lambda", "n_scored")


@pytest.mark.parametrize("name", V1_RUNS)
def test_a_history_saved_before_operators_loads_and_resumes(make_lm, name):
    # The files came from: h = fd.epo(lm, fd.parse_target("L1.N5", lm),
    #     fd.EPOConfig(iters=6, **V1_CFG, **context), progress=False); h.save(path)
    # on another machine, before operators (and before selection kept a slot's own prompt on a
    # tie), so nothing computed here is compared with their floats: they must load as schema 1
    # and resume, the saved iterations kept as they are and the new ones valid swaps.
    arch, context = V1_RUNS[name]
    with np.load(DATA / name) as z:
        assert int(z["schema_version"]) == 1 and "state_next_ids" not in z
        saved_arrays = {key: z[key] for key in COMPARED}
    saved = fd.History.load(DATA / name)                         # the v1 reader
    assert "operators" not in saved.meta["config"] and len(saved) == 6
    assert (saved.n_memo == -1).all()                            # not recorded before schema 3
    lm = make_lm(arch)
    cfg8 = fd.EPOConfig(iters=8, **V1_CFG, **context)
    resumed = fd.epo(lm, fd.parse_target("L1.N5", lm), cfg8, resume=saved, progress=False)
    assert len(resumed) == 8
    for key in COMPARED:
        np.testing.assert_array_equal(resumed.arrays()[key][:6], saved_arrays[key], err_msg=key)
    M, r = V1_CFG["population_size"], V1_CFG["explore_per_pop"]
    for t in (6, 7):
        pool = resumed.ids[t]
        assert ((pool[M:] != np.repeat(pool[:M], r, axis=0)).sum(1) <= 1).all()
        np.testing.assert_array_equal(pool[:M], resumed.ids[t - 1][resumed.kept[t - 1]])


def hand_state(lengths=(3, 5, 8), W=8, k=4, probs=(0.7, 0.3, 0.0, 0.0)) -> EPOState:
    """Slot i holds tokens 10 i, 10 i + 1, ... (< 100); gradient candidates are >= 1000 and
    insertion candidates >= 5000, so every edit is visible in the child."""
    M = len(lengths)
    ids = np.full((M, W), -1)
    for i, n in enumerate(lengths):
        ids[i, :n] = 10 * i + np.arange(n)
    topk = (1000 + np.arange(M * W * k)).reshape(M, W, k).astype(np.int32)
    next_ids = (5000 + np.arange(M * (W + 1) * k)).reshape(M, W + 1, k).astype(np.int32)
    next_probs = np.broadcast_to(np.float32(probs), (M, W + 1, k)).copy()
    return EPOState(0, ids, np.zeros(M, np.float32), np.zeros(M, np.float32), topk,
                    np.ones(M, bool), np.zeros(1, np.uint8), next_ids, next_probs)


def classify(parent: list[int], child: list[int], state: EPOState, slot: int) -> tuple[str, int]:
    """Which operator made `child` from `parent`, and its (first) position, read off the
    definitions; fails if none explains the child."""
    L = len(parent)
    if len(child) == L + 1:
        for p in range(L + 1):
            cands = state.next_ids[slot, p][state.next_probs[slot, p] > 0]
            if child[:p] == parent[:p] and child[p + 1:] == parent[p:] and child[p] in cands:
                return "insert", p
    if len(child) == L - 1:
        for p in range(L):
            if child == parent[:p] + parent[p + 1:]:
                return "delete", p
    if len(child) == L:
        diff = [p for p in range(L) if child[p] != parent[p]]
        if all(child[p] in state.topk[slot, p] for p in diff) and len(diff) in (1, 2):
            return ("swap", "swap2")[len(diff) - 1], diff[0]
    raise AssertionError(f"no operator makes {child} from {parent}")


def children_by_operator(state, r, cfg, seed=0):
    kids = mutate(state, r, torch.Generator().manual_seed(seed), cfg).numpy()
    out = []
    for c, child in enumerate(kids):
        slot = c // r
        parent = [int(t) for t in state.slot_ids[slot] if t >= 0]
        real = [int(t) for t in child if t >= 0]
        assert list(child[len(real):]) == [-1] * (len(child) - len(real))   # padding at the end
        out.append((slot, *classify(parent, real, state, slot)))
    return out


def test_each_operator_follows_its_definition_and_its_probability():
    cfg = fd.EPOConfig(seq_len=5, min_len=3, max_len=8,
                       operators=dict(swap=0.4, swap2=0.2, insert=0.3, delete=0.1))
    state, r = hand_state(), 3000
    made = children_by_operator(state, r, cfg)
    for slot, allowed in enumerate([dict(swap=0.4, swap2=0.2, insert=0.3),      # at min_len 3
                                    dict(cfg.operators),                         # free
                                    dict(swap=0.4, swap2=0.2, delete=0.1)]):    # at max_len 8
        ops = [op for s, op, _ in made if s == slot]
        total = sum(allowed.values())
        for name in OPERATORS:
            share = allowed.get(name, 0.0) / total
            got = ops.count(name) / r
            assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / r) + 1e-9, (slot, name)
    # positions are uniform: every insert position 0..L and every delete position appears
    L = 5
    inserts = {p for s, op, p in made if s == 1 and op == "insert"}
    deletes = {p for s, op, p in made if s == 1 and op == "delete"}
    assert inserts == set(range(L + 1)) and deletes == set(range(L))


def test_insert_draws_in_proportion_to_the_model_probabilities():
    state = hand_state(lengths=(4,), probs=(0.7, 0.3, 0.0, 0.0))
    cfg = fd.EPOConfig(seq_len=4, min_len=3, max_len=8, operators=dict(insert=1, delete=1e-9))
    kids = mutate(state, 4000, torch.Generator().manual_seed(1), cfg).numpy()
    tokens = [int(c[p]) for c in kids for p in range(len(c)) if c[p] >= 5000]
    which = (np.array(tokens) - 5000) % 4                  # rank of the token in its row
    assert set(which) == {0, 1} and abs(np.mean(which == 0) - 0.7) < 0.03


def test_swap2_changes_two_distinct_positions():
    state = hand_state(lengths=(2, 6))
    cfg = fd.EPOConfig(seq_len=6, operators=dict(swap2=1.0))
    made = children_by_operator(state, 500, cfg)
    assert {op for _, op, _ in made} == {"swap2"}        # also at length 2: both positions


def test_insertion_table_is_the_top_k_of_allowed_tokens_renormalized():
    logp = torch.log_softmax(torch.tensor([[[0.0, 3.0, 2.0, 1.0, 5.0, -1.0]] * 3]), -1)  # (1, 3, 6)
    allowed = torch.tensor([True, True, True, True, False, True])        # token 4 is not allowed
    first = torch.tensor([[4, 0]])                               # gradient candidates of x[0]
    ids, probs = insertion_table(logp, allowed, 2, first, prefixed=True)
    assert ids[0, 1].tolist() == [1, 2]
    e = np.exp([3.0, 2.0])
    np.testing.assert_allclose(probs[0, 1], e / e.sum(), rtol=1e-6)
    ids, probs = insertion_table(logp, allowed, 2, first, prefixed=False)
    assert ids[0, 0].tolist() == [4, 0] and probs[0, 0].tolist() == [0.5, 0.5]
    assert ids[0, 2].tolist() == [1, 2]


@pytest.mark.parametrize("settings, message", [
    (dict(operators={"grow": 1}), "unknown operators .'grow'.; allowed: swap, swap2"),
    (dict(operators={"swap": -1}), "finite numbers >= 0"),
    (dict(operators={"swap": 0}), "positive sum"),
    (dict(operators={}), "dict of probabilities"),
    (dict(operators=dict(swap=1, insert=1)), "need min_len < max_len"),
    (dict(min_len=8, max_len=16), "only insert and delete change the length"),
    (dict(operators=dict(insert=1), min_len=8, max_len=16), "swap or swap2"),
    (dict(min_len=13, max_len=16, operators=dict(swap=1, delete=1)), "min_len <= seq_len"),
    (dict(max_len=1.5), "max_len must be an integer"),
])
def test_bad_operator_settings_say_what_is_allowed(settings, message):
    with pytest.raises(fd.UserError, match=message) as e:
        fd.EPOConfig(**settings)
    assert "\n" not in str(e.value)


def test_operators_are_normalized_and_parsed_from_the_command_line(capsys):
    cfg = fd.EPOConfig(operators=dict(delete=1, swap=2, insert=1), min_len=8, max_len=16)
    assert cfg.operators == dict(swap=0.5, insert=0.25, delete=0.25)
    assert list(cfg.operators) == ["swap", "insert", "delete"]               # a fixed order
    assert parse_operators("swap=0.5, insert=0.25,delete=0.25") == cfg.operators
    assert fd.EPOConfig(seq_len=16).length_range == (16, 16)                 # None follows seq_len
    with pytest.raises(fd.UserError, match="NAME=PROBABILITY"):
        parse_operators("swap")
    with pytest.raises(SystemExit) as e:
        main(["dream", "--model", "embedded", "--target", "L1.N5", "--operators", "swap=x"])
    assert e.value.code == 2 and "NAME=PROBABILITY" in capsys.readouterr().err


def test_an_older_config_without_operators_is_the_same_run():
    now = fd.EPOConfig().to_dict()
    older = {k: v for k, v in now.items() if k not in ("operators", "min_len", "max_len")}
    assert config_diff(older, now) == []
    other = fd.EPOConfig(operators=dict(swap=1, swap2=1)).to_dict()
    assert config_diff(older, other) == [
        "operators (saved {'swap': 1.0}, requested {'swap': 0.5, 'swap2': 0.5})"]
