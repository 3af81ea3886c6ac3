"""Table 2: dreams for next-token logits, frontier rows "logit difference @ perplexity" (§3.1).

    python paper_figures/table2_token_logits.py --tables results/embedded/tables

Input: the `table2_token_logits` table (analysis/frontiers.py): the Pareto frontier of both runs
of each word merged, in order of CE. Output: out/table2_token_logits.md.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402

NAME = "table2_token_logits"
# Paper Table 2 (Pythia-12B), logit difference @ perplexity.
PAPER = {" dog": "−1.58@72.05, 0.97@91.08, 1.13@93.97, 3.24@207.67, 3.59@341.05, 4.57@6717.69, "
                 "4.62@18840.23",
         " AI": "−6.66@45.53, −1.22@67.95, 2.85@128.44, 3.09@174.87, 3.77@1058.75, 3.98@1858.16, "
                "4.54@10989.41",
         " grand": "−2.25@46.79, −0.88@56.77, 3.48@115.13, 4.23@210.94, 4.50@411.39"}


def make_markdown(tables: dict[str, pd.DataFrame]) -> str:
    df = style.require(tables, NAME, "02_token_logits")
    lines = ["# Table 2 — dreaming next-token logits", "",
             "Frontier of two EPO runs per word, merged: logit difference (goal logit minus the "
             "largest other logit) @ perplexity, in order of perplexity. Prompts containing the "
             "word are rejected.", "", "| target | logit difference @ perplexity |", "|---|---|"]
    for target, rows in df.groupby("target", sort=False):
        cells = ", ".join(f"{a:.2f}@{p:.2f}" for a, p in zip(rows["activation"], rows["perplexity"]))
        lines.append(f"| {style.md_cell(target)} | {cells} |")
    lines += ["", "Paper (Pythia-12B):", "", "| target | logit difference @ perplexity |", "|---|---|"]
    lines += [f"| {style.md_cell('logit:' + w)} | {v} |" for w, v in PAPER.items()]
    lines += ["", "## Frontier prompts", "",
              "| target | logit difference | CE | perplexity | prompt |", "|---|---:|---:|---:|---|"]
    for r in df.itertuples():
        lines.append(f"| {style.md_cell(r.target)} | {r.activation:.2f} | {r.xentropy:.2f} | "
                     f"{r.perplexity:.2f} | {style.md_cell(r.text)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.write_text(make_markdown(style.read_tables(args.tables)), args.out / f"{NAME}.md")


if __name__ == "__main__":
    main()
