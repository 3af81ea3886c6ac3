"""Where targets read the model: forward hooks that capture activations at named sites
(fluentdream.targets.Site: "mlp", "mlp_pre", "mlp_out", "resid", "attn"; DESIGN §5).

    with capture(lm, [("mlp", 1), ("resid", 2)]) as acts:
        lm.model(input_ids=ids)
    acts[("mlp", 1)]           # (B, n, d_mlp): input of layer 1's MLP output projection

    with capture(lm, sites) as acts, stop_after(lm, sites):    # layers past the sites skipped
        try:
            lm.model(input_ids=ids)
        except AllCaptured:
            pass
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from ...errors import UserError
from ...targets.kinds import Site


@contextmanager
def capture(lm, sites: tuple[Site, ...], eager_attention: bool = True):
    """Hooks that fill a dict {site: activation} on every forward pass of `lm.model`.
    Site kinds (fluentdream.targets): "mlp" the input of the MLP output projection, "mlp_pre" the
    input of the MLP activation function, "mlp_out" the output projection's output, "resid" the
    input of block L (of the final norm for L = n_layers), "attn" the attention probabilities.
    Attention sites switch the model to eager attention (SDPA hides the probabilities) unless
    `eager_attention` is False (the packed attention returns them itself)."""
    acts: dict[Site, torch.Tensor] = {}
    handles = []

    def save_input(site):
        def hook(module, args, kwargs):
            acts[site] = args[0] if args else kwargs["hidden_states"]
        return hook

    def save_output(site, item=None):
        def hook(module, args, output):
            acts[site] = output if item is None else output[item]
        return hook

    needs_eager = eager_attention and any(kind == "attn" for kind, _ in sites)
    previous = lm.model.config._attn_implementation
    if needs_eager:  # SDPA does not expose attention probabilities
        lm.model.set_attn_implementation("eager")
    try:
        for site in set(sites):
            kind, layer = site
            if kind == "mlp":
                handles.append(lm.mlp_out_proj(layer).register_forward_pre_hook(
                    save_input(site), with_kwargs=True))
            elif kind == "resid":
                module = lm.final_norm if layer == lm.n_layers else lm.blocks[layer]
                handles.append(module.register_forward_pre_hook(save_input(site), with_kwargs=True))
            elif kind == "mlp_pre":
                handles.append(mlp_activation(lm, layer).register_forward_pre_hook(
                    save_input(site), with_kwargs=True))
            elif kind == "mlp_out":
                handles.append(lm.mlp_out_proj(layer).register_forward_hook(save_output(site)))
            elif kind == "attn":
                handles.append(lm.attention(layer).register_forward_hook(save_output(site, 1)))
            else:
                raise UserError(f"unknown site kind {kind!r}; allowed: mlp, mlp_pre, mlp_out, "
                                "resid, attn")
        yield acts
    finally:
        for h in handles:
            h.remove()
        if needs_eager:
            lm.model.set_attn_implementation(previous)


# The activation function module of an MLP: GPT-NeoX and GPT-2 "act", Llama family "act_fn",
# Phi "activation_fn". Each layer holds its own instance (transformers' ACT2FN builds one per call),
# so a hook on it sees that layer alone.
_MLP_ACTIVATIONS = ("act", "act_fn", "activation_fn")


def mlp_activation(lm, layer: int) -> torch.nn.Module:
    """The module applying layer `layer`'s MLP nonlinearity; its input is (B, n, d_mlp)."""
    mlp = lm.blocks[layer].get_submodule(lm.arch.mlp_out.rpartition(".")[0])
    for name in _MLP_ACTIVATIONS:
        if isinstance(getattr(mlp, name, None), torch.nn.Module):
            return getattr(mlp, name)
    raise UserError(f"pre-activation targets need the MLP's activation function as a module "
                    f"named one of {', '.join(_MLP_ACTIVATIONS)}; {type(mlp).__name__} has none")


class AllCaptured(Exception):
    """Raised by stop_after's hook: every site is captured, the later layers are not run."""


def deepest_module(lm, sites: Sequence[Site]) -> torch.nn.Module:
    """The module whose input comes after every site: a layer's MLP hidden units (pre-activations
    too) are in by its MLP output projection; its MLP output and attention probabilities, by
    block L + 1 (the final norm after the last block); the residual stream entering block L, by
    block L."""
    def order(site):
        kind, layer = site
        return 2 * layer + {"resid": 0, "mlp": 1, "mlp_pre": 1}.get(kind, 2)
    last = max(map(order, sites))
    if last % 2:
        return lm.mlp_out_proj(last // 2)
    return lm.final_norm if last // 2 == lm.n_layers else lm.blocks[last // 2]


@contextmanager
def stop_after(lm, sites: Sequence[Site]):
    """While active, a forward pass of `lm.model` raises AllCaptured once it has computed every
    site: what only targets read is computed, not the layers after them (mining, attribution).
    Enter it after capture(), so that capture's hook on the same module runs first."""
    def stop(module, args, kwargs):
        raise AllCaptured
    handle = deepest_module(lm, sites).register_forward_pre_hook(stop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
