"""The numbers behind a target page's panels, each a plain function of runs, examples or the
model, returning what the page embeds as JSON.

    attributions(lm, target, points, context, k)   # token shading of the frontier table (Figs 1, 4)
    logit_effects(lm, target)                       # tokens the feature's output weight promotes
    matched(dreams, examples)                       # each example beside the best dream at CE <= its
    distribution({"dreams": values, ...})           # shared-bin histograms of activations
"""
from __future__ import annotations

import numpy as np
import torch

from ..core import attribution
from ..core.context import Context
from ..targets.kinds import Neuron, SAELatent, Target

TOP_TOKENS = 12      # tokens listed each way in the logit effects
BINS = 40


def token_texts(tokenizer, ids) -> list[str]:
    """Each token id decoded alone (a byte-level piece of a character shows as U+FFFD)."""
    return [tokenizer.decode([int(t)], clean_up_tokenization_spaces=False) for t in ids if t >= 0]


def attributions(lm, target: Target, points: list[dict], context: Context,
                 k: int) -> list[dict]:
    """Causal token attribution (fluentdream.core.attribution) of each frontier point: per
    token, the drop when swapped for the worst of its k gradient candidates (the colour) and
    for the best (the bar)."""
    out = []
    for p in points:
        a = attribution.attribute(lm, target, [t for t in p["ids"] if t >= 0], k=k,
                                  context=context)
        out.append(dict(tokens=a.tokens, value=a.value, worst=_finite(a.max_drop),
                        best=_finite(a.min_drop)))
    return out


def _finite(x: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in x]


def output_direction(lm, target: Target) -> tuple[torch.Tensor | None, str]:
    """(d_model,) the direction a neuron or SAE latent writes into the residual stream, and
    what it is; None and why not for the other kinds (and for an SAE read before the MLP's
    activation function, whose decoder does not write the residual stream linearly)."""
    if isinstance(target, Neuron):
        return _mlp_column(lm, target.layer, target.neuron), \
            f"column {target.neuron} of layer {target.layer}'s MLP output projection"
    if isinstance(target, SAELatent):
        row = target.sae.W_dec[target.latent].float()
        kind, layer = target.sae.site
        if kind in ("resid", "mlp_out"):
            return row, f"row {target.latent} of the SAE's decoder"
        if kind == "mlp":
            w = _mlp_weight(lm, layer)
            return w @ row, f"row {target.latent} of the SAE's decoder through layer {layer}'s MLP output"
        return None, "the SAE reads the MLP before its activation function"
    return None, "logit effects are for neurons and SAE latents"


def _mlp_weight(lm, layer: int) -> torch.Tensor:
    """(d_model, d_mlp) float32: the MLP output projection as a matrix acting on hidden units."""
    proj = lm.mlp_out_proj(layer)
    w = proj.weight.detach().float().cpu()
    return w.T if type(proj).__name__ == "Conv1D" else w     # GPT-2's Conv1D stores (in, out)


def _mlp_column(lm, layer: int, unit: int) -> torch.Tensor:
    return _mlp_weight(lm, layer)[:, unit]


@torch.no_grad()
def logit_effects(lm, target: Target, n: int = TOP_TOKENS) -> dict:
    """The direct effect of the feature's output direction on the logits: unembedding @ (final
    norm gain * direction), the tokens it promotes most and least (the final norm's division by
    the residual's scale is left out, so only the ranking and signs are meaningful)."""
    direction, what = output_direction(lm, target)
    if direction is None:
        return dict(note=what)
    gain = getattr(lm.final_norm, "weight", None)
    if gain is not None:
        direction = direction * gain.detach().float().cpu()
    W = lm.unembed.weight.detach().float().cpu()                        # (V, d_model)
    V = min(W.shape[0], len(lm.tokenizer))
    effect = (W[:V] @ direction.cpu()).numpy()                          # (V,)
    order = np.argsort(effect)
    pick = lambda idx: [[lm.tokenizer.decode([int(i)]), float(effect[i])] for i in idx]
    return dict(source=what, top=pick(order[::-1][:n]), bottom=pick(order[:n]))


def matched(dreams: list[dict], examples: list[dict]) -> list[int | None]:
    """For each dataset example, the index of the dream with the highest value among those
    with CE at most the example's (None: no dream is that fluent). The paper's Fig 3 question,
    one example at a time: at this fluency, does a dream beat the corpus?"""
    if not dreams:
        return [None] * len(examples)
    ce = np.array([d["xentropy"] for d in dreams])
    order = np.argsort(ce, kind="stable")
    leader, best = [], None                  # leader[i]: the best dream at CE <= ce[order[i]]
    for i in order:
        if best is None or dreams[i]["value"] > dreams[best]["value"]:
            best = int(i)
        leader.append(best)
    reach = np.searchsorted(ce[order], [e["xentropy"] for e in examples], side="right") - 1
    return [leader[i] if i >= 0 else None for i in reach]


def distribution(series: dict[str, np.ndarray], bins: int = BINS) -> dict:
    """Histograms of each series over shared bins (finite values only): edges (bins + 1,) and
    counts per series."""
    finite = {k: np.asarray(v, dtype=np.float64)[np.isfinite(v)] for k, v in series.items()}
    pooled = np.concatenate([v for v in finite.values()] + [np.zeros(0)])
    if not len(pooled):
        return dict(edges=[], counts={k: [] for k in series})
    lo, hi = float(pooled.min()), float(pooled.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return dict(edges=edges.tolist(),
                counts={k: np.histogram(v, edges)[0].tolist() for k, v in finite.items()})
