"""Causal token attribution by resampling (paper Figs 1 and 4).

    att = fd.attribution.attribute(lm, target, "for example, the", k=32)
    att.max_drop     # (n,) drop to the worst of the k substitutes: colour (does the slot matter?)
    att.min_drop     # (n,) drop to the best substitute: bar height (does *this exact* token matter?)
    html = fd.attribution.to_html([att, ...], title="L1.N5")   # one self-contained page

For each position, the k tokens with the largest gradient of the target (lambda = 0) are the
candidate substitutes; each single swap is scored with a forward pass. A drop is the original
activation minus the swapped one. Swaps the target rejects (banned text) are left out (nan).
"""
from __future__ import annotations

import html as html_lib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..targets.kinds import Target
from .context import Context
from .scoring.scorer import Scorer
from .tokens import allowed_tokens


@dataclass
class Attribution:
    ids: np.ndarray          # (n,) prompt tokens
    tokens: list[str]        # n decoded tokens
    value: float             # target on the unmodified prompt
    swap_ids: np.ndarray     # (n, k) substitute tokens per position
    swap_values: np.ndarray  # (n, k) target after each single swap (nan = rejected)
    target: str

    @property
    def drops(self) -> np.ndarray:
        """(n, k) original minus swapped activation."""
        return self.value - self.swap_values

    @property
    def max_drop(self) -> np.ndarray:
        """(n,) largest drop: the worst substitute."""
        return np.nanmax(self.drops, axis=1)

    @property
    def min_drop(self) -> np.ndarray:
        """(n,) smallest drop: the best substitute (tall = the exact token matters)."""
        return np.nanmin(self.drops, axis=1)


def attribute(lm, target: Target, prompt: str | np.ndarray | list[int], k: int = 32,
              batch_size: int = 256, context: Context = Context()) -> Attribution:
    """Score every single-token swap among each position's top-k gradient candidates. The
    prompt may have any length (a frontier point of a run with insert and delete too). A run
    made inside a fixed prefix and suffix is attributed inside it too (`Context.of_run(lm,
    run_dir)`): the model reads prefix + prompt + suffix and only the prompt's tokens are swapped."""
    if isinstance(prompt, str):
        ids = torch.tensor(lm.tokenizer.encode(prompt, add_special_tokens=False))
    else:                     # a frontier row may end in -1 padding (fluentdream.core.ragged)
        ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long)
        ids = ids[ids >= 0] if ids.ndim == 1 else ids
    if ids.ndim != 1 or len(ids) < 2:
        raise UserError(f"attribution needs one prompt of at least 2 tokens, got shape {tuple(ids.shape)}")
    target.validate(lm)
    n = len(ids)
    scorer = Scorer(lm, target, batch_size=batch_size, retokenize=False, context=context)
    grad = scorer.gradients(ids[None], torch.zeros(1))[0]            # (n, V), lambda = 0
    grad[:, ~allowed_tokens(lm)] = -torch.inf
    grad[torch.arange(n), ids] = -torch.inf                           # a swap must change the token
    swap_ids = grad.topk(k, dim=-1).indices                           # (n, k)
    swaps = ids.repeat(n * k, 1)                                      # (n*k, n)
    swaps[torch.arange(n * k), torch.arange(n).repeat_interleave(k)] = swap_ids.reshape(-1)
    base = scorer.values(ids[None])              # no CE: only the target's drop is shown
    values = scorer.values(swaps)
    values = values.numpy().astype(np.float64)
    values[~np.isfinite(values)] = np.nan
    tokens = [lm.tokenizer.decode([int(t)], clean_up_tokenization_spaces=False) for t in ids]
    return Attribution(ids.numpy(), tokens, float(base[0]), swap_ids.numpy(),
                       values.reshape(n, k), target.name)


def _colour(x: float, scale: float) -> str:
    """White -> red by x / scale (negative drops, i.e. swaps that help, shade blue)."""
    a = 0.0 if scale <= 0 or not np.isfinite(x) else float(np.clip(x / scale, -1, 1))
    r, g, b = (255, int(255 * (1 - a)), int(255 * (1 - a))) if a >= 0 else \
        (int(255 * (1 + a)), int(255 * (1 + a)), 255)
    return f"rgb({r},{g},{b})"


def to_html(attributions: list[Attribution], title: str = "causal token attribution") -> str:
    """A self-contained HTML page: one row per prompt, a bar over each token (drop to the best
    substitute) and a background colour (drop to the worst substitute)."""
    scale = max([float(np.nanmax(np.abs(a.max_drop))) for a in attributions] + [1e-9])
    rows = []
    for a in attributions:
        cells = []
        for tok, hi, lo, sub in zip(a.tokens, a.max_drop, a.min_drop, a.swap_ids[:, 0]):
            height = 0 if not np.isfinite(lo) else int(40 * np.clip(lo / scale, 0, 1))
            tip = f"worst-swap drop {hi:.3f}; best-swap drop {lo:.3f}"
            cells.append(
                f'<span class="tok" title="{html_lib.escape(tip)}">'
                f'<span class="bar" style="height:{height}px"></span>'
                f'<span class="txt" style="background:{_colour(hi, scale)}">'
                f'{html_lib.escape(tok).replace(" ", "&nbsp;") or "&nbsp;"}</span></span>')
        rows.append(f'<div class="row"><div class="val">{a.value:.3f}</div>{"".join(cells)}</div>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>
<style>body{{font-family:monospace;margin:2em}} .row{{display:flex;align-items:flex-end;margin:1.2em 0}}
.val{{width:5em;color:#555}} .tok{{display:inline-flex;flex-direction:column;align-items:center}}
.bar{{width:70%;background:#444;margin-bottom:2px}} .txt{{padding:2px 1px;white-space:pre}}</style>
</head><body><h2>{html_lib.escape(title)}</h2>
<p>Colour: activation drop when the token is swapped for the worst of its top-k gradient
candidates (red = the position matters). Bar: drop for the best candidate (tall = the exact token
matters). Left: activation of the prompt.</p>{"".join(rows)}</body></html>"""
