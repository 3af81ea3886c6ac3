"""Shared fixtures: a small BPE tokenizer and tiny random models of every supported architecture.

Everything is built offline from configs in a few seconds; models are cached per session.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # analysis/ and paper_figures/ are imported as packages

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too
# One thread: tiny models are overhead-bound, and two threads on a shared 2-core machine were
# 10-30x slower (LOG.md). It also keeps float results independent of the thread count.
torch.set_num_threads(1)

VOCAB = 1024
ARCHS = ("gpt_neox", "phi", "gpt2", "llama", "mistral", "qwen2")


def _tokenizer():
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(pydoc_data.topics.topics.values()), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer()


def build_model(arch: str, vocab: int = VOCAB, hidden: int = 64, layers: int = 2, heads: int = 4,
                seed: int = 0, kv_heads: int | None = None):
    """A tiny random causal LM of the given architecture (eval mode, fp32); kv_heads < heads
    makes the rotary architectures' attention grouped-query."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=4 * hidden,
                  max_position_embeddings=128)
    configs = {
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common),
        "phi": lambda: tf.PhiConfig(**common, num_key_value_heads=heads),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers,
                                      n_head=heads, n_positions=128),
        "llama": lambda: tf.LlamaConfig(**common, num_key_value_heads=kv_heads or heads),
        "mistral": lambda: tf.MistralConfig(**common, num_key_value_heads=heads),
        "qwen2": lambda: tf.Qwen2Config(**common, num_key_value_heads=heads),
    }
    torch.manual_seed(seed)
    cfg = configs[arch]()
    cfg._attn_implementation = "sdpa"
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def make_lm(tokenizer):
    """make_lm(arch="gpt_neox", **sizes) -> fd.LoadedModel, cached per (arch, sizes)."""
    import fluentdream as fd

    cache = {}

    def make(arch: str = "gpt_neox", **sizes):
        key = (arch, tuple(sorted(sizes.items())))
        if key not in cache:
            cache[key] = fd.wrap_model(build_model(arch, **sizes), tokenizer, f"tiny-{arch}")
        return cache[key]
    return make


@pytest.fixture(scope="session")
def tiny_lm(make_lm):
    return make_lm("gpt_neox")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny GPT-NeoX directory, loadable with fd.load_model(path)."""
    path = tmp_path_factory.mktemp("tiny_neox")
    build_model("gpt_neox").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_experiment(name: str):
    """Import experiments/<name>.py (file names start with digits, so not importable by name)."""
    path = REPO / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
