"""One frontier plot per dream target of experiments 02 and 03: activation vs cross-entropy, each
merged-frontier point labelled with its prompt (the main job's `frontier_<target>.png`).

    python paper_figures/frontier_plots.py --tables results/embedded/tables

Input: `frontier_points` (analysis/frontiers.py): every run's own frontier; runs of one target
(02's two seeds) share a plot, coloured by seed, and the frontier merged over them is the line.
Points carry numbers (1 = lowest CE); the numbered prompts are listed in a column on the right,
so labels never overlap whatever the points do.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fluentdream.core.frontier import frontier_indices  # noqa: E402
from fluentdream.runs import slug  # noqa: E402
from paper_figures import style  # noqa: E402

NAME = "frontier"
MAX_LABELS = 14


def label_rows(merged: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_LABELS points, spread evenly along the frontier (both ends kept)."""
    if len(merged) <= MAX_LABELS:
        return merged
    keep = np.unique(np.round(np.linspace(0, len(merged) - 1, MAX_LABELS)).astype(int))
    return merged.iloc[keep]


def make(tables: dict[str, pd.DataFrame], target: str):
    df = style.require(tables, "frontier_points", "03_six_neurons")
    df = df[df["target"] == target]
    if df.empty:
        raise ValueError(f"no frontier points for {target!r}; known: "
                         f"{sorted(tables['frontier_points']['target'].unique())}")
    idx, _ = frontier_indices(df["activation"].to_numpy(float), df["xentropy"].to_numpy(float))
    merged = df.iloc[idx]
    fig, axes = style.figure(1, 1, width=6.0, height=4.0)
    ax = axes[0, 0]
    for i, (seed, rows) in enumerate(df.groupby("seed")):
        ax.scatter(rows["xentropy"], rows["activation"], s=18, color=style.COLOURS[i % 7],
                   label=f"seed {seed} frontier", zorder=3)
    ax.plot(merged["xentropy"], merged["activation"], color="0.3", lw=1, zorder=2,
            label="merged frontier" if df["seed"].nunique() > 1 else "frontier")
    ax.set_xlabel("cross-entropy of the prompt (nats)")
    ax.set_ylabel("logit difference" if target.startswith("logit:") else "activation")
    ax.set_title(f"{target}: {df['experiment'].iloc[0]}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    _labels(fig, ax, label_rows(merged))
    return fig


def _labels(fig, ax, rows: pd.DataFrame) -> None:
    """Number each labelled point (1 = lowest CE) and list the numbered prompts in a column
    right of the axes: no leader lines to cross, no label on top of another."""
    lines = []
    for i, r in enumerate(rows.itertuples(), start=1):
        ax.annotate(str(i), xy=(r.xentropy, r.activation), xytext=(4, 4 if i % 2 else -10),
                    textcoords="offset points", fontsize=7, color="0.2")
        lines.append(f"{i:>2}  {r.activation:7.2f} @ {r.xentropy:5.2f}  {style.shorten(r.text, 56)}")
    header = f"{'#':>2}  {'target':>7}   {'CE':>5}  prompt"
    ax.text(1.02, 1.0, "\n".join([header] + lines), transform=ax.transAxes, va="top",
            ha="left", family="monospace", fontsize=7, linespacing=1.5)


def main(argv=None) -> list[Path]:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    tables = style.read_tables(args.tables)
    points = style.require(tables, "frontier_points", "03_six_neurons")
    return [style.save(make(tables, t), args.out / f"{NAME}_{slug(t)}.png")
            for t in points["target"].unique()]


if __name__ == "__main__":
    main()
