"""Fig 2: (a) per-seed maximal activation, and maximal activation under the CE-5 analog, over many
seeds on one neuron; (b) one run's frontier after a growing number of iterations (paper §3.2).

    python paper_figures/fig2_seed_variance.py --tables results/embedded/tables

Input: `seed_variance`, `seed_summary`, `frontier_growth` (analysis/seeds.py).
Output: out/fig2_seed_variance.png.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402

NAME = "fig2_seed_variance"


def seed_panel(ax, seeds: pd.DataFrame) -> None:
    """Runs ordered by their max activation; the max under the CE limit beside it."""
    seeds = seeds.sort_values("max_activation").reset_index(drop=True)
    x = np.arange(len(seeds))
    ax.scatter(x, seeds["max_activation"], s=16, color=style.COLOURS[0], label="max activation")
    if "max_under_ce5" in seeds:
        limit = seeds["ce5_limit"].iloc[0]
        ax.scatter(x, seeds["max_under_ce5"], s=16, marker="^", color=style.COLOURS[1],
                   label=f"max with CE < {limit:.2f} (analog of CE < 5)")
        ax.axhline(seeds["max_under_ce5"].median(), color=style.COLOURS[1], lw=0.8, ls=":")
    ax.axhline(seeds["max_activation"].median(), color=style.COLOURS[0], lw=0.8, ls=":",
               label="medians")
    ax.set_xlabel("run (sorted by max activation)")
    ax.set_ylabel("activation")
    ax.set_title(f"(a) {len(seeds)} seeds on {seeds['target'].iloc[0]}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)


def growth_panel(ax, growth: pd.DataFrame) -> None:
    for i, (k, rows) in enumerate(growth.groupby("checkpoint")):
        rows = rows.sort_values("xentropy")
        ax.plot(rows["xentropy"], rows["activation"], marker="o", ms=3,
                color=style.COLOURS[i % len(style.COLOURS)], label=f"after {k} iterations")
    ax.set_xlabel("cross-entropy (nats)")
    ax.set_ylabel("activation")
    ax.set_title("(b) one run's frontier over iterations")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)


def make(tables: dict[str, pd.DataFrame]):
    seeds = style.require(tables, "seed_variance", "04_seed_variance")
    fig, axes = style.figure(1, 2, width=10.0, height=4.6)
    seed_panel(axes[0, 0], seeds)
    if "frontier_growth" in tables:
        growth_panel(axes[0, 1], tables["frontier_growth"])
    return fig


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.save(make(style.read_tables(args.tables)), args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
