"""Load a causal LM and locate its sites: MLP hidden units, residual stream, attention.

    lm = fd.load_model("embedded")                        # shipped with the package
    lm = fd.load_model("EleutherAI/pythia-12b-deduped", device="cuda", dtype="float16")
    lm = fd.load_model("/path/to/a/local/hf/dir")
    lm = fd.load_model("smollm2-135m")   # a real pretrained LM offline (GGUF; gguf_cache.py)
    lm.mlp_out_proj(3)   # the module whose *input* is layer 3's MLP hidden units (DESIGN §5)

Each architecture is a row of `ARCHITECTURES`: where the blocks, the MLP output projection, the
attention module and the final norm live. Adding one is adding a row.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .gguf import SMOLLM2, dense_checkpoint, find_gguf, gguf_source, smollm2_gguf

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).parents[1] / "embedded"


@dataclass(frozen=True)
class Arch:
    """Attribute paths (dotted, from the CausalLM) of one architecture's parts."""
    blocks: str         # ModuleList of transformer blocks
    mlp_out: str        # inside a block: the MLP output projection; its input = hidden units
    attn: str           # inside a block: the self-attention module
    final_norm: str     # the norm before the unembedding; its input = the last residual
    # inside block 0: modules whose input is a function of the token alone (of its embedding:
    # no position embedding added, rotary applied after them; for an MLP, a parallel block).
    token_local: tuple[str, ...] = ()


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
ARCHITECTURES: dict[str, Arch] = {
    "gpt_neox": Arch("gpt_neox.layers", "mlp.dense_4h_to_h", "attention", "gpt_neox.final_layer_norm",
                     ("attention.query_key_value", "mlp")),
    "phi": Arch("model.layers", "mlp.fc2", "self_attn", "model.final_layernorm", _QKV + ("mlp",)),
    "gpt2": Arch("transformer.h", "mlp.c_proj", "attn", "transformer.ln_f"),
    "llama": Arch("model.layers", "mlp.down_proj", "self_attn", "model.norm", _QKV),
    "mistral": Arch("model.layers", "mlp.down_proj", "self_attn", "model.norm", _QKV),
    "qwen2": Arch("model.layers", "mlp.down_proj", "self_attn", "model.norm", _QKV),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where its internals live."""
    model: nn.Module
    tokenizer: object
    name: str
    arch: Arch
    source: dict = field(default_factory=dict)
    """What identifies the weights, for a run's provenance.json (load_model fills it): a GGUF's
    name, size, sha256 and package, or the model path and its hub revision when known."""

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.arch.blocks)

    @property
    def d_model(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def d_mlp(self) -> int:
        proj = self.mlp_out_proj(0)
        # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in).
        return proj.weight.shape[0] if type(proj).__name__ == "Conv1D" else proj.in_features

    @property
    def n_heads(self) -> int:
        c = self.config
        return getattr(c, "num_attention_heads", None) or c.n_head

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix (can exceed len(tokenizer) through padding)."""
        return self.model.get_input_embeddings().weight.shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def mlp_out_proj(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.arch.mlp_out)

    def attention(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.arch.attn)

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.model, self.arch.final_norm)

    @property
    def token_local(self) -> tuple[str, ...]:
        """Module paths in block 0 computed on the token alone (Arch.token_local); GPT-NeoX's
        MLP only with its parallel residual (Pythia's), where it reads the embedding."""
        if getattr(self.config, "use_parallel_residual", True):
            return self.arch.token_local
        return tuple(p for p in self.arch.token_local if p != "mlp")

    @property
    def trunk(self) -> nn.Module:
        """The model without its unembedding: tokens -> final-norm hidden states (B, L, d)."""
        return self.model.base_model

    @property
    def unembed(self) -> nn.Linear:
        """The unembedding: hidden states (..., d) -> logits (..., V)."""
        return self.model.get_output_embeddings()

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, {self.config.model_type}, layers={self.n_layers}, "
                f"d_model={self.d_model}, d_mlp={self.d_mlp}, vocab={self.vocab_size}, "
                f"{self.dtype}, {self.device})")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def max_positions(lm) -> int | None:
    """The longest prompt the model takes (its position table or trained context), or None where
    its config names no limit."""
    c = lm.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(c, key, None), int):
            return getattr(c, key)
    return None


def check_architecture(model_type: str) -> Arch:
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "To add one, add a row to fluentdream.models.ARCHITECTURES naming its blocks, MLP "
            "output projection, attention module and final norm.")
    return ARCHITECTURES[model_type]


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (returns False where that is not glibc).

    By default glibc maps every allocation above 128 KB to fresh pages and unmaps it when freed,
    so each activation tensor of a forward pass page-faults all its memory in again; in the VMs
    we measured, that made the scoring of one EPO iteration on CPU 10-20% slower (LOG.md). A
    mapping threshold of 32 MB (glibc's largest) and no trimming keep such buffers in the heap.
    It only changes how much memory the process keeps; it is called for models on the CPU.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def wrap_model(model: nn.Module, tokenizer, name: str) -> LoadedModel:
    """Wrap an already-built HF causal LM (tests build tiny random ones from configs)."""
    arch = check_architecture(model.config.model_type)
    model.eval()
    model.requires_grad_(False)
    if next(model.parameters()).device.type == "cpu":
        keep_freed_memory()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, arch=arch)


def load_model(name_or_path: str, device: str | None = None, dtype: str | torch.dtype | None = None,
               ) -> LoadedModel:
    """Load "embedded", "smollm2-135m", a local HF directory, a .gguf file (or a directory holding
    one; converted once to a cached dense checkpoint, see gguf_cache), or a hub name (hub names
    need the network or the HF cache).

    dtype: "float32" | "float16" | "bfloat16" | torch.dtype | None (the checkpoint's own, fp32 on
    CPU when the checkpoint is half precision and no dtype is asked for).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    device = device or default_device()
    path = str(EMBEDDED_DIR) if name_or_path == "embedded" else name_or_path
    if name_or_path == "embedded" and not (EMBEDDED_DIR / "config.json").exists():
        raise UserError(f"the embedded model is missing from {EMBEDDED_DIR}; rebuild it with "
                        "`python experiments/00_build_embedded_model.py`")
    gguf_file = smollm2_gguf() if name_or_path == SMOLLM2 else find_gguf(path)
    if gguf_file is not None:
        path = str(dense_checkpoint(gguf_file))
    # Hub ids are "name" or "org/name"; anything else that is not there is a missing path.
    looks_local = (Path(path).exists() or path.startswith((os.sep, ".", "~"))
                   or path.count("/") > 1)
    if looks_local and not Path(path).is_dir():
        raise UserError(f"model path {path!r} does not exist; give a local HF model directory, "
                        f"a .gguf file, 'embedded', {SMOLLM2!r}, or a hub name such as "
                        "EleutherAI/pythia-1.4b")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]} "
                        f"(allowed: 'embedded', {SMOLLM2!r}, a local HF model directory, a .gguf "
                        "file, or a hub name available offline in the HF cache or online)") from None
    check_architecture(config.model_type)  # before loading any weights
    if dtype is None:
        ckpt = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
        half = str(ckpt).replace("torch.", "") in ("float16", "bfloat16")
        dtype = torch.float32 if (device == "cpu" and half) else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to(device)
    lm = wrap_model(model, tokenizer, name_or_path)
    lm.source = (gguf_source(gguf_file, name_or_path) if gguf_file is not None else
                 dict(path=name_or_path, revision=getattr(config, "_commit_hash", None)))
    log.info("loaded %r", lm)
    return lm
