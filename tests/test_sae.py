"""SAEs from disk (fluentdream.targets.sae): every architecture's encoder against its formula written here,
every layout (SAELens v6, SAELens before 6, sparsify), normalizations, hook names, errors, and SAE
targets scored through the packed pass equal to full scoring and to a plain forward of the model."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import fluentdream as fd
from conftest import load_experiment
from fluentdream.core.scoring import Scorer
from fluentdream.targets.sae import SHIPPED, load_sae

D_IN, D_SAE = 64, 32


def weights(arch: str, d_in=D_IN, d_sae=D_SAE, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = dict(W_enc=torch.randn(d_in, d_sae, generator=g) / 4, W_dec=torch.randn(d_sae, d_in, generator=g),
             b_dec=torch.randn(d_in, generator=g) / 4)
    if arch == "gated":
        w.update(b_gate=torch.randn(d_sae, generator=g), r_mag=torch.randn(d_sae, generator=g) / 2,
                 b_mag=torch.randn(d_sae, generator=g))
    else:
        w["b_enc"] = torch.randn(d_sae, generator=g)
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 2
    return w


def write_saelens(path, arch, w, hook="blocks.1.hook_resid_pre", v6=True, **cfg):
    """A directory as SAELens writes it: v6 keeps the hook in metadata, older versions at the top
    level (as hook_name, or hook_point before that) and imply the architecture."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, str(path / "sae_weights.safetensors"))
    d_in, d_sae = w["W_enc"].shape
    if v6:
        body = dict(architecture=arch, d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu",
                    apply_b_dec_to_input=True, normalize_activations="none",
                    reshape_activations="none", metadata=dict(hook_name=hook, sae_lens_version="6.5.0"))
    else:
        body = dict(d_in=d_in, d_sae=d_sae, hook_point=hook, hook_point_layer=1, sae_lens_version="3.1.0")
        if arch == "topk":
            body.update(activation_fn_str="topk", activation_fn_kwargs=dict(k=cfg.pop("k")))
        elif arch == "gated":
            body["architecture"] = "gated"
    (path / "cfg.json").write_text(json.dumps({**body, **cfg}))
    return path


def reference_encoder(arch, w, x, k=None, pre=False):
    """The architectures' formulas, written out: (..., d_in) -> (..., d_sae)."""
    xt = x - w["b_dec"]
    if arch == "gated":
        mag = xt @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"]
        return mag if pre else (xt @ w["W_enc"] + w["b_gate"] > 0).float() * torch.clamp(mag, min=0)
    z = xt @ w["W_enc"] + w["b_enc"]
    if pre:
        return z
    if arch == "standard":
        return torch.clamp(z, min=0)
    if arch == "jumprelu":
        return z * (z > w["threshold"]).float()
    kth = z.sort(dim=-1, descending=True).values[..., k - 1:k]       # the k-th largest per row
    return torch.where(z >= kth, torch.clamp(z, min=0), torch.zeros_like(z))


ARCHS = ("standard", "jumprelu", "topk", "gated")


@pytest.mark.parametrize("v6", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_equals_the_architectures_formula(tmp_path, arch, v6):
    w = weights(arch)
    extra = dict(k=5) if arch == "topk" else {}
    sae = load_sae(write_saelens(tmp_path / arch, arch, w, v6=v6, **extra))
    assert (sae.architecture, sae.site, sae.d_in, sae.d_sae) == (arch, ("resid", 1), D_IN, D_SAE)
    x = torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    want, want_pre = reference_encoder(arch, w, x, k=5), reference_encoder(arch, w, x, pre=True)
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)
    assert 0 < (want > 0).float().mean() < 1                    # some latents on, some off
    for j in range(D_SAE):
        torch.testing.assert_close(sae.latent(x, j), want[..., j], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.latent(x, j, pre=True), want_pre[..., j], rtol=1e-5, atol=1e-5)


def test_topk_keeps_exactly_k_and_rescales_by_decoder_norm(tmp_path):
    w = weights("topk")
    sae = load_sae(write_saelens(tmp_path / "t", "topk", w, k=4, rescale_acts_by_decoder_norm=True))
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(2)) * 3
    z = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * w["W_dec"].norm(dim=1)
    order = z.argsort(dim=-1, descending=True)[:, :4]
    want = torch.zeros_like(z)
    for r in range(len(z)):
        want[r, order[r]] = torch.clamp(z[r, order[r]], min=0)
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)
    assert ((sae.encode(x) != 0).sum(-1) <= 4).all()


def test_normalizations_and_b_dec_switch(tmp_path):
    w = weights("standard")
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(3)) * 7
    relu = lambda xt: torch.clamp(xt @ w["W_enc"] + w["b_enc"], min=0)            # noqa: E731
    cases = {
        "constant_norm_rescale": x * (D_IN ** 0.5) / x.norm(dim=-1, keepdim=True),
        "layer_norm": (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5),
        "none": x,
    }
    for norm, xn in cases.items():
        sae = load_sae(write_saelens(tmp_path / norm, "standard", w, normalize_activations=norm))
        torch.testing.assert_close(sae.encode(x), relu(xn - w["b_dec"]), rtol=1e-5, atol=1e-5)
    # expected_average_only_in: a saved scaling factor multiplies the input (unfolded checkpoints)
    d = write_saelens(tmp_path / "avg", "standard", w, normalize_activations="expected_average_only_in")
    (d / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    torch.testing.assert_close(load_sae(d).encode(x), relu(0.25 * x - w["b_dec"]), rtol=1e-5, atol=1e-5)
    d = write_saelens(tmp_path / "nob", "standard", w, apply_b_dec_to_input=False)
    torch.testing.assert_close(load_sae(d).encode(x), relu(x), rtol=1e-5, atol=1e-5)


def write_sparsify(path, w, k):
    """sparsify's layout: encoder.weight (d_sae, d_in), W_dec (d_sae, d_in); dir = hookpoint."""
    path.mkdir(parents=True)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps(dict(expansion_factor=1, normalize_decoder=True,
                                                   num_latents=D_SAE, k=k, multi_topk=False,
                                                   skip_connection=False, d_in=D_IN)))
    return path


def test_sparsify_layout(tmp_path):
    w = weights("topk")
    sae = load_sae(write_sparsify(tmp_path / "layers.0", w, k=6))
    assert (sae.architecture, sae.site, sae.k) == ("topk", ("resid", 1), 6)   # block 0's output
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sae.encode(x), reference_encoder("topk", w, x, k=6), rtol=1e-5, atol=1e-5)
    assert torch.equal(sae.W_dec, w["W_dec"])                  # already (d_sae, d_in): not transposed
    assert load_sae(write_sparsify(tmp_path / "gpt_neox.layers.1.mlp", w, k=6)).site == ("mlp_out", 1)
    # a converter that transposed W_dec to (d_in, d_sae): shapes decide, not names
    d = write_saelens(tmp_path / "conv", "topk", dict(w, W_dec=w["W_dec"].T), k=6)
    assert torch.equal(load_sae(d).W_dec, w["W_dec"])


def test_hook_names_map_onto_sites(tmp_path):
    w = weights("standard")
    hooks = {"blocks.0.hook_resid_pre": ("resid", 0), "blocks.1.hook_resid_post": ("resid", 2),
             "blocks.1.hook_mlp_out": ("mlp_out", 1)}
    for i, (hook, site) in enumerate(hooks.items()):
        assert load_sae(write_saelens(tmp_path / f"v6_{i}", "standard", w, hook=hook)).site == site
        assert load_sae(write_saelens(tmp_path / f"old_{i}", "standard", w, hook=hook, v6=False)).site == site
    d = tmp_path / "name"           # SAELens 3-5: hook_name at the top level
    write_saelens(d, "standard", w, v6=False)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["hook_name"] = cfg.pop("hook_point").replace("1", "0")
    (d / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(d).site == ("resid", 0)


def test_bad_sae_files_give_one_line_errors(tmp_path):
    w = weights("standard")
    bad = {
        "arch": (lambda d: write_saelens(d, "batchtopk", w),
                 "architecture 'batchtopk'; supported: standard, jumprelu, topk, gated"),
        "thr": (lambda d: write_saelens(d, "jumprelu", w),
                r"sae_weights.safetensors' lack threshold, needed by a jumprelu SAE \(it holds W_dec"),
        "gate": (lambda d: write_saelens(d, "gated", w), "lack b_gate, r_mag, b_mag, needed by a gated"),
        "shape": (lambda d: write_saelens(d, "standard", dict(w, b_enc=torch.zeros(D_SAE + 1))),
                  r"b_enc has shape \(33,\), expected \(32,\) for d_in 64, d_sae 32"),
        "norm": (lambda d: write_saelens(d, "standard", w, normalize_activations="whiten"),
                 "normalize_activations 'whiten'; supported: none, expected_average_only_in, "
                 "constant_norm_rescale, layer_norm"),
        "hook": (lambda d: write_saelens(d, "standard", w, hook="blocks.1.attn.hook_z"),
                 "reads hook 'blocks.1.attn.hook_z', which is not supported; allowed: blocks.L.hook_resid_pre"),
        "k": (lambda d: write_saelens(d, "topk", w, k=0), r"has k = 0 in cfg.json; allowed 1..32"),
        "act": (lambda d: write_saelens(d, "standard", w, v6=False, activation_fn_str="tanh-relu"),
                "activation_fn 'tanh-relu'; supported: relu, topk"),
        "none": (lambda d: d.mkdir(), "holds neither cfg.json \\+ sae_weights.safetensors"),
        "layers.x": (lambda d: write_sparsify(d, w, k=2), "cannot tell where sparsify SAE"),
    }
    for name, (make, message) in bad.items():
        make(tmp_path / name)
        with pytest.raises(fd.UserError, match=message):
            load_sae(tmp_path / name)
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "cfg.json").write_text("{")
    (tmp_path / "json" / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(fd.UserError, match="is not valid JSON"):
        load_sae(tmp_path / "json")


def hidden_before_block(lm, ids, layer):
    with torch.no_grad():
        return lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer]


def mlp_output(lm, ids, layer):
    """The MLP module's output, by a hook on the MLP module itself (not on its projection)."""
    store = []
    mlp = lm.blocks[layer].get_submodule("mlp")
    handle = mlp.register_forward_hook(lambda m, a, out: store.append(out))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        handle.remove()
    return store[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_sae_target_equals_the_formula_on_a_plain_forward(make_lm, tmp_path, arch):
    lm = make_lm("gpt_neox")
    w = weights(arch)
    d = write_saelens(tmp_path / arch, arch, w, **(dict(k=5) if arch == "topk" else {}))
    ids = torch.randint(1, lm.vocab_size, (6, 9), generator=torch.Generator().manual_seed(5))
    x = hidden_before_block(lm, ids, 1)
    for j in (0, 7, 19):
        for pre, suffix in ((False, ""), (True, ":pre")):
            want = reference_encoder(arch, w, x, k=5, pre=pre)[:, :, j]
            tgt = fd.parse_target(f"sae:{d}:{j}{suffix}@max", lm)
            f, _ = Scorer(lm, tgt, retokenize=False).score(ids)
            torch.testing.assert_close(f, want.max(1).values, rtol=1e-4, atol=1e-4)
    tgt = fd.parse_target(f"sae:{d}:3:pre", lm)
    assert tgt.name == f"sae:{arch}:3:pre" and tgt.post.name == f"sae:{arch}:3" and tgt.post.post is None


@pytest.mark.parametrize("arch", ("gpt_neox", "gpt2", "llama"))
def test_mlp_out_sae_reads_the_mlp_output(make_lm, tmp_path, arch):
    lm = make_lm(arch)
    w = weights("standard")
    d = write_saelens(tmp_path / "m", "standard", w, hook="blocks.0.hook_mlp_out")
    ids = torch.randint(1, lm.vocab_size, (4, 8), generator=torch.Generator().manual_seed(6))
    want = reference_encoder("standard", w, mlp_output(lm, ids, 0))[:, -1, 11]
    f, _ = Scorer(lm, fd.parse_target(f"sae:{d}:11", lm), retokenize=False).score(ids)
    torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ("gpt_neox", "phi", "gpt2", "llama"))
def test_packed_scoring_equals_full_scoring_for_the_new_sites(make_lm, tmp_path, arch):
    """Pre-activation neurons (layer 0 too, whose MLP the packed pass may run once per token), SAE
    latents on the residual stream and on the MLP output, before and after their activation."""
    lm = make_lm(arch)
    w = weights("topk")
    resid = write_saelens(tmp_path / "r", "topk", w, k=5)
    mlp = write_saelens(tmp_path / "m", "topk", w, hook="blocks.0.hook_mlp_out", k=5)
    g = torch.Generator().manual_seed(7)
    parents = torch.randint(lm.vocab_size, (3, 12), generator=g)
    rows = parents.repeat_interleave(12, dim=0)
    kids = rows.clone()
    kids[torch.arange(len(kids)), torch.randint(12, (len(kids),), generator=g)] = torch.randint(
        lm.vocab_size, (len(kids),), generator=g)
    for spec in ("L1.N5:pre", "L0.N3:pre@max", "L0.N3", f"sae:{resid}:4", f"sae:{resid}:4:pre@max",
                 f"sae:{mlp}:9", f"sae:{mlp}:9:pre"):
        tgt = fd.parse_target(spec, lm)
        full = Scorer(lm, tgt, retokenize=False, reuse_prefix=False, memo_size=0).score(kids)
        fast = Scorer(lm, tgt, retokenize=False).score(kids, parents=rows)
        for a, b in zip(fast, full):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_shipped_sae_loads_by_name_and_matches_a_plain_forward():
    lm = fd.load_model("embedded", device="cpu", dtype="float32")
    tgt = fd.parse_target("sae:embedded-L2:123", lm)
    cfg = json.loads((SHIPPED["embedded-L2"] / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_pre"
    assert (SHIPPED["embedded-L2"] / "SAE_CARD.md").is_file()
    assert tgt.sae.site == ("resid", 2) and tgt.name == "sae:embedded-L2:123"
    assert fd.parse_target(f"sae:{SHIPPED['embedded-L2']}:123", lm).sae.d_sae == tgt.sae.d_sae
    ids = torch.tensor([row[:7] for row in lm.tokenizer(
        ["def main(args): return the value of the", "import numpy as np and then"])["input_ids"]])
    from safetensors.torch import load_file
    w = load_file(str(SHIPPED["embedded-L2"] / "sae_weights.safetensors"))
    z = reference_encoder("topk", w, hidden_before_block(lm, ids, 2), k=cfg["k"])
    j = int(z[:, -1].sum(0).argmax())                                  # a latent active here
    f, _ = Scorer(lm, fd.parse_target(f"sae:embedded-L2:{j}", lm), retokenize=False).score(ids)
    torch.testing.assert_close(f, z[:, -1, j], rtol=1e-4, atol=1e-4)
    assert f.max() > 0


def test_training_script_smoke(tmp_path):
    train = load_experiment("10a_train_sae")
    out = train.main(["--preset", "smoke", "--out", str(tmp_path / "sae")])
    sae = load_sae(out)
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert (sae.architecture, sae.site, sae.k, sae.d_sae) == ("topk", ("resid", 2), 8, 256)
    assert 0 < metrics["heldout"]["fvu"] < 1 and metrics["tokens_seen"] > 0
    assert "fraction of variance unexplained" in (out / "SAE_CARD.md").read_text()


def test_mining_every_latent_in_one_pass_equals_brute_force(make_lm, tmp_path):
    """`mining.sae_latents`: the top example of every latent, in context, against each context
    window run alone through the model and the TopK formula; re-scored alone as the target does."""
    import pandas as pd
    import pydoc_data.topics

    from fluentdream.data import mining
    from fluentdream.data.corpus import context_windows, documents

    lm = make_lm("gpt_neox")
    texts = [t[:400] for t in list(pydoc_data.topics.topics.values())[:6]]
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "docs.parquet")
    source = mining.DataSource(str(tmp_path / "docs.parquet"))
    w = weights("topk")
    sae = load_sae(write_saelens(tmp_path / "s", "topk", w, k=5))
    cfg = mining.MineConfig(top_k=3, context=32, window=6, batch_size=4, tokens=1500)
    ex = mining.mine(lm, source, [mining.sae_latents(sae)], cfg).examples
    best = torch.full((D_SAE,), -torch.inf)
    for _, ids in documents(source, lm.tokenizer, cfg.tokens):
        for _, toks in context_windows(ids, cfg.context, cfg.window):
            x = hidden_before_block(lm, torch.tensor([toks]), 1)[0, cfg.window - 1:]
            best = torch.maximum(best, reference_encoder("topk", w, x, k=5).max(0).values)
    top = ex[ex["rank"] == 0].set_index("feature")
    fired = torch.tensor(top.index.to_numpy().copy())
    torch.testing.assert_close(torch.tensor(top["activation"].to_numpy(), dtype=torch.float32),
                               best[fired], rtol=1e-4, atol=1e-4)
    assert len(fired) > D_SAE // 2
    row = top.iloc[0]
    assert row["target"] == f"sae:s:{top.index[0]}"
    f, ce = Scorer(lm, fd.SAELatent(sae, int(top.index[0])), retokenize=False).score(
        torch.tensor(row["window_ids"])[None])
    torch.testing.assert_close(f[0].item(), row["window_activation"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ce[0].item(), row["window_xentropy"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_dreams_an_sae_latent_of_every_architecture(tiny_model_dir, tmp_path, capsys, arch):
    from fluentdream.cli import main

    d = write_saelens(tmp_path / arch, arch, weights(arch), **(dict(k=5) if arch == "topk" else {}))
    args = ["dream", "--model", str(tiny_model_dir), "--out", str(tmp_path / "runs"), "--iters", "2",
            "--population-size", "4", "--explore-per-pop", "4", "--topk", "16", "--seq-len", "6",
            "--wandb", "disabled", "--no-progress"]
    assert main(args + ["--target", f"sae:{d}:3:pre"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert fd.History.load(run / "history.npz").meta["target"] == f"sae:{arch}:3:pre"
    assert main(args + ["--target", f"sae:{d}:{D_SAE}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "SAE latent 32 is out of range; allowed 0..31" in err and "\n" not in err


def test_cli_mine_every_latent_of_an_sae(tiny_model_dir, tmp_path, capsys):
    import pandas as pd
    import pydoc_data.topics

    from fluentdream.cli import main

    pd.DataFrame({"text": [t[:300] for t in list(pydoc_data.topics.topics.values())[:5]]}).to_parquet(
        tmp_path / "docs.parquet")
    d = write_saelens(tmp_path / "s", "jumprelu", weights("jumprelu"))
    args = ["mine", "--model", str(tiny_model_dir), "--dataset", str(tmp_path / "docs.parquet"),
            "--tokens", "800", "--context", "32", "--window", "6", "--top-k", "2", "--no-progress"]
    assert main(args + ["--sae", str(d), "--out", str(tmp_path / "out")]) == 0
    ex = pd.read_parquet(tmp_path / "out" / "examples.parquet")
    assert set(ex["target"]) <= {f"sae:s:{j}" for j in range(D_SAE)} and len(set(ex["target"])) > 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sites"] == [dict(site="resid", layer=1, features=D_SAE, labels=None, sae="s")]
    capsys.readouterr()
    assert main(args) == 2
    assert "nothing to mine: give --layers" in capsys.readouterr().err
    assert main(args + ["--sae", str(tmp_path / "missing")]) == 2
    assert "SAE directory" in capsys.readouterr().err and not (tmp_path / "missing").exists()
