"""benchmarks/reference.py, the parts that are fluentdream's (no reference checkout needed): its
cache_run is the objective fluentdream scores, a reference History converts to ours, and the
metrics and report add up on hand-made numbers."""
from __future__ import annotations

import importlib.util
import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluentdream as fd
from conftest import REPO
from fluentdream.evaluate import Scorer


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


def test_run_metrics_on_hand_made_points():
    # (CE, f): (2, 1), (4, 3), (6, 4) and one rejected; threshold 5; corner (8, 0)
    hist = fd.History(lambdas=np.array([1.0]))
    hist.append(np.arange(8).reshape(4, 2), [1.0, 3.0, 4.0, -np.inf], [2.0, 4.0, 6.0, np.nan],
                [0], np.nan, 0.1, 3)
    m = bench.run_metrics(hist, threshold=5.0, ref_point=(8.0, 0.0))
    # staircase: CE [2, 4) at height 1, [4, 6) at 3, [6, 8) at 4 -> 2 + 6 + 8
    assert m == dict(best=4.0, best_in_dist=3.0, hypervolume=16.0, rejected=0.25)
    assert np.isnan(bench.run_metrics(hist, threshold=1.0, ref_point=(8.0, 0.0))["best_in_dist"])
    assert bench.reference_point([(9.0, -0.1), (12.0, 0.2), (10.0, -0.3)]) == (12.0, -0.3)


def _rows():
    rows = []
    for t, shift in (("L1.N5", 1.0), ("logit: x", -0.5)):
        for seed, base in enumerate((1.0, 2.0, 3.0)):
            for impl, add in (("fluentdream", shift * (seed + 1)), ("reference", 0.0)):
                rows.append(dict(target=t, implementation=impl, seed=seed, best=base + add,
                                 best_in_dist=base + add - 1, hypervolume=10 * (base + add),
                                 sec_per_iter=0.1 if impl == "fluentdream" else 0.3,
                                 median_iter=0.09, rejected=0.0))
    return rows


def test_summary_pairs_runs_by_seed():
    s = bench.summarize(_rows())
    ours = s["L1.N5"]["stats"]["fluentdream"]["best"]        # 2, 4, 6
    assert ours["mean"] == pytest.approx(4.0) and ours["sd"] == pytest.approx(2.0)
    p = s["L1.N5"]["paired"]["best"]                         # differences 1, 2, 3
    assert p["mean"] == pytest.approx(2.0) and (p["ahead"], p["behind"]) == (3, 0)
    assert 1.0 <= p["ci"][0] <= 2.0 <= p["ci"][1] <= 3.0
    # exact signed-rank test, 3 positive differences: W+ = 6 has probability 1/8; two-sided 1/4
    assert p["p"] == pytest.approx(0.25)
    assert s["logit: x"]["paired"]["hypervolume"]["behind"] == 3
    pooled = s["all"]["paired"]["best"]
    assert (pooled["ahead"], pooled["behind"], pooled["pairs"]) == (3, 3, 6)


def test_report_table():
    text = bench.markdown(bench.summarize(_rows()), threshold=6.46)
    assert "| target | implementation | best activation | best at CE < 6.46 |" in text
    assert "| L1.N5 | fluentdream | 4.00 ± 2.00 | 3.00 ± 2.00 | 40.00 ± 20.00 | 0.100 | 0.090 | 0.0% |" in text
    assert "| L1.N5 | +2.00 [" in text and "| all targets (p and counts only) | p = " in text


@pytest.mark.parametrize("argv, message", [
    (["--iters", "0"], "--iters must be at least 1"),
    ([], "not a checkout of Confirm-Solutions/dreamy"),
    (["--reference", ""], "give --reference PATH"),
    (["--json", "/proc/nowhere/results.json"], "is not a writable folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert bench.main(["--reference", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_tables_from_a_saved_results_file(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(meta=dict(threshold=6.46), runs=_rows())))
    assert bench.main(["--from-json", str(path)]) == 0
    assert "| L1.N5 | fluentdream | 4.00 ± 2.00 |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert bench.main(["--from-json", str(tmp_path / "bad.json")]) == 2
    assert "is not a results file of this script" in capsys.readouterr().err
