"""Figure 4: the polysemantic neuron: dreams vs dataset examples, and causal token attribution (§3.4).

    python -m paper_figures.fig4_polysemantic --tables results/embedded/tables --out paper_figures/out

Top: dataset examples and dream frontiers in (CE, activation), and the best per CE bin. Bottom: one
row per attributed frontier prompt; each token's colour is the activation drop when it is swapped
for the worst of its top-k gradient candidates (the position matters), the bar above it the drop
for the best candidate (this exact token matters), as in the paper's Figs 1 and 4. The same
attribution is written as HTML (fig4_polysemantic.html). Reads the dataset_* tables.
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fluentdream.core.attribution import Attribution, to_html
from paper_figures import style
from paper_figures.fig3_dream_vs_dataset import panels


def draw_attribution(ax, att: pd.DataFrame) -> None:
    """Tokens as coloured boxes (worst-swap drop) under bars (best-swap drop), one row per prompt."""
    scale = max(float(np.nanmax(np.abs(att["max_drop"]))), 1e-9)
    cmap = plt.cm.RdBu_r   # red: swapping hurts, blue: swapping helps (as in the HTML)
    prompts = sorted(att["prompt"].unique())
    for row, p in enumerate(prompts):
        g = att[att["prompt"] == p].sort_values("position")
        y, x = len(prompts) - 1 - row, 0.0
        first = g.iloc[0]
        ax.text(-0.3, y + 0.15, f"{first['value']:.2f}\nCE {first['xentropy']:.1f}", ha="right",
                va="center", fontsize=7, color="0.3")
        for r in g.itertuples():
            tok = repr(str(r.token))[1:-1] if isinstance(r.token, str) else "·"
            w = max(0.5, 0.11 * len(tok) + 0.15)
            ax.add_patch(plt.Rectangle((x, y), w - 0.05, 0.32,
                                       color=cmap(0.5 + 0.45 * np.clip(r.max_drop / scale, -1, 1)),
                                       lw=0))
            ax.text(x + (w - 0.05) / 2, y + 0.16, tok, ha="center", va="center", fontsize=7,
                    family="monospace")
            h = 0.45 * np.clip(r.min_drop / scale, 0, 1) if np.isfinite(r.min_drop) else 0
            if h > 0:
                ax.add_patch(plt.Rectangle((x + 0.1 * w, y + 0.36), 0.8 * w - 0.05, h, color="0.25",
                                           lw=0))
            x += w
        ax.set_xlim(-1.6, max(ax.get_xlim()[1], x + 0.2))
    ax.set_ylim(-0.2, len(prompts))
    ax.axis("off")
    ax.set_title(f"causal token attribution of {len(prompts)} frontier prompts "
                 f"({att['target'].iloc[0]}; colour: worst-swap drop, bar: best-swap drop)", fontsize=9)


def make(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    with plt.rc_context(style.RC):
        att = tables["dataset_attribution"]
        n = att["prompt"].nunique()
        fig = plt.figure(figsize=(11, 4.4 + 0.75 * n))
        grid = fig.add_gridspec(2, 2, height_ratios=[4.2, 0.75 * n + 0.6])
        panels([fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])], tables, "polysemantic")
        draw_attribution(fig.add_subplot(grid[1, :]), att)
        fig.tight_layout()
        return fig


def make_html(tables: dict[str, pd.DataFrame]) -> str:
    """The attribution as a self-contained page (fluentdream.core.attribution.to_html), from the table:
    each position's swaps are represented by its worst and best substitute."""
    att = tables["dataset_attribution"]
    rows = []
    for _, g in att.groupby("prompt", sort=True):
        g = g.sort_values("position")
        v = float(g["value"].iloc[0])
        swaps = np.stack([v - g["max_drop"].to_numpy(float), v - g["min_drop"].to_numpy(float)], 1)
        rows.append(Attribution(np.arange(len(g)), [str(t) for t in g["token"]], v,
                                np.zeros((len(g), 2), int), swaps, str(g["target"].iloc[0])))
    return to_html(rows, title=f"{att['target'].iloc[0]}: polysemantic neuron (Fig 4)")


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    tables = style.read_tables(args.tables)
    style.save(make(tables), args.out / "fig4_polysemantic.png")
    style.write_text(make_html(tables), args.out / "fig4_polysemantic.html")

if __name__ == "__main__":
    main()
