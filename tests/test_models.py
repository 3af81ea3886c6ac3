"""load_model / wrap_model: local directories, clear errors, and each architecture's sites."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import fluentdream as fd
from conftest import ARCHS, VOCAB
from fluentdream.models import ARCHITECTURES

# The real attribute path of each architecture's parts, written out independently of ARCHITECTURES.
EXPECTED = {
    "gpt_neox": lambda m: (m.gpt_neox.layers, m.gpt_neox.final_layer_norm, "dense_4h_to_h", "attention"),
    "phi": lambda m: (m.model.layers, m.model.final_layernorm, "fc2", "self_attn"),
    "gpt2": lambda m: (m.transformer.h, m.transformer.ln_f, "c_proj", "attn"),
    "llama": lambda m: (m.model.layers, m.model.norm, "down_proj", "self_attn"),
    "mistral": lambda m: (m.model.layers, m.model.norm, "down_proj", "self_attn"),
    "qwen2": lambda m: (m.model.layers, m.model.norm, "down_proj", "self_attn"),
}


def test_local_directory_loads(tiny_model_dir, tokenizer):
    lm = fd.load_model(str(tiny_model_dir), device="cpu")
    assert isinstance(lm, fd.LoadedModel)
    assert lm.config.model_type == "gpt_neox"
    assert (lm.n_layers, lm.d_model, lm.d_mlp, lm.vocab_size) == (2, 64, 256, VOCAB)
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert lm.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert "gpt_neox" in repr(lm)


def test_local_directory_loads_in_requested_dtype(tiny_model_dir):
    lm = fd.load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*local HF model directory"):
        fd.load_model(str(tmp_path / "no_such_model"))


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load model"):
        fd.load_model(str(tmp_path))


def test_unknown_dtype_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown dtype 'float64'; allowed: float32"):
        fd.load_model(str(tiny_model_dir), dtype="float64")


@pytest.mark.parametrize("config", [
    tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32),
    tf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 ffn_dim=32, word_embed_proj_dim=16),
], ids=["bert", "opt"])
def test_unsupported_architecture_names_the_supported_ones(tmp_path, config):
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        fd.load_model(str(tmp_path), device="cpu")
    msg = str(err.value)
    assert f"unsupported architecture {config.model_type!r}" in msg
    for arch in ARCHS:
        assert arch in msg
    assert "ARCHITECTURES" in msg           # how to add one


def test_wrap_model_rejects_unsupported_architecture(tokenizer):
    cfg = tf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       ffn_dim=32, word_embed_proj_dim=16)
    with pytest.raises(ValueError, match="unsupported architecture 'opt'"):
        fd.wrap_model(tf.OPTForCausalLM(cfg), tokenizer, "opt")


def test_every_supported_architecture_is_tested():
    assert set(ARCHITECTURES) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_loaded_model_properties(make_lm, arch):
    lm = make_lm(arch, layers=3)
    blocks, final_norm, mlp_out, attn = EXPECTED[arch](lm.model)
    assert lm.blocks is blocks
    assert lm.n_layers == 3
    assert lm.final_norm is final_norm
    for layer in range(3):
        assert lm.mlp_out_proj(layer) is getattr(blocks[layer].mlp, mlp_out)
        assert lm.attention(layer) is getattr(blocks[layer], attn)
    assert lm.d_model == 64
    assert lm.d_mlp == 256
    assert lm.n_heads == 4
    assert lm.vocab_size == VOCAB
    assert lm.dtype == torch.float32
    assert lm.device == torch.device("cpu")
    # d_mlp really is the width of the output projection's input.
    acts = []
    h = lm.mlp_out_proj(0).register_forward_pre_hook(lambda mod, args: acts.append(args[0]))
    try:
        lm.model(torch.tensor([[1, 2, 3]]))
    finally:
        h.remove()
    assert acts[0].shape == (1, 3, lm.d_mlp)


def test_hub_style_name_is_looked_up_not_treated_as_a_missing_path():
    # "org/name" is a hub id (offline here), not a local path that does not exist.
    with pytest.raises(ValueError, match="cannot load model 'no-such-org/no-such-model'.*hub name"):
        fd.load_model("no-such-org/no-such-model")
