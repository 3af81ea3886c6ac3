"""Figure 7: dreams of SAE latents (experiment 10; the paper's §4 proposal, §3.3-3.4's questions).

    python -m paper_figures.fig7_sae_latents --tables results/embedded/tables --out paper_figures/out

(a) Per sampled live latent, its best dataset window and its best dream, both in distribution
(CE <= 05's limit), joined by a line: blue where the dream wins, orange where the dataset does.
(b) Per latent, the best post-activation value in distribution reached by optimizing the latent
itself and by optimizing its pre-activation, at equal iterations, joined by a line.
(c) Trigger families among the top in-distribution dreams (experiment 10's FAMILY_RULE), latents
vs neurons: a violin over the runs (quartiles inside) with one point per run.
Each panel's paired or unpaired test from numbers.json in its title. Reads sae_latents,
sae_families and numbers (analysis/sae_latents.py).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures import style

NAME = "fig7_sae_latents"


def _test(numbers: pd.DataFrame | None, key: str) -> str:
    """'Wilcoxon p = 0.02' from tables/numbers.csv, or '' when the test is missing."""
    if numbers is None or key not in set(numbers["key"]):
        return ""
    row = numbers.set_index("key").loc[key]
    return f"{row['test'].split()[0]} p = {row['p']:.2g}" if pd.notna(row["p"]) else ""


def paired(ax, left: pd.Series, right: pd.Series, labels: tuple[str, str], colours) -> None:
    """Left and right value of each unit joined by a line; a unit missing a side keeps a dot."""
    for a, b, colour in zip(left, right, colours):
        xs = [x for x, v in ((0, a), (1, b)) if np.isfinite(v)]
        ax.plot(xs, [v for v in (a, b) if np.isfinite(v)], color=colour, marker="o", ms=4,
                lw=0.9, alpha=0.85)
    ax.set_xticks([0, 1], labels)
    ax.set_xlim(-0.4, 1.4)


def make(tables: dict[str, pd.DataFrame]):
    lat = style.require(tables, "sae_latents", "10_sae_latents")
    fam, numbers = tables.get("sae_families"), tables.get("numbers")
    fig, axes = style.figure(1, 3, width=13.0, height=4.2)
    ax, bx, cx = axes[0]
    limit = f"CE ≤ {lat['threshold'].iloc[0]:.2f}"
    wins = lat["dream_best"] > lat["dataset_best"]
    paired(ax, lat["dataset_best"], lat["dream_best"], ("best dataset window", "best dream"),
           [style.COLOURS[0] if w else style.COLOURS[1] for w in wins])
    ax.set_ylabel(f"latent activation ({limit})")
    ax.set_title(f"(a) dream wins on {int(wins.sum())} of {len(lat)} latents\n"
                 + _test(numbers, "sae.dream_minus_dataset"))
    paired(bx, lat["dream_best"], lat["pre_best_post"], ("optimize latent", "optimize :pre"),
           [style.COLOURS[2]] * len(lat))
    bx.set_ylabel(f"best post-activation value ({limit})")
    bx.set_title("(b) pre- vs post-activation objective\n" + _test(numbers, "sae.pre_minus_post"))
    if fam is not None and fam["families"].notna().any():
        with plt.rc_context(style.RC):       # seaborn draws into the shared style's axes
            order = [k for k in ("latent", "neuron") if k in set(fam["kind"])]
            sns.violinplot(data=fam, x="kind", y="families", order=order, ax=cx, color="#eeeeee",
                           width=0.6, cut=0, inner="quart", linewidth=0.8)
            sns.stripplot(data=fam, x="kind", y="families", order=order, ax=cx,
                          color=style.COLOURS[3], size=5, jitter=0.12)
        cx.set_xlabel("")
    cx.set_ylabel("trigger families (last tokens) of the top dreams")
    cx.set_title("(c) polysemanticity, latents vs neurons\n"
                 + _test(numbers, "sae.families.latent_minus_neuron"))
    return fig


def main(argv=None) -> None:
    args = style.parse_args(argv, __doc__.splitlines()[0])
    style.save(make(style.read_tables(args.tables)), args.out / f"{NAME}.png")


if __name__ == "__main__":
    main()
