"""Figure 3: dreams vs the top-64 max-activating dataset examples of the example-like neuron (§3.3).

    python -m paper_figures.fig3_dream_vs_dataset --tables results/embedded/tables --out paper_figures/out

Left: every dataset example re-scored alone as a 12-token window (dots) and each dream run's
Pareto frontier (steps), in (CE, activation). Right: the best activation per CE bin for dreams and
for dataset examples. Dashed: the in-distribution CE threshold. Reads dataset_examples,
dataset_frontiers, dataset_bins and dataset_summary (analysis/dataset.py).
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures import style

LABELLED = 6


def panels(axes, tables: dict[str, pd.DataFrame], role: str) -> None:
    """Draw the scatter/steps panel and the per-bin panel of one neuron role."""
    ex = tables["dataset_examples"].query("role == @role")
    front = tables["dataset_frontiers"].query("role == @role")
    bins = tables["dataset_bins"].query("role == @role")
    s = tables["dataset_summary"].set_index("role").loc[role]
    ax, bx = axes
    ax.scatter(ex["window_xentropy"], ex["window_activation"], s=14, color="0.55", alpha=0.7,
               label=f"top-{len(ex)} dataset examples", zorder=2)
    # Up to LABELLED runs get a colour and a legend entry each; with more (04's seeds), the best
    # run is drawn in colour and the others thin and grey, under one entry.
    runs = front.groupby("run", sort=True)
    many = runs.ngroups > LABELLED
    others = 0
    for i, (run, g) in enumerate(runs):
        g = g.sort_values("xentropy")
        if many and not g["best_run"].iloc[0]:
            ax.step(g["xentropy"], g["target"], where="post", lw=0.7, color="0.7", zorder=1,
                    label=f"dream frontiers, {runs.ngroups - 1} other seeds" if not others else None)
            others += 1
            continue
        ax.step(g["xentropy"], g["target"], where="post", lw=1.4, marker="o", ms=3,
                color=plt.cm.viridis(0.15 + 0.7 * i / max(1, runs.ngroups - 1)) if not many else "C0",
                label=f"dream frontier, seed {g['seed'].iloc[0]}" + (" (best run)" if many else ""),
                zorder=3)
    for a in axes:
        a.axvline(s["threshold"], color="0.3", ls="--", lw=0.8,
                  label=f"in-distribution CE < {s['threshold']:.2f}")
        a.set_xlabel("cross-entropy (nats)")
    ax.set_ylabel(f"{s['neuron']} activation")
    ax.set_title(f"{s['neuron']}: dreams vs dataset examples")
    ax.legend(fontsize=7, loc="lower right")
    for source, marker in (("dream", "o"), ("dataset", "s")):
        g = bins.query("source == @source").sort_values("ce_bin")
        bx.plot(g["ce_bin"] + 0.25, g["best"], marker=marker, lw=1.2, label=source)
    gap = s.get("dream_minus_dataset", np.nan)
    bx.set_title(f"best per CE bin (dream - dataset at matched CE: {gap:+.2f})")
    bx.set_ylabel("best activation in bin")
    bx.legend(fontsize=8)


def make(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    with plt.rc_context(style.RC):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        panels(axes, tables, "example")
        fig.tight_layout()
        return fig


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.save(make(style.read_tables(args.tables)), args.out / "fig3_dream_vs_dataset.png")

if __name__ == "__main__":
    main()
