"""Distributions behind the README's numbers (issue 17), drawn with seaborn in the shared style:
(a) per-seed maxima as points over a violin, per condition (Fig 2a's spread, §3.2); (b) residual
alignment per method, one point per direction joined across methods (the tests pair them), with
the mean and its 95% interval from numbers.json (Fig 5c-d, §3.5); (c) dream vs dataset, paired:
each run's best dream at the best example's CE beside that example, per studied neuron, and each
sampled neuron's best in-distribution dream beside its best dataset window (§3.3-3.4).

    python paper_figures/fig_distributions.py --tables results/embedded/tables

Input: `seed_variance`, `residual_directions`, `dataset_runs`, `dataset_sampled`, `numbers`
(analysis/build_tables.py); a panel whose table is missing is left out. Output: out/fig_distributions.png.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paper_figures import style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (after style, which picks the Agg backend)

NAME = "fig_distributions"
METHODS = (("random_z", "random", "residual.random.mean"),
           ("dataset_z", "dataset scan", "residual.dataset.mean"),
           ("dream_z", "dream", "residual.dream.mean"),
           ("dream_limited_z", "dream, CE limit", "residual.dream_limited.mean"))


def _ci(numbers: pd.DataFrame | None, key: str) -> tuple[float, float, float] | None:
    """(value, low, high) of a numbers.json key, from tables/numbers.csv; None when absent."""
    if numbers is None or key not in set(numbers["key"]):
        return None
    row = numbers.set_index("key").loc[key]
    return (float(row["value"]), float(row["ci_low"]), float(row["ci_high"])) \
        if pd.notna(row["ci_low"]) else None


def _p(numbers: pd.DataFrame | None, key: str) -> float | None:
    """The test's p-value of a numbers.json key, when it has one."""
    if numbers is None or key not in set(numbers["key"]):
        return None
    p = numbers.set_index("key").at[key, "p"]
    return float(p) if pd.notna(p) else None


def _interval(ax, x: float, ci: tuple[float, float, float] | None, colour: str) -> None:
    if ci is not None:
        ax.errorbar([x], [ci[0]], yerr=[[ci[0] - ci[1]], [ci[2] - ci[0]]], fmt="D", ms=5,
                    color=colour, capsize=4, lw=1.5, zorder=5)


def seed_panel(ax, seeds: pd.DataFrame, numbers: pd.DataFrame | None) -> None:
    """Violin (quartiles inside) and points per condition; the median's 95% interval as a
    diamond with whiskers."""
    cols = [("max_activation", "max activation", "seeds.max.median")]
    if "max_under_ce5" in seeds:
        cols.append(("max_under_ce5", f"max with CE < {seeds['ce5_limit'].iloc[0]:.2f}",
                     "seeds.max_ce5.median"))
    long = pd.concat([pd.DataFrame(dict(condition=label, activation=seeds[col]))
                      for col, label, _ in cols], ignore_index=True)
    sns.violinplot(data=long, x="condition", y="activation", ax=ax, color="#eeeeee", width=0.6,
                   cut=0, inner="quart", linewidth=0.8)
    sns.stripplot(data=long, x="condition", y="activation", ax=ax, color=style.COLOURS[0],
                  size=4, jitter=0.15, alpha=0.8)
    for i, (_, _, key) in enumerate(cols):
        _interval(ax, i + 0.35, _ci(numbers, key), style.COLOURS[1])
    ax.set_xlabel("")
    ax.set_title(f"(a) {len(seeds)} seeds on {seeds['target'].iloc[0]}: median, 95% CI")


def residual_panel(ax, directions: pd.DataFrame, numbers: pd.DataFrame | None) -> None:
    """One point per direction and method, a faint line joining each direction's points (the
    comparisons are paired by direction); the mean's 95% interval beside each method."""
    present = [m for m in METHODS if m[0] in directions and directions[m[0]].notna().any()]
    long = pd.concat([pd.DataFrame(dict(method=label, z=directions[col]))
                      for col, label, _ in present], ignore_index=True)
    for _, row in directions.iterrows():
        ax.plot(range(len(present)), [row[col] for col, _, _ in present], color="#cccccc",
                lw=0.6, zorder=1)
    sns.stripplot(data=long, x="method", y="z", ax=ax, color=style.COLOURS[2], size=4,
                  jitter=False, alpha=0.8, zorder=2)
    for i, (_, _, key) in enumerate(present):
        _interval(ax, i + 0.3, _ci(numbers, key), style.COLOURS[1])
    ax.set_xlabel("")
    ax.set_ylabel("alignment (z vs random prompts)")
    ax.set_title(f"(b) {len(directions)} residual directions: mean, 95% CI")


def paired_groups(per_run: pd.DataFrame | None, sampled: pd.DataFrame | None) -> list[tuple]:
    """(label, dataset values, dream values, numbers.json key of the test) per group of pairs:
    each studied neuron's runs against its best example at that example's CE, and the sampled
    neurons' in-distribution bests (one pair per neuron)."""
    groups = []
    for role, g in per_run.groupby("role", sort=False) if per_run is not None else ():
        groups.append((f"{g['neuron'].iloc[0]} ({role}),\nper run", g["best_dataset"],
                       g["dream_at_dataset_ce"], f"{role}.dream_minus_dataset"))
    if sampled is not None:
        groups.append((f"{len(sampled)} sampled neurons,\nin distribution", sampled["dataset_best"],
                       sampled["dream_best"], "sampled.dream_minus_dataset"))
    return groups


def paired_panel(ax, groups: list[tuple], numbers: pd.DataFrame | None) -> None:
    """Dataset (left) and dream (right) of each pair joined by a line; a pair without a dream
    keeps only its left point. The paired test's p-value above each group."""
    for i, (label, data, dream, key) in enumerate(groups):
        colour = style.COLOURS[i % len(style.COLOURS)]
        for a, b in zip(data, dream):
            ok = np.isfinite(b)
            ax.plot([2 * i, 2 * i + 1] if ok else [2 * i], [a, b] if ok else [a], color=colour,
                    marker="o", ms=4, lw=0.8, alpha=0.8)
        missing, p = int(np.sum(~np.isfinite(np.asarray(dream, float)))), _p(numbers, key)
        ax.annotate(label + (f"\nWilcoxon p = {p:.2g}" if p is not None else "")
                    + (f"\n{missing} without a dream" if missing else ""),
                    (2 * i + 0.5, 1.0), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks([x for i in range(len(groups)) for x in (2 * i, 2 * i + 1)],
                  [t for _ in groups for t in ("dataset", "dream")])
    ax.set_xlim(-0.5, 2 * len(groups) - 0.5)
    ax.set_ylabel("activation")
    ax.set_title("(c) dream vs dataset, paired", pad=52)


def make(tables: dict[str, pd.DataFrame]):
    seeds, directions = tables.get("seed_variance"), tables.get("residual_directions")
    groups, numbers = paired_groups(tables.get("dataset_runs"), tables.get("dataset_sampled")), \
        tables.get("numbers")
    panels = [p for p, ok in (("seeds", seeds is not None), ("residual", directions is not None),
                              ("paired", bool(groups))) if ok]
    if not panels:
        raise ValueError("none of seed_variance, residual_directions, dataset_runs, dataset_sampled "
                         "is in the tables; run experiments 04-07 and analysis/build_tables.py first")
    fig, axes = style.figure(1, len(panels), width=5.0 * len(panels), height=4.4)
    with plt.rc_context(style.RC):       # seaborn draws into the shared style's axes
        for ax, panel in zip(axes[0], panels):
            if panel == "seeds":
                seed_panel(ax, seeds, numbers)
            elif panel == "residual":
                residual_panel(ax, directions, numbers)
            else:
                paired_panel(ax, groups, numbers)
        fig.tight_layout()
    return fig


def main(argv=None) -> Path:
    args = style.parse_args(argv, __doc__.split("\n")[0])
    return style.save(make(style.read_tables(args.tables)), args.out / f"{NAME}.png")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
