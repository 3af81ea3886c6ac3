"""Every target equals a plain forward hook written here, on every architecture (DESIGN §5, §11)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fluentdream as fd
from conftest import ARCHS, VOCAB

# The MLP output projection of block `layer`, by its real attribute path in each HF model.
MLP_OUT = {
    "gpt_neox": lambda m, L: m.gpt_neox.layers[L].mlp.dense_4h_to_h,
    "phi": lambda m, L: m.model.layers[L].mlp.fc2,
    "gpt2": lambda m, L: m.transformer.h[L].mlp.c_proj,
    "llama": lambda m, L: m.model.layers[L].mlp.down_proj,
    "mistral": lambda m, L: m.model.layers[L].mlp.down_proj,
    "qwen2": lambda m, L: m.model.layers[L].mlp.down_proj,
}
# The MLP's first projection, whose output the activation function reads (Llama family: the gate).
MLP_IN = {
    "gpt_neox": lambda m, L: m.gpt_neox.layers[L].mlp.dense_h_to_4h,
    "phi": lambda m, L: m.model.layers[L].mlp.fc1,
    "gpt2": lambda m, L: m.transformer.h[L].mlp.c_fc,
    "llama": lambda m, L: m.model.layers[L].mlp.gate_proj,
    "mistral": lambda m, L: m.model.layers[L].mlp.gate_proj,
    "qwen2": lambda m, L: m.model.layers[L].mlp.gate_proj,
}
FINAL_NORM = {
    "gpt_neox": lambda m: m.gpt_neox.final_layer_norm,
    "phi": lambda m: m.model.final_layernorm,
    "gpt2": lambda m: m.transformer.ln_f,
    "llama": lambda m: m.model.norm, "mistral": lambda m: m.model.norm, "qwen2": lambda m: m.model.norm,
}


def random_ids(B=3, n=7, seed=0):
    return torch.randint(1, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


def score(lm, tgt, ids):
    """Target values through the library's scoring path (retokenization off: raw random ids):
    Scorer.values, whose pass ends at the target's site, after checking that it gives what
    score's full pass gives."""
    scorer = fd.Scorer(lm, tgt, retokenize=False)
    f, _ = scorer.score(ids)
    v = scorer.values(ids)
    torch.testing.assert_close(v, f, rtol=1e-6, atol=1e-6)
    return v


def hooked_input(lm, module, ids):
    """The input of `module` during a forward pass of ids, by a hook registered here."""
    store = []
    handle = module.register_forward_pre_hook(lambda mod, args: store.append(args[0].detach()))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=ids)
    finally:
        handle.remove()
    return store[0], out


def standardize(x):
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_neuron_equals_a_hook_on_the_mlp_output_projection(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids()
    hidden, _ = hooked_input(lm, MLP_OUT[arch](lm.model, 1), ids)      # (B, n, d_mlp)
    expected = {"last": hidden[:, -1, 5], "max": hidden[:, :, 5].max(1).values,
                2: hidden[:, 2, 5], -3: hidden[:, -3, 5]}
    for position, want in expected.items():
        got = score(lm, fd.Neuron(1, 5, position), ids)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_pre_activation_neuron_equals_a_hook_on_the_mlp_input_projection(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids()
    for layer in (0, 1):
        store = []
        handle = MLP_IN[arch](lm.model, layer).register_forward_hook(
            lambda mod, args, out: store.append(out.detach()))
        try:
            with torch.no_grad():
                lm.model(input_ids=ids)
        finally:
            handle.remove()
        pre = store[0]                                                   # (B, n, d_mlp)
        for position, want in {"last": pre[:, -1, 5], "max": pre[:, :, 5].max(1).values}.items():
            tgt = fd.Neuron(layer, 5, position, pre=True)
            torch.testing.assert_close(score(lm, tgt, ids), want, rtol=1e-5, atol=1e-5)
            assert tgt.post == fd.Neuron(layer, 5, position)


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_direction_equals_standardized_hidden_state(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids()
    v = fd.ResidualDirection.random_vector(lm.d_model, 3)
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    for layer in range(lm.n_layers):       # hidden_states[L] enters block L
        want = standardize(out.hidden_states[layer][:, -1]) @ v
        torch.testing.assert_close(score(lm, fd.ResidualDirection(layer, v), ids), want,
                                   rtol=1e-5, atol=1e-5)
    # L = n_layers: the residual stream entering the final norm.
    final, _ = hooked_input(lm, FINAL_NORM[arch](lm.model), ids)
    got = score(lm, fd.ResidualDirection(lm.n_layers, v, position="max"), ids)
    torch.testing.assert_close(got, (standardize(final) @ v).max(1).values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_entry_equals_eager_output_attentions(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids()
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = lm.model(input_ids=ids, output_attentions=True).attentions  # L x (B, H, n, n)
    finally:
        lm.model.set_attn_implementation("sdpa")
    torch.testing.assert_close(score(lm, fd.AttentionEntry(1, 2, 0), ids), attn[1][:, 2, -1, 0])
    torch.testing.assert_close(score(lm, fd.AttentionEntry(0, 3, 1, position=4), ids),
                               attn[0][:, 3, 4, 1])
    assert lm.model.config._attn_implementation == "sdpa"     # capture() restored it


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_difference_equals_the_models_logits(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids(B=4)
    goal = lm.tokenizer.encode(" the", add_special_tokens=False)[0]
    tgt = fd.parse_target("logit: the", lm)
    assert tgt.token_id == goal
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[:, -1]                    # (B, V)
    others = torch.cat([logits[:, :goal], logits[:, goal + 1:]], dim=1)
    want = logits[:, goal] - others.max(1).values
    texts = lm.tokenizer.batch_decode(ids.tolist())
    banned = torch.tensor(["the" in t.lower() for t in texts])
    got = score(lm, tgt, ids)
    assert torch.isneginf(got[banned]).all()
    torch.testing.assert_close(got[~banned], want[~banned], rtol=1e-5, atol=1e-5)


def write_sae(path, d_in, d_sae=16, hook="blocks.1.hook_resid_pre", apply_b_dec=True,
              threshold=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = dict(W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=torch.randn(d_sae, generator=g),
             W_dec=torch.randn(d_sae, d_in, generator=g), b_dec=torch.randn(d_in, generator=g))
    if threshold is not None:
        w["threshold"] = torch.full((d_sae,), threshold)
    path.mkdir(parents=True, exist_ok=True)
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(dict(hook_name=hook, d_in=d_in, d_sae=d_sae,
                                                   apply_b_dec_to_input=apply_b_dec)))
    return w


@pytest.mark.parametrize("arch", ARCHS)
def test_sae_latent_equals_manual_encoder(make_lm, arch, tmp_path):
    lm = make_lm(arch)
    ids = random_ids()
    w = write_sae(tmp_path / "sae", lm.d_model)
    with torch.no_grad():
        x = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[1]   # (B, n, d)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]                             # (B, n, d_sae)
    acts = torch.relu(pre)
    tgt = fd.parse_target(f"sae:{tmp_path / 'sae'}:3", lm)
    assert tgt.sae.site == ("resid", 1)
    torch.testing.assert_close(score(lm, tgt, ids), acts[:, -1, 3], rtol=1e-4, atol=1e-4)
    # The largest latent at the last position must be positive for a meaningful check.
    j = int(acts[0, -1].argmax())
    torch.testing.assert_close(score(lm, fd.SAELatent.load(tmp_path / "sae", j), ids)[0],
                               acts[0, -1, j], rtol=1e-4, atol=1e-4)
    assert acts[0, -1, j] > 0


def test_sae_variants_mlp_site_no_b_dec_and_jumprelu(make_lm, tmp_path):
    lm = make_lm("gpt_neox")
    ids = random_ids()
    w = write_sae(tmp_path / "mlp", lm.d_mlp, hook="blocks.0.mlp.hook_post", apply_b_dec=False,
                  threshold=0.5)
    hidden, _ = hooked_input(lm, MLP_OUT["gpt_neox"](lm.model, 0), ids)
    pre = hidden @ w["W_enc"] + w["b_enc"]
    want = torch.where(pre > 0.5, pre, torch.zeros_like(pre))[:, :, 2].max(1).values
    tgt = fd.parse_target(f"sae:{tmp_path / 'mlp'}:2@max", lm)
    assert tgt.sae.site == ("mlp", 0)
    torch.testing.assert_close(score(lm, tgt, ids), want, rtol=1e-4, atol=1e-4)
    write_sae(tmp_path / "post", lm.d_model, hook="blocks.0.hook_resid_post")
    assert fd.SAELatent.load(tmp_path / "post", 0).sae.site == ("resid", 1)


def test_sae_errors(make_lm, tmp_path):
    lm = make_lm("gpt_neox")
    with pytest.raises(ValueError, match="SAE directory .*none' does not exist; give a directory"):
        fd.parse_target(f"sae:{tmp_path / 'none'}:0", lm)
    write_sae(tmp_path / "hook", lm.d_model, hook="blocks.1.attn.hook_z")
    with pytest.raises(ValueError, match="reads hook 'blocks.1.attn.hook_z', which is not supported; allowed"):
        fd.parse_target(f"sae:{tmp_path / 'hook'}:0", lm)
    write_sae(tmp_path / "ok", lm.d_model, d_sae=16)
    with pytest.raises(ValueError, match="SAE latent 16 is out of range; allowed 0..15"):
        fd.parse_target(f"sae:{tmp_path / 'ok'}:16", lm)
    write_sae(tmp_path / "wide", lm.d_model + 1)
    with pytest.raises(ValueError, match="SAE input width 65 does not match the width 64 of the site"):
        fd.parse_target(f"sae:{tmp_path / 'wide'}:0", lm)
    write_sae(tmp_path / "deep", lm.d_model, hook="blocks.7.hook_resid_pre")
    with pytest.raises(ValueError, match="SAE layer 7 is out of range"):
        fd.parse_target(f"sae:{tmp_path / 'deep'}:0", lm)


@pytest.mark.parametrize("arch", ARCHS)
def test_custom_target_sees_the_same_activations(make_lm, arch):
    lm = make_lm(arch)
    ids = random_ids()
    tgt = fd.CustomTarget("sq", lambda acts, logits: acts["mlp", 1][:, -1].pow(2).sum(-1)
                          + logits[:, -1, 7], sites=(("mlp", 1),))
    hidden, out = hooked_input(lm, MLP_OUT[arch](lm.model, 1), ids)
    want = hidden[:, -1].pow(2).sum(-1) + out.logits[:, -1, 7]
    torch.testing.assert_close(score(lm, tgt, ids), want, rtol=1e-5, atol=1e-4)
    assert tgt.name == "sq"


def test_parse_target_forms(make_lm, tmp_path):
    lm = make_lm("gpt_neox")
    assert fd.parse_target("L1.N5", lm) == fd.Neuron(1, 5)
    assert fd.parse_target(" L1.N5@max ", lm) == fd.Neuron(1, 5, "max")
    assert fd.parse_target("L0.N255@3", lm) == fd.Neuron(0, 255, 3)
    assert fd.parse_target("L0.N2@-1", lm) == fd.Neuron(0, 2, -1)
    assert fd.parse_target("L1.N5@last", lm).name == "L1.N5"
    pre = fd.parse_target("L1.N5:pre@max", lm)
    assert (pre, pre.name, pre.post) == (fd.Neuron(1, 5, "max", pre=True), "L1.N5:pre@max",
                                         fd.Neuron(1, 5, "max"))
    assert fd.parse_target("L1.N5", lm).post is None and fd.parse_target("logit: the", lm).post is None
    logit = fd.parse_target("logit: the", lm)
    assert (logit.text, logit.name) == (" the", "logit: the")
    assert fd.parse_target("logit:the", lm).text == "the"
    r = fd.parse_target("resid:L2:7", lm)
    assert (r.layer, r.label) == (2, "v7")
    torch.testing.assert_close(r.vector, fd.ResidualDirection.random_vector(64, 7))
    torch.testing.assert_close(r.vector.norm(), torch.tensor(1.0))
    torch.testing.assert_close(fd.parse_target("resid:L1:v7", lm).vector, r.vector)
    v = np.arange(64, dtype=np.float32)
    np.save(tmp_path / "dir.npy", v)
    from_file = fd.parse_target(f"resid:L1:{tmp_path / 'dir.npy'}@max", lm)
    assert (from_file.label, from_file.position) == ("dir", "max")
    np.testing.assert_array_equal(from_file.vector.numpy(), v)
    assert fd.parse_target("attn:L1.H3.K0", lm) == fd.AttentionEntry(1, 3, 0)
    assert fd.parse_target("attn:L0.H0.K2@5", lm) == fd.AttentionEntry(0, 0, 2, 5)


def test_parse_target_errors(make_lm, tmp_path):
    lm = make_lm("gpt_neox")       # 2 layers, d_mlp 256, 4 heads, d_model 64
    np.save(tmp_path / "short.npy", np.ones(63, dtype=np.float32))
    bad = {
        "L2.N0": "layer 2 is out of range; allowed 0..1",
        "L0.N256": "neuron of layer 0 256 is out of range; allowed 0..255",
        "L1N5": "cannot parse target 'L1N5'; allowed forms",
        "L1.N5@first": "cannot parse target",
        "L1.N5@max:pre": "cannot parse target",
        "L1.N5:post": "cannot parse target",
        "neuron 5": "cannot parse target",
        "logit: function return": "must be exactly one token, but encodes to",
        "logit: ": "is blank",
        "resid:L3:1": "layer 3 is out of range; allowed 0..2",
        "resid:L1:nothing_here.npy": "neither an integer seed nor an .npy file",
        f"resid:L1:{tmp_path / 'short.npy'}": r"shape \(63,\); the model needs \(64,\)",
        "attn:L1.H4.K0": "head 4 is out of range; allowed 0..3",
        "attn:L2.H0.K0": "layer 2 is out of range",
        "": "cannot parse target",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message):
            fd.parse_target(spec, lm)


def test_positions_and_keys_are_checked_against_the_prompt_length(make_lm):
    lm = make_lm("gpt_neox")
    fd.parse_target("L1.N5@5", lm).check_seq_len(6)
    fd.parse_target("L1.N5@-6", lm).check_seq_len(6)
    for spec in ("L1.N5@6", "L1.N5@-7", "attn:L1.H0.K2@9", "logit: the@12"):
        with pytest.raises(ValueError, match=r"position must be .* \(-6..5\), got"):
            fd.parse_target(spec, lm).check_seq_len(6)
    with pytest.raises(ValueError, match="key position .*6 tokens.* 6 is out of range; allowed 0..5"):
        fd.parse_target("attn:L1.H0.K6", lm).check_seq_len(6)


def test_logit_rejects_goal_text_case_insensitively():
    tgt = fd.Logit(5, " Dog")
    assert tgt.rejects(["a DOG here", "hotdogs", "cat", ""]).tolist() == [True, True, False, False]


def test_residual_vector_length_is_validated(make_lm):
    lm = make_lm("gpt_neox")
    with pytest.raises(ValueError, match="needs \\(64,\\)"):
        fd.ResidualDirection(1, torch.ones(32)).validate(lm)
