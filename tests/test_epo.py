"""EPO (paper §2, DESIGN §4): it raises the target; selection, restart and lambda bookkeeping on
hand-made pools and on a real run; gradients only for prompts new to a slot; determinism; GCG;
resume; Ctrl-C."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fluentdream as fd
from fluentdream.core.tokens import allowed_tokens, retokenizes
from fluentdream.core import steps as epo_steps
from fluentdream.core.history import EPOState
from fluentdream.core.operators import mutate

INF, NAN = float("inf"), float("nan")
SMALL = dict(population_size=4, explore_per_pop=8, topk=32, seq_len=8)


def small(**changes) -> fd.EPOConfig:
    return fd.EPOConfig(**dict(SMALL, **changes))


def arrays_equal(a: fd.History, b: fd.History) -> None:
    x, y = a.arrays(), b.arrays()
    for name in ("lambdas", "ids", "target", "xentropy", "kept", "restart_lambda", "n_scored"):
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)


# ---- a few iterations raise the target ---------------------------------------------------------

def test_thirty_iterations_raise_the_best_neuron_well_above_the_start(tiny_lm):
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), small(iters=30, seed=0))
    start = hist.target[0]
    M = 4
    initial_best = start[:M].max()          # iteration 0's parents: random prompts
    spread = start[np.isfinite(start)].std()  # spread of the first pool's activations
    assert hist.best_target() > initial_best + 3 * spread
    # Every slot ends above the best random start on its own objective f - lambda * CE, and the
    # low-penalty half of the slots far above the start on f (the high-penalty slots trade
    # activation for fluency, as they should).
    f, ce = hist.slot_scores(len(hist) - 1)
    lam = np.asarray(hist.lambdas)
    start_objective = (start[:M][None, :] - lam[:, None] * hist.xentropy[0][:M][None, :]).max(1)
    assert (f - lam * ce > start_objective).all()
    assert f[: M // 2].min() > initial_best + spread


@pytest.mark.parametrize("spec", ["L0.N3", "logit: the", "resid:L1:3", "attn:L1.H2.K0"])
def test_a_few_iterations_raise_every_kind_of_target(tiny_lm, spec):
    tgt = fd.parse_target(spec, tiny_lm)
    hist = fd.epo(tiny_lm, tgt, small(iters=6, seed=1))
    initial_best = hist.target[0][:4].max()
    assert np.isfinite(initial_best)
    assert hist.best_target() > initial_best
    final_f, _ = hist.slot_scores(len(hist) - 1)
    assert np.isfinite(final_f).all()                 # rejected prompts are never kept


# ---- hand-made pools ---------------------------------------------------------------------------

def test_objective_is_f_minus_lambda_ce_and_minus_inf_when_rejected():
    f = torch.tensor([1.0, 3.0, -INF])
    ce = torch.tensor([2.0, 4.0, NAN])
    got = epo_steps.objective(f, ce, torch.tensor([0.0, 0.5]))
    want = torch.tensor([[1.0, 3.0, -INF], [0.0, 1.0, -INF]])
    torch.testing.assert_close(got, want)


def test_select_with_replacement_ties_to_the_own_parent_and_never_rejected():
    # pool: the 4 slots' own prompts (rows 0-3), then children.  (f, ce)
    f = torch.tensor([2.0, 1.0, 2.0, 0.0, 9.0, -INF, 1.5, 2.0])
    ce = torch.tensor([1.0, 0.5, 1.0, 5.0, 8.5, NAN, 0.5, 1.0])
    lambdas = torch.tensor([0.0, 0.1, 1.0, 5.0])
    kept = epo_steps.select(f, ce, lambdas)
    # lambda 0 and 0.1: row 4 (9 - 0.85) for both slots -> one prompt holds two slots;
    # lambda 1: rows 0, 2, 6 and 7 tie at 1.0: slot 2's own prompt, row 2, stays;
    # lambda 5: row 6 (1.5 - 2.5 = -1) beats row 1 (1 - 2.5 = -1.5) and row 0 (-3).
    assert kept.tolist() == [4, 4, 2, 6]
    # Slot 1 (lambda 1) whose own prompt (row 1: 0.5) is beaten by a tie of rows 0 and 3
    # (1.0): the lowest index.
    f = torch.tensor([2.0, 1.0, 0.0, 2.0])
    ce = torch.tensor([1.0, 0.5, 9.0, 1.0])
    assert epo_steps.select(f, ce, torch.tensor([1.0, 1.0])).tolist() == [0, 0]
    # A rejected candidate (-inf, nan) is never kept, even at lambda 0 where -inf - 0*nan = nan.
    f = torch.tensor([-1.0, -INF, -INF, -INF])
    ce = torch.tensor([50.0, NAN, NAN, NAN])
    assert epo_steps.select(f, ce, torch.tensor([0.0, 1.0, 10.0])).tolist() == [0, 0, 0]


def test_a_nan_cross_entropy_never_wins_selection_or_restart():
    # Row 1 has a finite, huge f but CE NaN (e.g. an overflow): torch's argmax takes NaN for the
    # largest value, so without the guard it would win every slot and every restart.
    f = torch.tensor([1.0, 50.0, 2.0, NAN])
    ce = torch.tensor([3.0, NAN, 4.0, 1.0])
    assert epo_steps.select(f, ce, torch.tensor([0.0, 0.1, 10.0])).tolist() == [2, 2, 0]
    for seed in range(20):
        kept, _ = epo_steps.restart(f, ce, 4, fd.EPOConfig(), torch.Generator().manual_seed(seed))
        assert set(kept.tolist()) <= {0, 2}


def test_select_prefers_the_slots_own_parent_on_exact_ties():
    # Both slots hold the same prompt (same scores): each keeps its own, so neither slot has a
    # new prompt and no gradient is recomputed (DESIGN §4 step 7).
    f = torch.tensor([1.0, 1.0, 0.5])
    ce = torch.tensor([2.0, 2.0, 3.0])
    assert epo_steps.select(f, ce, torch.tensor([0.1, 10.0])).tolist() == [0, 1]


def test_restart_draws_lambda_in_range_and_takes_its_argmax():
    # A convex frontier: which point wins depends on lambda_r.
    # lambda_r < 2: row 2 wins; 2..3: row 1; > 3: row 0. Rows 3, 4 win only below 0.5.
    f = torch.tensor([1.0, 4.0, 6.0, 7.0, 100.0, -INF])
    ce = torch.tensor([1.0, 2.0, 3.0, 5.0, 200.0, NAN])
    cfg = fd.EPOConfig()
    gen = torch.Generator().manual_seed(0)
    lams, winners = [], set()
    for _ in range(200):
        kept, lam = epo_steps.restart(f, ce, 8, cfg, gen)
        assert cfg.restart_xentropy_min <= lam <= cfg.restart_xentropy_max
        assert kept.shape == (8,) and (kept == kept[0]).all()       # every slot, one prompt
        value = (f - lam * ce).numpy()
        value[~np.isfinite(f.numpy())] = -np.inf
        assert int(kept[0]) == int(np.argmax(value))
        lams.append(lam)
        winners.add(int(kept[0]))
    assert min(lams) < 1.0 and max(lams) > 5.0      # uniform over [0.667, 6.0]
    assert winners == {0, 1, 2}                      # lambda_r matters (not a fixed 2.0)
    # The draw comes from the run's generator: same state, same lambda.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert epo_steps.restart(f, ce, 2, cfg, g1)[1] == epo_steps.restart(f, ce, 2, cfg, g2)[1]


def test_mutate_changes_one_position_to_one_of_its_candidates():
    M, n, k, r = 3, 5, 4, 50
    topk = (1000 + torch.arange(M * n * k)).view(M, n, k).to(torch.int32).numpy()
    state = EPOState(iteration=0, slot_ids=np.arange(M * n).reshape(M, n), slot_target=np.zeros(M),
                     slot_xentropy=np.zeros(M), topk=topk, fresh=np.ones(M, bool),
                     rng_state=np.zeros(1, np.uint8))
    children = mutate(state, r, torch.Generator().manual_seed(0))
    assert children.shape == (M * r, n)
    positions = set()
    for c, child in enumerate(children.numpy()):
        slot = c // r                                           # r children of slot 0, then 1, ...
        diff = np.flatnonzero(child != state.slot_ids[slot])
        assert len(diff) == 1
        p = diff[0]
        assert child[p] in topk[slot, p]
        positions.add(p)
    assert positions == set(range(n))


# ---- bookkeeping on a real run ----------------------------------------------------------------

class CountingScorer(fd.Scorer):
    """The real Scorer, recording every gradients() call (ids, lambdas)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def gradients(self, ids, lambdas, *args, **kwargs):
        self.calls.append((ids.clone(), torch.as_tensor(lambdas).clone()))
        return super().gradients(ids, lambdas, *args, **kwargs)


@pytest.fixture(scope="module")
def counted_run(tiny_lm):
    cfg = small(iters=9, restart_frequency=4, seed=2)
    scorer = CountingScorer(tiny_lm, fd.Neuron(1, 5), batch_size=cfg.batch_size)
    reports = []
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg, callback=reports.append, scorer=scorer)
    return cfg, hist, scorer.calls, reports


def test_gradients_only_for_prompts_new_to_their_slot_with_that_slots_lambda(counted_run):
    cfg, hist, calls, _ = counted_run
    M, lambdas = cfg.population_size, cfg.lambdas
    calls = list(calls)
    ids, lam = calls.pop(0)                      # iteration 0: every slot, its own lambda
    np.testing.assert_array_equal(ids.numpy(), hist.ids[0][:M])
    np.testing.assert_allclose(lam.numpy(), lambdas, rtol=1e-6)
    for t in range(1, len(hist)):
        stale = np.flatnonzero(hist.kept[t - 1] != np.arange(M))
        changed = np.flatnonzero((hist.ids[t][:M] != hist.ids[t - 1][:M]).any(1))
        assert set(changed) <= set(stale)        # a changed prompt always gets a new gradient
        if len(stale) == 0:
            continue
        ids, lam = calls.pop(0)
        np.testing.assert_array_equal(ids.numpy(), hist.ids[t][stale])
        np.testing.assert_allclose(lam.numpy(), lambdas[stale], rtol=1e-6)
    assert calls == []                           # no other gradient was computed


def test_kept_rows_become_the_next_parents(counted_run):
    cfg, hist, _, _ = counted_run
    M = cfg.population_size
    for t in range(len(hist) - 1):
        np.testing.assert_array_equal(hist.ids[t + 1][:M], hist.ids[t][hist.kept[t]])
        np.testing.assert_array_equal(hist.target[t + 1][:M], hist.target[t][hist.kept[t]])
        np.testing.assert_array_equal(hist.xentropy[t + 1][:M], hist.xentropy[t][hist.kept[t]])
    np.testing.assert_array_equal(hist.state.slot_ids, hist.ids[-1][hist.kept[-1]])
    assert hist.state.iteration == len(hist) == cfg.iters


def test_selection_and_restarts_in_a_real_run(counted_run):
    cfg, hist, _, _ = counted_run
    M, lambdas = cfg.population_size, cfg.lambdas
    for t in range(len(hist)):
        f = hist.target[t].astype(np.float64)
        ce = hist.xentropy[t].astype(np.float64)
        lam_r = hist.restart_lambda[t]
        if t % cfg.restart_frequency == 0:
            assert cfg.restart_xentropy_min <= lam_r <= cfg.restart_xentropy_max
            lams = np.array([lam_r])
        else:
            assert np.isnan(lam_r)
            lams = lambdas
        value = np.where(np.isfinite(f), f[None] - lams[:, None] * ce[None], -np.inf)
        best = value.max(1, keepdims=True)
        kept = hist.kept[t] if t % cfg.restart_frequency else hist.kept[t][:1]
        # The kept member attains the slot's maximum (float32 ties: up to rounding), ...
        np.testing.assert_allclose(value[np.arange(len(kept)), kept], best[:, 0], rtol=1e-6)
        # ... and it is the slot's own prompt when that ties, else the first member that does.
        for i, k in enumerate(kept):
            own = t % cfg.restart_frequency and value[i, i] >= value[i, k]
            assert k == (i if own else np.flatnonzero(value[i] >= value[i, k])[0])
        if t % cfg.restart_frequency == 0:
            assert (hist.kept[t] == hist.kept[t][0]).all()


def test_candidates_are_allowed_tokens_one_swap_from_their_parent(counted_run, tiny_lm):
    cfg, hist, _, _ = counted_run
    M, r = cfg.population_size, cfg.explore_per_pop
    allowed = allowed_tokens(tiny_lm).numpy()
    for t in range(len(hist)):
        pool = hist.ids[t]
        assert pool.shape == (M + M * r, cfg.seq_len)
        assert allowed[pool].all()
        parents = np.repeat(pool[:M], r, axis=0)
        assert ((pool[M:] != parents).sum(1) <= 1).all()
        # exactly the prompts that do not retokenize are rejected, and never reported
        ok = retokenizes(tiny_lm.tokenizer, torch.tensor(pool, dtype=torch.long))
        np.testing.assert_array_equal(np.isfinite(hist.target[t]), ok)
        np.testing.assert_array_equal(hist.valid[t], ok)
    # n_scored: the distinct accepted children never seen before; n_memo: the other accepted
    # children (seen in an earlier pool, or a repeat within this one).
    seen = {tuple(row) for row in hist.ids[0][:M]}
    for t in range(len(hist)):
        fresh, looked_up = set(), 0
        for row, f in zip(map(tuple, hist.ids[t][M:]), hist.target[t][M:]):
            if not np.isfinite(f):
                continue
            if row in seen or row in fresh:
                looked_up += 1
            else:
                fresh.add(row)
        assert (hist.n_scored[t], hist.n_memo[t]) == (len(fresh), looked_up)
        seen |= fresh | {tuple(row) for row in hist.ids[t][M:]}


def test_callback_reports(counted_run):
    cfg, hist, _, reports = counted_run
    assert [rep.iteration for rep in reports] == list(range(cfg.iters))
    for t, rep in enumerate(reports):
        f, ce = hist.slot_scores(t)
        np.testing.assert_array_equal(rep.slot_target, f)
        np.testing.assert_array_equal(rep.slot_xentropy, ce)
        seen = hist.target[:t + 1][hist.valid[:t + 1]]             # what the run reports
        assert rep.best_target == pytest.approx(float(seen.max()))
        assert (rep.restart_lambda is None) == (t % cfg.restart_frequency != 0)
        assert rep.n_scored == hist.n_scored[t] <= cfg.children and rep.seconds > 0


# ---- determinism, GCG, resume, interruption ---------------------------------------------------

def test_same_seed_same_history_different_seed_different(tiny_lm):
    tgt = fd.Neuron(1, 5)
    a = fd.epo(tiny_lm, tgt, small(iters=4, restart_frequency=3, seed=7))
    b = fd.epo(tiny_lm, tgt, small(iters=4, restart_frequency=3, seed=7))
    c = fd.epo(tiny_lm, tgt, small(iters=4, restart_frequency=3, seed=8))
    arrays_equal(a, b)
    assert not np.array_equal(a.arrays()["ids"], c.arrays()["ids"])


def test_gcg_is_one_member_without_penalty(tiny_lm):
    hist = fd.gcg(tiny_lm, fd.Neuron(1, 5), small(iters=5, seed=0))
    a = hist.arrays()
    assert isinstance(hist, fd.History)
    assert a["lambdas"].tolist() == [0.0]
    assert a["ids"].shape == (5, 1 + 8, 8) and a["kept"].shape == (5, 1)
    assert np.isnan(a["restart_lambda"]).all()
    f = a["target"]
    kept_f = f[np.arange(5), a["kept"][:, 0]]
    np.testing.assert_array_equal(kept_f, f.max(1))                  # pure maximization
    assert (np.diff(kept_f) >= 0).all()


def test_resume_equals_uninterrupted(tiny_lm, tmp_path):
    tgt = fd.Neuron(1, 5)
    full = fd.epo(tiny_lm, tgt, small(iters=10, restart_frequency=4, seed=4))
    first = fd.epo(tiny_lm, tgt, small(iters=5, restart_frequency=4, seed=4))
    first.save(tmp_path / "h.npz")
    resumed = fd.epo(tiny_lm, tgt, small(iters=10, restart_frequency=4, seed=4),
                     resume=fd.History.load(tmp_path / "h.npz"))
    assert len(resumed) == 10
    arrays_equal(resumed, full)


def test_resume_needs_saved_state(tiny_lm):
    with pytest.raises(ValueError, match="no saved loop state"):
        fd.epo(tiny_lm, fd.Neuron(1, 5), small(iters=2), resume=fd.History(np.ones(4)))


def test_ctrl_c_in_a_callback_returns_a_resumable_partial_history(tiny_lm):
    tgt = fd.Neuron(1, 5)
    cfg = small(iters=6, restart_frequency=4, seed=5)

    def interrupt(report):
        if report.iteration == 2:
            raise KeyboardInterrupt

    partial = fd.epo(tiny_lm, tgt, cfg, callback=interrupt)
    assert len(partial) == 3 and partial.meta["interrupted"] is True
    assert partial.state.iteration == 3
    resumed = fd.epo(tiny_lm, tgt, cfg, resume=partial)
    arrays_equal(resumed, fd.epo(tiny_lm, tgt, cfg))


def test_callback_returning_true_stops(tiny_lm):
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), small(iters=50),
                  callback=lambda rep: rep.iteration == 1)
    assert len(hist) == 2 and "interrupted" not in hist.meta


def test_initial_prompt(tiny_lm, tokenizer):
    text = " return the list of the class"
    n = len(tokenizer.encode(text, add_special_tokens=False))
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), small(iters=1, seq_len=n, initial_prompt=text))
    assert (hist.ids[0][:4] == tokenizer.encode(text, add_special_tokens=False)).all()
    with pytest.raises(ValueError, match=f"initial_prompt encodes to {n} tokens; seq_len is 3"):
        fd.epo(tiny_lm, fd.Neuron(1, 5), small(iters=1, seq_len=3, initial_prompt=text))


@pytest.mark.parametrize("target, changes, message", [
    (fd.Neuron(1, 5), dict(topk=1000), "topk=1000 exceeds the .* usable tokens"),
    (fd.Neuron(1, 5), dict(dtype="bfloat16"), "cfg.dtype is bfloat16 but the model is torch.float32"),
    (fd.Neuron(2, 5), {}, "layer 2 is out of range"),
    (fd.Neuron(1, 5, position=8), {}, "position must be"),
    (fd.AttentionEntry(1, 0, 8), {}, "key position"),
])
def test_bad_runs_are_refused_before_starting(tiny_lm, target, changes, message):
    with pytest.raises(ValueError, match=message):
        fd.epo(tiny_lm, target, small(iters=1, **changes))


def test_reported_best_target_counts_the_initial_parents(tiny_lm):
    # One child per iteration: in some of these runs the random start beats its only child.
    for seed in range(6):
        reports = []
        hist = fd.gcg(tiny_lm, fd.Neuron(1, 5), small(iters=2, explore_per_pop=1, seed=seed),
                      callback=reports.append)
        for t, rep in enumerate(reports):
            assert rep.best_target == float(hist.target[:t + 1][hist.valid[:t + 1]].max())


def test_a_reused_scorer_must_compute_what_the_run_asks_for(tiny_lm):
    # A scorer made for L1.N5 and given to a run of L1.N7 would optimize L1.N5 under L1.N7's
    # name; one built with another rejection rule would change what the search may hold.
    cfg = fd.EPOConfig(iters=1, population_size=2, explore_per_pop=2, topk=8, seq_len=4)
    n5, n7 = fd.Neuron(1, 5), fd.Neuron(1, 7)
    with pytest.raises(fd.UserError, match="scores L1.N5, not L1.N7"):
        fd.epo(tiny_lm, n7, cfg, scorer=fd.Scorer(tiny_lm, n5), progress=False)
    with pytest.raises(fd.UserError, match="retokenize=False"):
        fd.epo(tiny_lm, n5, cfg, scorer=fd.Scorer(tiny_lm, n5, retokenize=False), progress=False)
    # the right scorer is used, and a scorer of several targets serves any of them
    both = fd.Scorer(tiny_lm, [n5, n7])
    hist = fd.epo(tiny_lm, n7, cfg, scorer=both, progress=False)
    alone = fd.epo(tiny_lm, n7, cfg, progress=False)
    np.testing.assert_array_equal(hist.ids, alone.ids)
    np.testing.assert_allclose(hist.target, alone.target, rtol=1e-5, atol=1e-6)


def test_the_search_never_holds_a_prompt_that_does_not_retokenize(tiny_lm):
    # Passing through them (reporting only the others) did worse on SmolLM2 than rejecting them
    # in the search (issue 35; LOG.md, 2026-12-07). Checked with the tokenizer itself, not with
    # the scorer's rule: every slot and every reported prompt decodes to text that encodes back.
    cfg = small(iters=8, seed=3)
    hist = fd.epo(tiny_lm, fd.Neuron(1, 5), cfg, progress=False)
    T, P, W = hist.ids.shape
    flat = torch.from_numpy(hist.ids.reshape(T * P, W).astype(np.int64))
    ok = retokenizes(tiny_lm.tokenizer, flat).reshape(T, P)
    assert not ok.all()                                 # the test can fail: some children don't
    held = np.stack([ok[t][hist.kept[t]] for t in range(T)])
    assert held.all()
    np.testing.assert_array_equal(np.isfinite(hist.target), ok)
    front = fd.pareto_frontier([hist], tiny_lm.tokenizer)
    assert retokenizes(tiny_lm.tokenizer, torch.from_numpy(front.ids.astype(np.int64))).all()
    # score() and score_counted() (what the search calls) apply the same rule
    scorer = fd.Scorer(tiny_lm, fd.Neuron(1, 5))
    bad = flat[~ok.reshape(-1)][:4]
    assert torch.isinf(scorer.score(bad)[0]).all() and torch.isinf(scorer.score_counted(bad)[0]).all()
    free = fd.Scorer(tiny_lm, fd.Neuron(1, 5), retokenize=False)
    assert torch.isfinite(free.score(bad)[0]).all()
