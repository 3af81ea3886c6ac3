"""Operators and exploring restarts at equal wall time (experiment 09; the paper's §4 proposals).

    from analysis import operators
    tabs = operators.tables(Path("results/embedded"))
    tabs["operators_runs"]      # per run: condition, neuron, seed, iterations, seconds,
                                # hypervolume, best in-distribution activation, frontier lengths
    tabs["operators_summary"]   # per condition and neuron: mean hypervolume (95% CI), SD, IQR,
                                # best in distribution, seconds and iterations per run
    tabs["operators_tests"]     # per condition other than swap and neuron, against swap
    operators.claims(tables, index)   # numbers.json entries (analysis/numbers.py)

Hypervolume: fd.frontier_quality of all of each run's candidates (its Pareto staircase, which
never shrinks as a run goes on) with the reference point study.json states, (CE = 01's
in-distribution limit, activation 0): the area the candidates dominate inside the in-distribution, firing region. Best in distribution: the highest activation
of any candidate with CE below that limit (04's rule). Both as run (equal wall time: a busy shared
machine moves a budget's iteration count, see the iterations column) and over each run's first
`equal_iters` iterations, the fewest any run of that neuron made (equal iterations: free of load;
the *_iters measures).
Tests, per neuron, condition against swap:
  level   Wilcoxon signed-rank paired by seed: seed s starts every condition from the same
          random prompts (the run's generator draws them first), a matched design.
  spread  Mann-Whitney U on each run's absolute deviation from its condition's median (a rank
          form of the Brown-Forsythe test; unpaired: a deviation is about a condition's centre,
          not about the seed). Its difference is of median absolute deviations; the table also
          gives the SD ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.core.frontier import frontier_quality
from fluentdream.core.history import History
from fluentdream.runs import CHECKPOINT, read_json

from . import stats
from .entries import entry
from .frontiers import complete_runs

EXP = "09_operators_and_restarts"
REFERENCE = "swap"
SPREAD = "ops_spread"      # numbers.json claim of the spread entries (their own README row)
MEASURES = {"hypervolume": "frontier hypervolume",
            "best_in_dist": "best activation in distribution",
            "hypervolume_iters": "frontier hypervolume at equal iterations",
            "best_in_dist_iters": "best activation in distribution at equal iterations"}


def _measures(f: np.ndarray, ce: np.ndarray, ref: dict) -> tuple[float, float]:
    """(hypervolume of all candidates, best activation of a candidate with CE below the limit)."""
    inside = np.isfinite(f) & (ce < ref["xentropy"])
    return (frontier_quality((f, ce), ref["xentropy"], ref["activation"]),
            float(f[inside].max()) if inside.any() else np.nan)


def run_row(run_dir: Path, condition: str, ref: dict, equal_iters: int) -> dict:
    """One run's measures (module docstring), also over its first `equal_iters` iterations, and
    its provenance. Run names repeat across conditions (<condition>/<run>), so the provenance
    comes from here rather than units.py's index."""
    config = read_json(run_dir / "config.json")
    prov = read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").exists() else {}
    hist = History.load(run_dir / CHECKPOINT)
    _, f, ce = hist.candidates()
    front = read_json(run_dir / "frontier.json")
    hv, best = _measures(f, ce, ref)
    hv_k, best_k = _measures(*hist.truncated(equal_iters).candidates()[1:], ref)
    return dict(condition=condition, neuron=config["target"], seed=config["seed"], run=run_dir.name,
                iterations=len(hist), seconds=float(np.sum(hist.seconds)), hypervolume=hv,
                best_in_dist=best, equal_iters=equal_iters, hypervolume_iters=hv_k,
                best_in_dist_iters=best_k,
                max_activation=float(np.nanmax(np.where(np.isfinite(f), f, np.nan))),
                frontier_points=len(front),
                frontier_length=float(np.mean([len(p["ids"]) for p in front])) if front else np.nan,
                ref_xentropy=ref["xentropy"], ref_activation=ref["activation"],
                path=run_dir.relative_to(run_dir.parents[2]).as_posix(),
                wandb_run_id=prov.get("wandb_run_id"), git_sha=prov.get("git_sha"),
                git_dirty=prov.get("git_dirty"))


def per_run(exp_dir: Path, study: dict) -> pd.DataFrame:
    """Every finished run of the study's neurons; equal iterations = the fewest any run of the
    same neuron made (in any condition)."""
    found = [(condition, d, read_json(d / "config.json")["target"])
             for condition in study["conditions"] for d in complete_runs(exp_dir / condition)]
    found = [(c, d, neuron) for c, d, neuron in found if neuron in study["neurons"]]
    fewest: dict[str, int] = {}
    for _, d, neuron in found:
        made = read_json(d / "summary.json")["iterations"]
        fewest[neuron] = min(fewest.get(neuron, made), made)
    return pd.DataFrame([run_row(d, c, study["hypervolume_ref"], fewest[neuron])
                         for c, d, neuron in found])


def _iqr(x: pd.Series) -> float:
    return float(x.quantile(0.75) - x.quantile(0.25))


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, neuron): means with 95% bootstrap intervals, SD and IQR over seeds."""
    rows = []
    for (condition, neuron), g in runs.groupby(["condition", "neuron"], sort=False):
        row = dict(condition=condition, neuron=neuron, seeds=len(g),
                   iterations=g["iterations"].mean(), seconds=g["seconds"].mean(),
                   wall_seconds=g["seconds"].sum(), frontier_length=g["frontier_length"].mean())
        for col in MEASURES:
            est = stats.estimate(g[col], "mean")
            row.update({col: est.value, f"{col}_low": (est.ci or (np.nan,))[0],
                        f"{col}_high": (est.ci or (np.nan, np.nan))[1], f"{col}_sd": g[col].std(),
                        f"{col}_iqr": _iqr(g[col]), f"{col}_median": g[col].median()})
        rows.append(row)
    return pd.DataFrame(rows)


def spread_test(x: pd.Series, y: pd.Series) -> stats.Test:
    """Mann-Whitney U on absolute deviations from each sample's own median (docstring)."""
    x, y = stats.finite(x), stats.finite(y)
    return stats.unpaired(np.abs(x - np.median(x)), np.abs(y - np.median(y)))


def paired_by_seed(runs: pd.DataFrame, condition: str, neuron: str, col: str):
    """(condition's values, swap's values) of one neuron, aligned on the seeds both have."""
    g = runs[runs["neuron"] == neuron].pivot_table(index="seed", columns="condition", values=col)
    g = g.dropna(subset=[condition, REFERENCE]) if condition in g and REFERENCE in g else g.iloc[:0]
    return g.get(condition, pd.Series(dtype=float)), g.get(REFERENCE, pd.Series(dtype=float))


def samples(runs: pd.DataFrame, condition: str, neuron: str, col: str) -> pd.Series:
    """One condition's values of `col` on one neuron, over its seeds (NaN dropped)."""
    return runs.loc[(runs["condition"] == condition) & (runs["neuron"] == neuron), col].dropna()


def comparisons(runs: pd.DataFrame) -> dict[tuple[str, str, str, str], stats.Test]:
    """{(condition, neuron, measure, kind): Test} against swap; kind is level (the seeds both
    conditions have a value for) or spread (every value of each)."""
    out = {}
    for condition in [c for c in runs["condition"].unique() if c != REFERENCE]:
        for neuron in runs["neuron"].unique():
            for col in MEASURES:
                x, y = paired_by_seed(runs, condition, neuron, col)
                if len(x):
                    out[condition, neuron, col, "level"] = stats.paired(x, y)
                a, b = samples(runs, condition, neuron, col), samples(runs, REFERENCE, neuron, col)
                if len(a) and len(b):
                    out[condition, neuron, col, "spread"] = spread_test(a, b)
    return out


def test_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (condition, neuron, col, kind), t in comparisons(runs).items():
        sd = [samples(runs, c, neuron, col).std() for c in (condition, REFERENCE)]
        rows.append(dict(condition=condition, neuron=neuron, measure=col, kind=kind, test=t.name,
                         n=t.n, statistic=t.statistic, p=t.p, effect=t.effect,
                         difference=t.difference, difference_low=(t.difference_ci or (np.nan,))[0],
                         difference_high=(t.difference_ci or (np.nan, np.nan))[1],
                         sd_ratio=sd[0] / sd[1] if sd[1] > 0 else np.nan))
    return pd.DataFrame(rows)


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    """operators_runs, operators_summary, operators_tests, as far as 09's results exist."""
    exp_dir = Path(preset_dir) / EXP
    if not (exp_dir / "study.json").exists():
        return {}
    runs = per_run(exp_dir, read_json(exp_dir / "study.json"))
    if not len(runs):
        return {}
    out = {"operators_runs": runs, "operators_summary": summary(runs),
           "operators_tests": test_table(runs)}
    return {name: df for name, df in out.items() if len(df)}


def provenance(rows: pd.DataFrame) -> dict:
    """numbers.json's provenance of some operators_runs rows."""
    def col(name: str) -> list:
        return rows[name].dropna().tolist()
    return dict(experiment=EXP, run_dirs=sorted(col("path")),
                wandb_run_ids=sorted(set(col("wandb_run_id"))),
                git_shas=sorted(set(col("git_sha"))), git_dirty=bool(any(col("git_dirty"))),
                files=[f"{EXP}/study.json"])


def claims(t: dict, _index: pd.DataFrame) -> dict:
    """numbers.json entries: per condition and neuron the mean hypervolume and best in-distribution
    activation (CIs), their SD and IQR, seconds and iterations per run; per condition other than
    swap, the paired level test and the spread test against swap."""

    runs = t.get("operators_runs")
    if runs is None:
        return {}
    out = {}
    for (condition, neuron), g in runs.groupby(["condition", "neuron"], sort=False):
        prov = provenance(g)
        claim = _claim(condition)
        key = f"ops.{condition}.{neuron}"
        for col, label in MEASURES.items():
            unit = "area" if col.startswith("hypervolume") else "activation"
            out[f"{key}.{col}.mean"] = entry(claim, f"{neuron}, {condition}: mean {label}", unit,
                                             prov, est=stats.estimate(g[col]), over="seeds",
                                             values=g[col])
            for stat, value in (("sd", g[col].std()), ("iqr", _iqr(g[col]))):
                out[f"{key}.{col}.{stat}"] = entry(
                    SPREAD, f"{neuron}, {condition}: {stat} over seeds of the {label}", unit, prov,
                    value=value, statistic=stat, n=g[col].notna().sum(), over="seeds")
        for col, unit in (("seconds", "seconds"), ("iterations", "count")):
            out[f"{key}.{col}.mean"] = entry(claim, f"{neuron}, {condition}: {col} per run", unit,
                                             prov, est=stats.estimate(g[col]), over="seeds")
    for (condition, neuron, col, kind), test in comparisons(runs).items():
        names = runs[(runs["neuron"] == neuron) & runs["condition"].isin([condition, REFERENCE])]
        x, y = paired_by_seed(runs, condition, neuron, col)
        what = "mean paired difference" if kind == "level" else "spread (|deviation| from median)"
        out[f"ops.{condition}_vs_swap.{neuron}.{col}.{kind}"] = entry(
            _claim(condition) if kind == "level" else SPREAD,
            f"{neuron}: {MEASURES[col]}, {condition} vs swap, {what}",
            "area" if col.startswith("hypervolume") else "activation", provenance(names),
            est=stats.estimate(x.to_numpy() - y.to_numpy()) if kind == "level" else None,
            value=test.difference, statistic="difference" if kind == "spread" else "mean",
            n=test.n, over="seeds", test=test)
    return out


def _claim(condition: str) -> str:
    """numbers.json claim of a condition's entries: its README row (operators, explore,
    operators_explore); the reference's are ops_swap, quoted by every row."""
    return "ops_swap" if condition == REFERENCE else condition.replace("+", "_")
