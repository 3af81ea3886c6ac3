"""Fig 5a: mean cross-entropy of n-token corpus slices vs n, ±1 SD band (paper §3).

    python paper_figures/fig5a_fluency_calibration.py --tables results/embedded/tables

Input: `fluency_calibration` and `thresholds` (analysis/fluency.py). The paper's values (Pythia-12B
on the Pile, read off its Fig 5a) are drawn as a reference line. Output: out/fig5a_fluency_calibration.png.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402

NAME = "fig5a_fluency_calibration"


def make(tables: dict[str, pd.DataFrame]):
    df = style.require(tables, "fluency_calibration", "01_fluency_calibration").sort_values("n")
    fig, axes = style.figure(1, 1, width=6.0, height=4.2)
    ax = axes[0, 0]
    ax.fill_between(df["n"], df["mean"] - df["sd"], df["mean"] + df["sd"], alpha=0.2,
                    color=style.COLOURS[0], lw=0, label="± 1 SD")
    ax.plot(df["n"], df["mean"], color=style.COLOURS[0], marker="o", ms=3, label="this model, mean")
    paper = df.dropna(subset=["paper_mean"])
    ax.plot(paper["n"], paper["paper_mean"], color=style.PAPER, ls="--", marker="s", ms=3,
            label="paper: Pythia-12B on the Pile")
    if "thresholds" in tables:
        lim = tables["thresholds"].iloc[0]
        ax.axhline(lim["in_distribution"], color=style.COLOURS[1], lw=0.8, ls=":",
                   label=f"in distribution: CE < {lim['in_distribution']:.2f} (12-token mean + 2 SD)")
    ax.set_xlabel("slice length n (tokens)")
    ax.set_ylabel("mean cross-entropy (nats)")
    ax.set_title("Cross-entropy of n-token corpus slices")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return fig


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.save(make(style.read_tables(args.tables)), args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
