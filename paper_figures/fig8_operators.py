"""Figure 8: mutation operators and exploring restarts at equal wall time (experiment 09; the
paper's §4 proposals, Fig 2a's question of spread across seeds).

    python -m paper_figures.fig8_operators --tables results/embedded/tables --out paper_figures/out

One column per neuron. Top: each run's frontier hypervolume at equal wall time (reference point
in the y label), one point per seed over a box per condition (quartiles, whiskers to 1.5 IQR).
Middle: the best activation in distribution (CE below 01's limit), the same way (a run with no
candidate there has no point); its x labels give each condition's mean seconds and iterations
per run, so equal wall time can be checked. Bottom: the hypervolume over each run's first k
iterations, k the fewest any run of that neuron made (equal iterations: what a busy shared
machine cannot move). Reads operators_runs (analysis/operators.py).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from paper_figures import style

NAME = "fig8_operators"
ORDER = ("swap", "operators", "explore", "operators+explore")


def panel(ax, runs: pd.DataFrame, col: str, order: list[str]) -> None:
    """Box per condition and one point per seed, in the shared style."""
    with plt.rc_context(style.RC):       # seaborn draws into the shared style's axes
        values = [runs.loc[runs["condition"] == c, col].dropna() for c in order]
        ax.boxplot(values, positions=range(len(order)), widths=0.55, showfliers=False,
                   patch_artist=True, boxprops=dict(facecolor="#eeeeee", linewidth=0.8),
                   medianprops=dict(color="#444444"))
        sns.stripplot(data=runs, x="condition", y=col, order=order, ax=ax, hue="condition",
                      hue_order=order, palette=style.COLOURS[:len(order)], size=4, jitter=0.15,
                      legend=False)
    ax.set_xlabel("")


def make(tables: dict[str, pd.DataFrame]):
    runs = style.require(tables, "operators_runs", "09_operators_and_restarts")
    neurons = list(dict.fromkeys(runs["neuron"]))
    order = [c for c in ORDER if c in set(runs["condition"])]
    fig, axes = style.figure(3, len(neurons), width=4.6 * len(neurons), height=12.0,
                             gridspec_kw=dict(hspace=0.5))
    ref = runs.iloc[0]
    for j, neuron in enumerate(neurons):
        g = runs[runs["neuron"] == neuron]
        cost = g.groupby("condition")[["seconds", "iterations"]].mean().reindex(order)
        names = [c.replace("+", "+\n") for c in order]     # one word a line: four fit
        labels = [f"{c}\n{s:.1f} s\n{it:.0f} it" if s == s else f"{c}\nnot run"
                  for c, s, it in zip(names, cost["seconds"], cost["iterations"])]
        hv = f"hypervolume (ref: CE {ref['ref_xentropy']:.2f}, act. {ref['ref_activation']:g})"
        ylabels = (hv, f"best activation with CE < {ref['ref_xentropy']:.2f}",
                   f"{hv}\nat equal iterations ({g['equal_iters'].iloc[0]})")
        for i, col in enumerate(("hypervolume", "best_in_dist", "hypervolume_iters")):
            ax = axes[i][j]
            panel(ax, g, col, order)
            ax.set_xticks(range(len(order)), labels if i == 1 else names)
            ax.set_ylabel(ylabels[i] if j == 0 else f"at {g['equal_iters'].iloc[0]} iterations"
                          if i == 2 else "")
        axes[0][j].set_title(f"{neuron}: {g['seed'].nunique()} seeds per condition")
    return fig


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.save(make(style.read_tables(args.tables)), args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
