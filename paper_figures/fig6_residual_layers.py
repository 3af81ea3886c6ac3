"""Figure 6: mean residual-direction alignment per layer for dreams, dataset examples and random
prompts (paper §3.5: lowest mid-network).

    python -m paper_figures.fig6_residual_layers --tables results/embedded/tables --out paper_figures/out

Error bars: SD over the layer's directions. Reads residual_summary (analysis/residual.py).
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import pandas as pd

from paper_figures import style

SERIES = (("dream_z", "dream (no CE limit)", "C0", "-"), ("dream_limited_z", "dream, in-dist. CE", "C0", "--"),
          ("dataset_z", "dataset (re-scored alone)", "C1", "-"), ("random_z", "best random prompt", "C2", "-"))


def make(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    with plt.rc_context(style.RC):
        s = tables["residual_summary"]
        s = s[s["layer"].astype(str) != "all"].assign(layer=lambda x: x["layer"].astype(int)).sort_values("layer")
        fig, ax = plt.subplots(figsize=(6, 4))
        for col, label, colour, ls in SERIES:
            if col in s:
                ax.errorbar(s["layer"], s[col], yerr=s[f"{col}_sd"], label=label, color=colour, ls=ls,
                            marker="o", ms=4, capsize=3)
        ax.set_xticks(s["layer"])
        ax.set_xlabel("layer (residual stream entering it)")
        ax.set_ylabel("mean alignment (z vs random prompts)")
        ax.set_title(f"alignment per layer ({int(s['directions'].iloc[0])} directions each)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.save(make(style.read_tables(args.tables)), args.out / "fig6_residual_layers.png")

if __name__ == "__main__":
    main()
