"""Fig 1: causal token attribution of dreamed prompts for the six-neuron ladder (paper Fig 1, §3.2).

    python paper_figures/fig1_attribution.py --tables results/embedded/tables

For each position, the k top-gradient substitutes were each swapped in (experiment 03).
Colour = activation drop for the worst substitute (red: the position matters; blue: some swap
raises the activation); bar = drop for the best substitute (tall: this exact token matters).
Colours and bars are scaled per neuron. Input: `attribution_03` (analysis/frontiers.py).
Output: out/fig1_attribution.png and out/fig1_attribution.html (fd.attribution.to_html per neuron).
"""
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors
from matplotlib.patches import Rectangle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fluentdream.core.attribution import Attribution, to_html  # noqa: E402
from paper_figures import style  # noqa: E402

NAME = "fig1_attribution"
GAP, PITCH, BAR = 0.8, 2.8, 1.2      # gap in character widths; row pitch and bar in row units
FONT = 8.0                           # points; a DejaVu Sans Mono character is 0.602 em wide
CHAR_IN = FONT * 0.602 / 72          # inches per character = one x unit
UNIT_IN = 0.16                       # inches per y unit (a token cell is one unit high)


def shown(token: str) -> str:
    """A token as drawn: newline and tab as arrows, other control bytes as \\xNN."""
    token = token.replace("\n", "↵").replace("\t", "→")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in token) or "∅"


def prompts(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(neuron, rows of one prompt in position order), neurons in ladder order."""
    return [(rows["target"].iloc[0], rows.sort_values("position"))
            for _, rows in df.groupby("prompt", sort=True)]


def make(tables: dict[str, pd.DataFrame]):
    """One row per prompt. x is in monospace character widths; the axes fill the figure, so a
    character of FONT points is exactly one x unit wide and tokens fit their cells."""
    df = style.require(tables, "attribution_03", "03_six_neurons")
    items = prompts(df)
    widths = [sum(len(shown(t)) + GAP for t in rows["token"]) for _, rows in items]
    label_w, right = 22, max(widths) + 1
    top = 2.0
    rows_h = PITCH * (len(items) + 0.8 * df["target"].nunique()) + 1
    fig, axes = style.figure(1, 1, width=(label_w + right) * CHAR_IN,
                             height=(top + rows_h) * UNIT_IN)
    ax = axes[0, 0]
    ax.set_position([0, 0, 1, 1])
    cmap = colormaps["RdBu_r"]
    ax.text(-label_w, -0.5, "Causal token attribution of dreamed prompts", fontsize=11, va="center")
    y, last = -top, None
    for neuron, rows in items:
        scale = max(float(df.loc[df["target"] == neuron, "max_drop"].abs().max()), 1e-9)
        norm = colors.Normalize(-scale, scale)
        if neuron != last:
            y -= PITCH * 0.8
            ax.text(-label_w, y + 0.5, f"{neuron}   (full colour / full bar = drop of {scale:.2f})",
                    fontsize=FONT, weight="bold", va="center")
            last = neuron
        y -= PITCH
        ax.text(-label_w, y + 0.5,
                f"{rows['value'].iloc[0]:6.2f} @ CE {rows['xentropy'].iloc[0]:.2f}",
                family="monospace", fontsize=FONT, va="center", color="0.3")
        x = 0.0
        for r in rows.itertuples():
            w, level = len(shown(r.token)), norm(r.max_drop)
            ax.add_patch(Rectangle((x - 0.1, y), w + 0.2, 1.0, color=cmap(level), lw=0))
            ax.text(x, y + 0.5, shown(r.token), family="monospace", fontsize=FONT, va="center",
                    color="white" if abs(level - 0.5) > 0.3 else "black")
            h = BAR * float(np.clip(r.min_drop / scale, 0, 1)) if np.isfinite(r.min_drop) else 0
            ax.add_patch(Rectangle((x, y + 1.1), w, h, color="0.2", lw=0))
            x += w + GAP
    ax.set_xlim(-label_w, right)
    ax.set_ylim(-top - rows_h, 0)
    ax.axis("off")
    return fig


def make_html(tables: dict[str, pd.DataFrame]) -> str:
    """One page: fd.attribution.to_html per neuron (each with its own colour scale)."""
    df = style.require(tables, "attribution_03", "03_six_neurons")
    sections, head = [], None
    for neuron in df["target"].unique():
        atts = []
        for _, rows in prompts(df[df["target"] == neuron]):
            value = float(rows["value"].iloc[0])
            drops = np.stack([rows["max_drop"], rows["min_drop"]], axis=1).astype(float)   # (n, 2)
            atts.append(Attribution(np.zeros(len(rows), int), list(rows["token"]), value,
                                    np.zeros((len(rows), 2), int), value - drops, neuron))
        page = to_html(atts, title=neuron)
        head = head or page.split("<body>")[0]
        sections.append(re.search(r"<body>(.*)</body>", page, flags=re.S)[1])
    return f"{head}<body><h1>Fig 1 — causal token attribution</h1>{''.join(sections)}</body></html>"


def main(argv=None) -> list[Path]:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    tables = style.read_tables(args.tables)
    return [style.save(make(tables), args.out / f"{NAME}.png"),
            style.write_text(make_html(tables), args.out / f"{NAME}.html")]


if __name__ == "__main__":
    main()
