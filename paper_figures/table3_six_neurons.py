"""Table 3: best activation with perplexity < 100 (its analog) for the six-neuron ladder (§3.2).

    python paper_figures/table3_six_neurons.py --tables results/embedded/tables

Input: `table3_six_neurons` (analysis/frontiers.py). The i-th neuron of our ladder stands beside
the i-th of the paper's (L2.N0 ... L27.N5). Output: out/table3_six_neurons.md.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402

NAME = "table3_six_neurons"
# Paper Table 3 (Pythia-12B): neuron, best activation with perplexity < 100, its perplexity.
PAPER = [("L2.N0", 2.59, 81.64), ("L7.N1", 0.22, 41.37), ("L12.N2", 4.95, 84.56),
         ("L17.N3", 3.03, 93.60), ("L22.N4", 2.60, 85.56), ("L27.N5", 3.02, 61.87)]


def make_markdown(tables: dict[str, pd.DataFrame]) -> str:
    df = style.require(tables, NAME, "03_six_neurons")
    limit = df["perplexity_limit"].iloc[0]
    lines = ["# Table 3 — six neurons: best activation with perplexity under the limit", "",
             f"Limit: perplexity < {limit:.1f} (CE < {df['ce_limit'].iloc[0]:.3f}), the analog "
             "of the paper's perplexity 100: same z-score under the CE of 12-token corpus slices "
             "(experiments/01_fluency_calibration.py). Best over all candidates of one run.", "",
             "| neuron | activation (perplexity) | max activation, any CE | paper neuron | "
             "paper: activation (perplexity) |", "|---|---:|---:|---|---:|"]
    for i, r in enumerate(df.itertuples()):
        ours = "none under the limit" if pd.isna(r.activation) else \
            f"{r.activation:.2f} ({r.perplexity:.2f})"
        paper = f"{PAPER[i][0]} | {PAPER[i][1]:.2f} ({PAPER[i][2]:.2f})" if i < len(PAPER) else " | "
        lines.append(f"| {r.target} | {ours} | {r.best_activation:.2f} | {paper} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.write_text(make_markdown(style.read_tables(args.tables)), args.out / f"{NAME}.md")


if __name__ == "__main__":
    main()
