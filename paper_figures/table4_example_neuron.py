"""Table 4: frontier prompts of the best dream run on the "example-like" neuron (paper §3.3).

    python -m paper_figures.table4_example_neuron --tables results/embedded/tables --out paper_figures/out

Reads the `dataset_frontiers` and `dataset_summary` tables (analysis/dataset.py).
"""
from __future__ import annotations


import pandas as pd

from paper_figures import style



def make_markdown(tables: dict[str, pd.DataFrame]) -> str:
    front = tables["dataset_frontiers"]
    front = front[(front["role"] == "example") & front["best_run"].astype(bool)]
    summary = tables["dataset_summary"].set_index("role").loc["example"]
    lines = [f"**Table 4.** Frontier of the best run ({front['run'].iloc[0]}) on "
             f"{summary['neuron']}, the example-like neuron; in-distribution CE < "
             f"{summary['threshold']:.2f}. Best dataset example: {summary['best_dataset']:.2f} "
             f"at CE {summary['best_dataset_ce']:.2f}.", "",
             "| activation | CE | perplexity | prompt |", "|---:|---:|---:|:---|"]
    for r in front.sort_values("xentropy").itertuples():
        text = repr(r.text)[1:-1].replace("|", "\\|")
        lines.append(f"| {r.target:.2f} | {r.xentropy:.2f} | {r.perplexity:.1f} | `{text}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.write_text(make_markdown(style.read_tables(args.tables)), args.out / "table4_example_neuron.md")

if __name__ == "__main__":
    main()
