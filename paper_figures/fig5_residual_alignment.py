"""Figures 5b-e: residual-direction alignment of dreams, dataset examples and random prompts (§3.5).

    python -m paper_figures.fig5_residual_alignment --tables results/embedded/tables --out paper_figures/out

(b) slack curve: allowing s SDs of slack below each run's max alignment, the mean alignment and
mean CE of the most fluent dream within the slack, against the corpus's mean 12-token CE;
(c) alignment per direction without a CE limit: dream vs dataset vs random;
(d) the same with dreams limited to CE < the in-distribution threshold;
(e) CE of the chosen prompts. Reads residual_directions and residual_slack (analysis/residual.py).
"""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures import style

COLOURS = {"dream": "C0", "dataset": "C1", "random": "C2"}


def slack_panel(ax, slack: pd.DataFrame) -> None:
    ax.plot(slack["slack"], slack["z"], color="C0", label="mean alignment of chosen dream")
    ax.set_xlabel("allowed slack below each run's max (SDs)")
    ax.set_ylabel("alignment (z)", color="C0")
    cx = ax.twinx()
    cx.spines["right"].set_visible(True)
    cx.plot(slack["slack"], slack["xentropy"], color="C3", label="mean CE of chosen dream")
    cx.axhline(slack["corpus_ce"].iloc[0], color="C3", ls=":", lw=1, label="corpus 12-token CE")
    cx.axhline(slack["threshold"].iloc[0], color="0.4", ls="--", lw=0.8, label="in-dist. threshold")
    cx.set_ylabel("cross-entropy (nats)", color="C3")
    lines = ax.get_legend_handles_labels()
    more = cx.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.set_title("(b) slack curve")


def strip_panel(ax, cols: dict[str, pd.Series], title: str) -> None:
    """One column of dots per source, with its mean as a bar."""
    for i, (label, v) in enumerate(cols.items()):
        v = v.dropna().to_numpy(float)
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(v))
        ax.scatter(np.full(len(v), i) + jitter, v, s=12, alpha=0.6,
                   color=COLOURS[label.split()[0]])
        if len(v):
            ax.hlines(v.mean(), i - 0.3, i + 0.3, color="k", lw=2)
            ax.text(i + 0.32, v.mean(), f"{v.mean():.2f}", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), list(cols), fontsize=8)
    ax.set_xlim(-0.5, len(cols) - 0.2)
    ax.set_title(title)


def make(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    with plt.rc_context(style.RC):
        d = tables["residual_directions"]
        limit = float(d["threshold"].iloc[0])
        fig, axes = plt.subplots(1, 4, figsize=(15, 4))
        if "residual_slack" in tables:
            slack_panel(axes[0], tables["residual_slack"])
        strip_panel(axes[1], {"dream": d["dream_z"], "dataset": d["dataset_z"], "random": d["random_z"]},
                    "(c) alignment, no CE limit")
        axes[1].set_ylabel("alignment (z vs random prompts)")
        strip_panel(axes[2], {f"dream CE<{limit:.1f}": d["dream_limited_z"], "dataset": d["dataset_z"],
                              "random": d["random_z"]}, "(d) dreams limited to in-distribution CE")
        lims = [ax.get_ylim() for ax in axes[1:3]]
        for ax in axes[1:3]:                       # (c) and (d) on one scale
            ax.set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
        strip_panel(axes[3], {"dream": d["dream_ce"], f"dream CE<{limit:.1f}": d["dream_limited_ce"],
                              "dataset": d["dataset_ce"]}, "(e) CE of the chosen prompts")
        axes[3].axhline(limit, color="0.4", ls="--", lw=0.8)
        axes[3].set_ylabel("cross-entropy (nats)")
        fig.tight_layout()
        return fig


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.save(make(style.read_tables(args.tables)), args.out / "fig5_residual_alignment.png")

if __name__ == "__main__":
    main()
