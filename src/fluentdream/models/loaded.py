"""A loaded causal LM and where its parts live: the MLP hidden units, the attention, the
residual stream (DESIGN §3, §5).

    lm.mlp_out_proj(3)   # the module whose *input* is layer 3's MLP hidden units
    lm.attention(3), lm.blocks, lm.final_norm, lm.trunk, lm.unembed

Each architecture is a row of `ARCHITECTURES`: where the blocks, the MLP output projection, the
attention module and the final norm live. Adding one is adding a row. GGUF reading
(fluentdream.models.gguf) takes the same table for the architectures it accepts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError


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
