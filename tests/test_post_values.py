"""Pre-activation runs report the post-activation value of every frontier point (DESIGN §5):
frontier.json's `post`, the summary's best post values and the printed table, checked against a
plain forward of the HF model with the activation function and the SAE formula written here."""
from __future__ import annotations

import json
import math

import pytest
import torch

import fluentdream as fd
from fluentdream import runs
from test_sae import hidden_before_block, reference_encoder, weights, write_saelens

CFG = fd.EPOConfig(iters=4, population_size=4, explore_per_pop=4, topk=16, seq_len=6,
                   restart_frequency=2, seed=0)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX's exact GELU, from its definition x Phi(x)."""
    return x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def neuron_post(lm, ids: torch.Tensor, layer: int, neuron: int) -> torch.Tensor:
    """(B, n) -> (B,): GELU of the MLP's input projection output at the last position, read by a
    plain forward hook on the projection (not the activation function the library hooks)."""
    store = []
    proj = lm.blocks[layer].mlp.dense_h_to_4h
    handle = proj.register_forward_hook(lambda m, a, out: store.append(out))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        handle.remove()
    return gelu(store[0][:, -1, neuron])


def read_run(d):
    return (json.loads((d / "frontier.json").read_text()),
            json.loads((d / "summary.json").read_text()))


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    w = weights("topk")
    return write_saelens(tmp_path_factory.mktemp("sae") / "topk", "topk", w, k=5), w


def test_batched_runs_store_post_values(make_lm, tmp_path, sae_dir):
    lm = make_lm("gpt_neox")
    d, w = sae_dir
    specs = ("L1.N5:pre", f"sae:{d}:7:pre", "L1.N5")
    dirs = runs.dream_many(lm, [(fd.parse_target(s, lm), CFG) for s in specs], tmp_path)
    (neuron, sae, plain) = [read_run(x) for x in dirs]
    for front, summary in (neuron, sae):
        ids = torch.tensor([r["ids"] for r in front])
        want = (neuron_post(lm, ids, 1, 5) if front is neuron[0] else
                reference_encoder("topk", w, hidden_before_block(lm, ids, 1), k=5)[:, -1, 7])
        got = torch.tensor([r["post"] for r in front], dtype=torch.float32)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert summary["best_post"] == pytest.approx(max(r["post"] for r in front))
        below = [r["post"] for r in front if r["xentropy"] < 6]
        assert summary["best_post_ce_below_6"] == (pytest.approx(max(below)) if below else None)
    # a post-activation target has nothing to add
    assert "post" not in plain[0][0] and "best_post" not in plain[1]


def test_single_run_prints_and_saves_post_values(make_lm, tmp_path, sae_dir):
    lm = make_lm("gpt_neox")
    tgt = fd.parse_target(f"sae:{sae_dir[0]}:3:pre", lm)
    result = runs.run_dream(lm, tgt, CFG, tmp_path / "run")
    front, _ = read_run(tmp_path / "run")
    assert [r["post"] for r in front] == pytest.approx(list(result.frontier.post))
    # the post value never exceeds the pre-activation it is made from (TopK keeps relu(pre) or 0)
    assert all(r["post"] <= max(r["target"], 0) + 1e-5 for r in front)
    header = result.frontier.table().splitlines()[0].split()
    assert header[:3] == ["activation", "post", "xentropy"]


def test_post_values_are_read_inside_the_runs_prefix_and_suffix(make_lm, tmp_path):
    """The model read prefix + x + suffix, so the post value of x is read there too."""
    lm = make_lm("gpt_neox")
    cfg = CFG.replace(prefix=" the cat", suffix=" is")
    result = runs.run_dream(lm, fd.parse_target("L1.N5:pre", lm), cfg, tmp_path / "run")
    front, _ = read_run(tmp_path / "run")
    ids = torch.tensor([r["ids"] for r in front])
    enc = lambda text: torch.tensor(lm.tokenizer.encode(text, add_special_tokens=False))
    B = len(ids)
    full = torch.cat([enc(" the cat").expand(B, -1), ids, enc(" is").expand(B, -1)], 1)
    got = torch.tensor([r["post"] for r in front], dtype=torch.float32)
    torch.testing.assert_close(got, neuron_post(lm, full, 1, 5), rtol=1e-4, atol=1e-4)
    assert list(result.frontier.post) == pytest.approx(got.tolist())


def test_frontier_command_prints_the_post_column(make_lm, tmp_path, capsys):
    from fluentdream.cli import main
    lm = make_lm("gpt_neox")
    runs.run_dream(lm, fd.parse_target("L1.N5:pre", lm), CFG, tmp_path / "run")
    front, _ = read_run(tmp_path / "run")
    capsys.readouterr()
    assert main(["frontier", str(tmp_path / "run")]) == 0
    head, *rows = capsys.readouterr().out.strip().splitlines()[:1 + len(front)]
    assert head.split()[:3] == ["activation", "post", "xentropy"]
    assert [float(r.split()[1]) for r in rows] == pytest.approx([r["post"] for r in front],
                                                                abs=1e-3)
