"""benchmarks/ablation.py, the parts that are fluentdream's (no reference checkout needed): each
arm changes what it says and nothing else, checked against independent computations; the
table's comparisons at equal iterations and equal compute on hand-made runs."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import REPO
from fluentdream.core.history import EPOState
from fluentdream.core.tokens import allowed_tokens, drawable_tokens, retokenizes


def _load():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_ablation", REPO / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ab = _load()
import ablation_arms as arms  # noqa: E402  (benchmarks/ is on the path once ablation.py loads)
import ablation_table as tab  # noqa: E402
SMALL = dict(population_size=4, explore_per_pop=4, seq_len=5, topk=16, batch_size=64)


def test_the_no_label_gradient_is_autograd_with_constant_labels(tiny_lm):
    # Independent: the one-hot X feeds the embeddings only; CE reads the tokens as constant
    # labels, so the label term of paper §2 is absent by construction.
    target = fd.Neuron(1, 4)
    ids = torch.randint(tiny_lm.vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    lambdas = torch.tensor([0.1, 1.0, 10.0])
    X = F.one_hot(ids, tiny_lm.vocab_size).float().requires_grad_(True)
    E = tiny_lm.model.get_input_embeddings().weight
    captured = {}
    h = tiny_lm.model.gpt_neox.layers[1].mlp.dense_4h_to_h.register_forward_pre_hook(
        lambda m, a: captured.__setitem__("mlp", a[0]))
    try:
        logits = tiny_lm.model(inputs_embeds=X @ E).logits
    finally:
        h.remove()
    f = captured["mlp"][:, -1, 4]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none").view(3, 5).mean(1)
    want, = torch.autograd.grad((f - lambdas * ce).sum(), X)
    got = ab.NoLabelScorer(tiny_lm, target).gradients(ids, lambdas)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    full = fd.Scorer(tiny_lm, target).gradients(ids, lambdas)
    assert not torch.allclose(full, got, atol=1e-3)          # the label term is not small


def test_row_lambda_gives_prompts_new_to_slots_the_lowest_penalties_in_order():
    seen = []
    wrapped = arms.row_lambda(lambda scorer, runs, allowed: seen.extend(runs))
    M = 4
    state = EPOState(0, np.zeros((M, 3), int), np.zeros(M, np.float32), np.zeros(M, np.float32),
                     np.zeros((M, 3, 2), np.int32), np.array([True, False, True, False]),
                     np.zeros(1, np.uint8))
    lambdas = torch.tensor([0.1, 1.0, 5.0, 10.0])
    wrapped(None, [(state, lambdas, 2, 0)], None)
    assert seen[0][1].tolist() == pytest.approx([0.1, 0.1, 5.0, 1.0])   # slots 1, 3 take 0.1, 1.0


@pytest.mark.parametrize("arm", ["all-tokens", "vocab-init", "fixed-restart", "no-retokenize",
                                 "pass-through"])
def test_each_arm_changes_what_it_says(tiny_lm, arm):
    cfg = fd.EPOConfig(iters=3, seed=4, restart_frequency=2, **SMALL)
    hist = ab.run_one(arm, tiny_lm, "L1.N4", cfg, module=None)
    assert len(hist.meta["cpu_clock"]) == len(hist.meta["wall_clock"]) == 3
    pool = hist.ids[:, :, :]
    if arm == "all-tokens":                                  # the search may leave allowed_tokens
        assert not allowed_tokens(tiny_lm).all()
    if arm == "vocab-init":                                  # drawn off the drawable set
        assert not drawable_tokens(tiny_lm)[torch.from_numpy(pool[0][:4].astype(np.int64))].all()
    if arm == "fixed-restart":
        lam = hist.restart_lambda[~np.isnan(hist.restart_lambda)]
        assert (lam == 2.0).all() and len(lam) == 2
    if arm == "no-retokenize":
        assert ab.arm_config(arm, cfg).retokenize is False and np.isfinite(hist.target).all()
    if arm == "pass-through":                                # scored, held maybe, never reported
        T, P, W = pool.shape
        ok = retokenizes(tiny_lm.tokenizer, torch.from_numpy(pool.reshape(T * P, W).astype(np.int64)))
        assert np.isfinite(hist.target).all() and not ok.all()
        np.testing.assert_array_equal(hist.valid.ravel(), ok)


def _row(arm, seed, curve, cpu):
    return dict(arm=arm, target="t", seed=seed, curve=curve, cpu_clock=cpu, wall_clock=cpu)


def test_equal_iterations_and_equal_compute_on_hand_made_runs():
    rows = ([_row("reference", s, [1.0, 2.0, 3.0 + s], [10.0, 20.0, 30.0]) for s in range(3)]
            + [_row("defaults", s, [2.0, 2.5, 2.6 + s], [1.0, 2.0, 3.0]) for s in range(3)]
            + [_row("fp32", s, [2.0, 2.5, 2.6 + s], [5.0, 10.0, 15.0]) for s in range(3)])
    summary = tab.summarize(rows)["t"]
    assert summary["defaults"]["mean"] == pytest.approx(3.6)
    eq = summary["defaults"]["equal_compute"]
    assert eq["seconds"] == 3.0 and eq["reference_mean"] == 0.0    # the reference has not ended
    assert summary["fp32"]["equal_compute"]["reference_mean"] == pytest.approx(1.0)  # 1 iteration
    assert summary["fp32"]["vs_defaults"]["difference"] == 0.0
    assert tab.at_compute(rows[0], 25.0) == 2.0 and tab.at_compute(rows[0], 5.0) == 0.0
    table = tab.markdown(tab.summarize(rows), dict(iters=3, seeds=3))
    assert "| defaults |" in table and "3.6 ± 1.0" in table


def test_all_targets_at_once_pairs_seeds_within_a_target_at_its_equal_iterations():
    """Two targets on different scales, the arm above the defaults on every seed of both: one
    test over all 6 pairs (its exact p by hand: 2 of 2^6 sign flips are as extreme); the
    reference's extra iteration is not read (equal iterations = the shortest run's)."""
    rows = []
    for target, scale in (("a", 1.0), ("b", 100.0)):
        for s in range(3):
            rows += [dict(_row("defaults", s, [0.0, scale * s], [1.0, 2.0]), target=target),
                     dict(_row("fp32", s, [0.0, scale * (s + 1)], [1.0, 2.0]), target=target),
                     dict(_row("reference", s, [0.0, 0.0, 9.0], [1.0, 2.0, 3.0]), target=target)]
    across = tab.across_targets(rows)
    assert set(across) == {"fp32"}
    e = across["fp32"]
    assert (e["pairs"], e["wins"], e["nonzero"]) == (6, 6, 6)
    assert e["p"] == pytest.approx(2 / 2 ** 6) and e["holm_p"] == e["p"]
    assert "| fp32 | 6 of 6 |" in tab.across_markdown(across)


def test_runs_judged_apart_tabulate_as_one(tmp_path, capsys):
    """Two --json files, one target each (judged by two processes): --from-json A B gives the
    table of all their runs together, the all-targets test over both, and both commands."""
    files = []
    for target, scale in (("a", 1.0), ("b", 100.0)):
        rows = [dict(_row(arm, s, [0.0, scale * (s + bump)], [1.0, 2.0]), target=target,
                     made_at="abc1234")
                for s in range(3) for arm, bump in (("reference", 0), ("defaults", 0), ("fp32", 1))]
        meta = dict(command=f"judge {target}", model="m", iters=2, reference_iters=2, seeds=3,
                    targets=[target], arms=["reference", "defaults", "fp32"], cpu="c",
                    fluentdream_sha="s", reference_sha=None)
        result = dict(meta=meta, summary=tab.summarize(rows), runs=rows)
        files.append(tmp_path / f"{target}.json")
        files[-1].write_text(json.dumps(result))
    report = tmp_path / "B.md"
    assert ab.main(["--from-json", *map(str, files), "--report", str(report)]) == 0
    text = report.read_text()
    assert "**a**" in text and "**b**" in text and "| fp32 | 6 of 6 |" in text
    assert "`judge a; judge b; then python benchmarks/ablation.py --from-json" in text
    both = tmp_path / "both.json"
    assert ab.main(["--from-json", *map(str, files), "--json", str(both)]) == 0
    one = json.loads(both.read_text())
    assert one["summary"] == json.loads(json.dumps(tab.summarize(one["runs"])))
    assert one["meta"]["targets"] == ["a", "b"] and len(one["runs"]) == 18
    files[0].write_text("{}")
    assert ab.main(["--from-json", str(files[0])]) == 2
    assert "not a results file" in capsys.readouterr().err


def test_time_to_the_references_frontier_in_cpu_seconds_by_hand(tmp_path, capsys):
    """Goal = the lower median of the reference's finals (3, 4, 5 -> 4); a run's time is its
    CPU clock at the first iteration reaching it, scanned (a curve may fall), never = inf."""
    import ablation_latency as al
    rows = ([_row("reference", s, [1.0, 2.0, 3.0 + s], [10.0, 20.0, 30.0]) for s in range(3)]
            + [_row("defaults", 0, [4.5, 1.0, 1.0], [1.0, 2.0, 3.0]),   # reaches at once, then falls
               _row("defaults", 1, [1.0, 4.0, 9.0], [1.0, 2.0, 3.0]),
               _row("defaults", 2, [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])])  # never
    got = {(r["implementation"], r["seed"]): r["seconds_to_goal"]
           for r in al.latency_rows(rows, "defaults")}
    assert got == {("reference", 0): None, ("reference", 1): 30.0, ("reference", 2): 30.0,
                   ("fluentdream", 0): 1.0, ("fluentdream", 1): 2.0, ("fluentdream", 2): None}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(dict(meta=dict(model="m", iters=3, command="c", cpu="x",
                                              fluentdream_sha="s", reference_sha="r"), runs=rows)))
    assert al.main([str(path), "--report", str(tmp_path / "B.md")]) == 0
    assert "| t | 30.0 | 2.0 | 15.00x" in capsys.readouterr().out
    assert "## Single runs to the reference's frontier in CPU seconds (ablation runs): m" in \
        (tmp_path / "B.md").read_text()
    assert al.main([str(path), "--arm", "fp32"]) == 2
    assert al.main([str(tmp_path / "none.json")]) == 2


def test_a_continued_run_is_the_long_run_and_its_clocks_go_on(tiny_lm):
    cfg = fd.EPOConfig(iters=6, seed=2, restart_frequency=4, **SMALL)
    whole = ab.run_one("defaults", tiny_lm, "L1.N4", cfg, module=None)
    short = ab.run_one("defaults", tiny_lm, "L1.N4", cfg.replace(iters=3), module=None)
    short.meta["fluentdream_sha"] = "abc"
    longer = ab.run_one("defaults", tiny_lm, "L1.N4", cfg, module=None, resume=short)
    np.testing.assert_array_equal(longer.ids, whole.ids)
    for clock in ("cpu_clock", "wall_clock"):
        c = np.asarray(longer.meta[clock])
        assert len(c) == 6 and (np.diff(c) > 0).all()


def test_arms_longer_than_the_reference_are_compared_at_its_iterations():
    rows = ([_row("reference", s, [1.0, 2.0], [10.0, 20.0]) for s in range(3)]
            + [_row("defaults", s, [1.5, 2.5, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0]) for s in range(3)])
    summary = tab.summarize(rows)["t"]
    assert summary["defaults"]["mean"] == pytest.approx(2.5) and summary["defaults"]["iterations"] == 2
    assert summary["defaults"]["equal_compute"]["seconds"] == 4.0      # its whole run's CPU time
    assert ab.iterations(type("A", (), dict(iters=4, reference_iters=2))(), "reference") == 2
    assert ab.iterations(type("A", (), dict(iters=4, reference_iters=None))(), "reference") == 4
