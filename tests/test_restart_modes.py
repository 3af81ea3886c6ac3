"""Restarts that explore (issue 14; paper §4 "more exploration"): EPOConfig.restart_mode collapse,
frontier and distinct, each against a brute-force reading of its definition on hand-made pools;
a real run keeps diversity after a restart; resume stays exact; bad modes are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.cli import main
from fluentdream.core import steps as epo_steps

INF, NAN = float("inf"), float("nan")
# A convex frontier in (CE, f) with edge slopes 3, 2, 1.5, 1, 0.5: the winner at penalty mu
# changes at mu = 3, 2, 1.5, 1 and 0.5, inside the restart range [0.667, 6].
HULL_F = [1.0, 4.0, 6.0, 7.5, 8.5, 9.0]
HULL_CE = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
# then dominated points, a rejected one (-inf, nan CE) and a finite f with NaN CE
POOL_F = torch.tensor(HULL_F + [3.0, 5.0, -INF, 50.0])
POOL_CE = torch.tensor(HULL_CE + [2.5, 3.5, NAN, NAN])


def brute_winner(f, ce, mu: float) -> int:
    """Index maximizing f - mu * CE over finite rows, lowest index on ties (a plain loop)."""
    best, arg = -INF, 0
    for i, (a, c) in enumerate(zip(f.tolist(), ce.tolist())):
        if np.isfinite(a) and np.isfinite(c) and a - mu * c > best:
            best, arg = a - mu * c, i
    return arg


def draws(seed: int, cfg: fd.EPOConfig, f=POOL_F, ce=POOL_CE, M=4, ids=None):
    return epo_steps.restart(f, ce, M, cfg, torch.Generator().manual_seed(seed), ids)


def test_every_mode_draws_the_same_lambda_from_the_same_stream():
    modes = [fd.EPOConfig(restart_mode=m) for m in ("collapse", "frontier", "distinct")]
    ids = torch.arange(len(POOL_F))[:, None]
    for seed in range(5):
        lams = {draws(seed, cfg, ids=ids)[1] for cfg in modes}
        assert len(lams) == 1


def test_collapse_puts_the_lambda_r_winner_in_every_slot():
    cfg = fd.EPOConfig(restart_mode="collapse")
    for seed in range(50):
        kept, lam = draws(seed, cfg)
        assert kept.tolist() == [brute_winner(POOL_F, POOL_CE, lam)] * 4


def test_frontier_gives_slot_i_the_winner_at_the_ith_stratified_draw():
    cfg = fd.EPOConfig(restart_mode="frontier")
    lo, hi = cfg.restart_xentropy_min, cfg.restart_xentropy_max
    distinct = []
    for seed in range(200):
        for M in (1, 3, 4, 8):
            kept, lam = draws(seed, cfg, M=M)
            # the definition: lam_r, then the M - 1 points (hi - lo) / M apart from it, wrapped
            # around the range, ascending; slot i (ascending penalty) takes the i-th
            mus = sorted(lo + ((lam - lo) + j * (hi - lo) / M) % (hi - lo) for j in range(M))
            assert kept.tolist() == [brute_winner(POOL_F, POOL_CE, mu) for mu in mus]
            assert any(abs(mu - lam) < 1e-6 for mu in mus)          # the draw itself is one
            # one penalty in each M-th of the range: stratified, not M independent draws
            strata = sorted(int((mu - lo) / (hi - lo) * M) for mu in mus)
            assert strata == list(range(M))
            if M == 1:
                assert kept.tolist() == draws(seed, fd.EPOConfig())[0][:1].tolist()
            if M == 4:
                distinct.append(len(set(kept.tolist())))
    # Above mu = 3 one corner wins, and 4 strata of the range put two penalties there at most:
    # 2 or 3 distinct prompts (the strata are wider than the middle corners), collapse 1.
    assert set(distinct) == {2, 3}
    # The penalties ascend, so the winners' CE never rises from one slot to the next.
    kept, _ = draws(0, cfg, M=8)
    assert (np.diff(POOL_CE[kept].numpy()) <= 0).all()


def test_frontier_with_an_empty_range_is_collapse_at_its_one_penalty():
    cfg = fd.EPOConfig(restart_mode="frontier", restart_xentropy_min=2.5, restart_xentropy_max=2.5)
    kept, lam = draws(3, cfg)
    assert lam == 2.5 and kept.tolist() == [brute_winner(POOL_F, POOL_CE, 2.5)] * 4


def _distinct_by_hand(f, ce, ids, lam: float, M: int) -> list[int]:
    """The definition read literally: rank the valid rows by f - lam * CE (then index); skip a
    prompt already taken; stop at M; cycle when short; the lowest CE to the last slot."""
    valid = [i for i in range(len(f)) if np.isfinite(f[i]) and np.isfinite(ce[i])]
    ranked = sorted(valid, key=lambda i: (-(f[i] - lam * ce[i]), i))
    taken, prompts = [], []
    for i in ranked:
        if list(ids[i]) not in prompts and len(taken) < M:
            taken.append(i)
            prompts.append(list(ids[i]))
    if not taken:
        return [0] * M
    taken = [taken[j % len(taken)] for j in range(M)]
    return [taken[j] for j in sorted(range(M), key=lambda j: (-ce[taken[j]], j))]


def test_distinct_takes_the_best_distinct_prompts_most_fluent_to_the_highest_penalty():
    cfg = fd.EPOConfig(restart_mode="distinct")
    # rows 0 and 6 hold the same prompt (and, being the same prompt, the same scores)
    f = torch.tensor([5.0, 2.0, 4.0, 6.0, -INF, 7.0, 5.0, 1.0])
    ce = torch.tensor([3.0, 1.0, 2.0, 4.0, NAN, 6.0, 3.0, 9.0])
    ids = torch.tensor([[1, 2], [2, 2], [3, 2], [4, 2], [5, 2], [6, 2], [1, 2], [7, 2]])
    kept, lam = draws(0, cfg, f, ce, M=4, ids=ids)
    assert kept.tolist() == _distinct_by_hand(f.numpy(), ce.numpy(), ids.tolist(), lam, 4)
    assert len({tuple(ids[i].tolist()) for i in kept}) == 4 and 6 not in kept.tolist()
    # by hand at lambda 1: values 2, 1, 2, 2, -, 1, 2, -8; the best four distinct prompts are
    # rows 0, 2, 3 (value 2) and then 1 (value 1, lower index than 5); by CE descending: 3, 0, 2, 1
    kept = epo_steps.distinct_best(epo_steps.objective(f, ce, torch.tensor([1.0]))[0], ce, ids, 4)
    assert kept.tolist() == [3, 0, 2, 1]


def test_distinct_against_the_definition_on_random_pools_and_ragged_prompts():
    cfg = fd.EPOConfig(restart_mode="distinct")
    rng = np.random.default_rng(0)
    for seed in range(100):
        P, M = int(rng.integers(2, 30)), int(rng.integers(1, 9))
        prompts = [list(rng.integers(0, 4, size=rng.integers(2, 5))) for _ in range(P)]
        f = rng.normal(size=P).round(1)     # rounded: ties happen and must go to the lower index
        ce = rng.uniform(1, 8, size=P).round(1)
        f[rng.random(P) < 0.2] = -INF
        kept, lam = draws(seed, cfg, torch.tensor(f, dtype=torch.float32),
                          torch.tensor(ce, dtype=torch.float32), M=M, ids=prompts)
        # float32, as the engine holds scores
        want = _distinct_by_hand(f.astype(np.float32), ce.astype(np.float32), prompts,
                                 np.float32(lam), M)
        assert kept.tolist() == want, seed


def test_distinct_with_nothing_valid_keeps_what_collapse_keeps():
    f, ce = torch.tensor([-INF, -INF]), torch.tensor([NAN, 1.0])
    kept, _ = draws(0, fd.EPOConfig(restart_mode="distinct"), f, ce, M=3, ids=[[1], [2]])
    assert kept.tolist() == draws(0, fd.EPOConfig(), f, ce, M=3)[0].tolist() == [0, 0, 0]


SMALL = dict(population_size=4, explore_per_pop=8, topk=32, seq_len=8)


@pytest.mark.parametrize("mode", ["frontier", "distinct"])
def test_a_real_run_keeps_several_prompts_after_its_restarts(tiny_lm, mode):
    cfg = fd.EPOConfig(**SMALL, iters=9, restart_frequency=4, seed=1, restart_mode=mode)
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg)
    collapse = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg.replace(restart_mode="collapse"))
    for t in (0, 4, 8):
        assert hist.restart_lambda[t] == collapse.restart_lambda[t]     # one random stream
        held = {tuple(hist.ids[t][i]) for i in hist.kept[t]}
        assert len(set(collapse.kept[t].tolist())) == 1
        if mode == "distinct":
            assert len(held) == min(4, len({tuple(r) for r in hist.ids[t]}))
    assert max(len({tuple(hist.ids[t][i]) for i in hist.kept[t]}) for t in (0, 4, 8)) > 1


@pytest.mark.parametrize("mode", ["frontier", "distinct"])
def test_resume_equals_uninterrupted(tiny_lm, tmp_path, mode):
    cfg = fd.EPOConfig(**SMALL, iters=10, restart_frequency=3, seed=4, restart_mode=mode)
    full = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg)
    fd.epo(tiny_lm, fd.Neuron(1, 5), cfg.replace(iters=5)).save(tmp_path / "h.npz")
    resumed = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg, resume=fd.History.load(tmp_path / "h.npz"))
    x, y = resumed.arrays(), full.arrays()
    for name in ("ids", "target", "xentropy", "kept", "restart_lambda", "n_scored"):
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_the_command_line_records_the_mode_and_extends_a_run_exactly(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    args = ["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--run-dir", str(run),
            "--population-size", "4", "--explore-per-pop", "8", "--topk", "32", "--seq-len", "8",
            "--restart-frequency", "3", "--seed", "2", "--restart-mode", "distinct",
            "--dtype", "float32", "--wandb", "disabled", "--no-progress"]
    assert main(args + ["--iters", "4"]) == 0
    assert json.loads((run / "config.json").read_text())["restart_mode"] == "distinct"
    assert main(args + ["--iters", "8", "--resume"]) == 0
    lm = fd.load_model(str(tiny_model_dir), dtype="float32")
    cfg = fd.EPOConfig(**SMALL, iters=8, restart_frequency=3, seed=2, restart_mode="distinct")
    straight = fd.epo(lm, fd.parse_target("L1.N5", lm), cfg)
    got = fd.History.load(run / "history.npz")
    np.testing.assert_array_equal(got.arrays()["ids"], straight.arrays()["ids"])
    np.testing.assert_array_equal(got.arrays()["kept"], straight.arrays()["kept"])


def test_an_unknown_mode_is_one_line(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="restart_mode must be one of collapse, frontier, "
                                         "distinct, got 'spread'"):
        fd.EPOConfig(restart_mode="spread")
    code = main(["dream", "--model", str(tiny_model_dir), "--target", "L1.N5", "--out",
                 str(tmp_path / "out"), "--restart-mode", "spread", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "restart_mode must be" in err
    assert not (tmp_path / "out").exists()
