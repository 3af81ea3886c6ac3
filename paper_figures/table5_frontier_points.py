"""Table 5: every Pareto frontier point of the six-neuron runs (paper appendix, §3.2).

    python paper_figures/table5_frontier_points.py --tables results/embedded/tables

Input: `frontier_points` (analysis/frontiers.py), rows of experiment 03_six_neurons.
Output: out/table5_frontier_points.md.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402

NAME = "table5_frontier_points"


def make_markdown(tables: dict[str, pd.DataFrame]) -> str:
    df = style.require(tables, "frontier_points", "03_six_neurons")
    df = df[df["experiment"] == "03_six_neurons"]
    if df.empty:
        raise ValueError("no frontier points of 03_six_neurons; run experiments/03_six_neurons.py")
    lines = ["# Table 5 — frontier points of the six-neuron runs", "",
             "Every point of each run's Pareto frontier (activation vs cross-entropy), in order of "
             "cross-entropy.", ""]
    for target, rows in df.groupby("target", sort=False):
        lines += [f"## {target}", "", "| activation | CE | perplexity | prompt |",
                  "|---:|---:|---:|---|"]
        lines += [f"| {r.activation:.2f} | {r.xentropy:.2f} | {r.perplexity:.2f} | "
                  f"{style.md_cell(r.text)} |" for r in rows.sort_values("xentropy").itertuples()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.write_text(make_markdown(style.read_tables(args.tables)), args.out / f"{NAME}.md")


if __name__ == "__main__":
    main()
