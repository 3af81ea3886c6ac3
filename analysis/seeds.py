"""Seed variance and frontier growth (paper §3.2, Fig 2): 04's runs -> tidy tables.

    from analysis import seeds
    tabs = seeds.tables(Path("results/embedded"))
    tabs["seed_variance"]            # per seed: max activation, max under the CE-5 analog (Fig 2a)
    tabs["seed_summary"]             # one row: their ranges and medians
    tabs["frontier_growth"]          # one run's frontier after each checkpoint (Fig 2b)
    tabs["restart_growth"]           # per restart: is the population better at every penalty
                                     # 10/30 of a restart period later than before it?
    tabs["restart_runs"]             # per run: its restarts' mean gain, share improved, and
                                     # whether its first restart improved everywhere

The paper: "by 10 iterations after a restart, solutions are typically substantially better at all
points on the Pareto frontier." The solutions are the population. For every restart at iteration t
(t > 0) we compare the population entering t (the M prompts the slots held before the restart
collapsed them) with the population 10 iterations later (scaled by restart_frequency / 30): at 50
penalties lambda log-spaced over EPO's range [0.1, 10], the best f - lambda * CE among each
population's prompts. The gain can be negative (the collapse discards the spread, and 10
iterations may not win it back), so a test of it can fail. A restart "improves everywhere" when
every lambda gains. Restarts of one run are not independent, so runs are the units: a run's mean
gain and share of penalties improved over its restarts, and whether its first restart improved
everywhere (a yes or no per run: a binomial count).
"""
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.core.frontier import pareto_frontier
from fluentdream.core.history import History
from fluentdream.runs import CHECKPOINT, read_json

from .fluency import load_thresholds
from .frontiers import complete_runs

EXPERIMENT = "04_seed_variance"
LAMBDAS = np.geomspace(0.1, 10.0, 50)
PAPER_HORIZON, PAPER_RESTART = 10, 30


def _best_under(f: np.ndarray, ce: np.ndarray, limit: float) -> float:
    ok = ce < limit
    return float(f[ok].max()) if ok.any() else float("nan")


def per_seed(runs: list[Path], limits: dict | None) -> pd.DataFrame:
    rows = []
    for d in runs:
        config = read_json(d / "config.json")
        _, f, ce = History.load(d / CHECKPOINT).candidates()
        row = dict(seed=config["seed"], target=config["target"], run=d.name,
                   max_activation=float(f.max()))
        if limits is not None:
            row.update(max_under_ce5=_best_under(f, ce, limits["ce_5"]), ce5_limit=limits["ce_5"],
                       max_in_distribution=_best_under(f, ce, limits["in_distribution"]))
        rows.append(row)
    return pd.DataFrame(rows).sort_values("seed").reset_index(drop=True)


def summary(seeds: pd.DataFrame) -> pd.DataFrame:
    """Ranges and medians over seeds; runs with no candidate under the limit count as missing."""
    row = dict(target=seeds["target"].iloc[0], n_seeds=len(seeds),
               max_min=seeds["max_activation"].min(), max_max=seeds["max_activation"].max(),
               max_median=seeds["max_activation"].median())
    if "max_under_ce5" in seeds:
        under = seeds["max_under_ce5"]
        row.update(ce5_min=under.min(), ce5_max=under.max(), ce5_median=under.median(),
                   ce5_missing=int(under.isna().sum()), ce5_limit=seeds["ce5_limit"].iloc[0])
    return pd.DataFrame([row])


def growth(run_dir: Path, checkpoints: list[int]) -> pd.DataFrame:
    """Fig 2b: the frontier of the run's first k iterations, for each checkpoint k."""
    hist = History.load(run_dir / CHECKPOINT)
    rows = []
    for k in checkpoints:
        front = pareto_frontier([hist.truncated(min(k, len(hist)))])
        for i, (f, ce) in enumerate(zip(front.target, front.xentropy)):
            rows.append(dict(checkpoint=k, point=i, activation=f, xentropy=ce))
    return pd.DataFrame(rows)


def _envelope(f: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """(M,), (M,) a population's scores -> (L,) its best f - lambda * CE at each of LAMBDAS."""
    return (f[None, :].astype(np.float64) - LAMBDAS[:, None] * ce[None, :]).max(axis=1)


def restart_gains(hist: History, period: int) -> list[dict]:
    """Per restart of one run (every `period` iterations, the first excluded): the population's
    gain at each penalty `horizon` iterations after it, summarized."""
    horizon = max(1, round(PAPER_HORIZON * period / PAPER_RESTART))
    rows = []
    for t in range(period, len(hist) - horizon, period):
        # the restart happens at the end of iteration t: before it, the slots held what
        # iteration t - 1 kept; `horizon` iterations after it, what t + horizon kept
        gain = _envelope(*hist.slot_scores(t + horizon)) - _envelope(*hist.slot_scores(t - 1))
        rows.append(dict(restart=t, horizon=horizon, frac_improved=float(np.mean(gain > 1e-6)),
                         improved_everywhere=bool(np.all(gain > 1e-6)),
                         mean_gain=float(gain.mean())))
    return rows


def restart_growth(runs: list[Path]) -> pd.DataFrame:
    """One row per restart of every run (restart_gains)."""
    rows = []
    for d in runs:
        config = read_json(d / "config.json")
        if config["restart_frequency"]:
            rows += [dict(run=d.name, seed=config["seed"], **r) for r in
                     restart_gains(History.load(d / CHECKPOINT), config["restart_frequency"])]
    return pd.DataFrame(rows)


def restart_runs(restarts: pd.DataFrame) -> pd.DataFrame:
    """Per run (the unit): mean gain and share of penalties improved over its restarts, and
    whether its first restart improved at every penalty."""
    first = restarts.sort_values("restart").groupby("run").first()["improved_everywhere"]
    out = restarts.groupby("run").agg(seed=("seed", "first"), restarts=("restart", "size"),
                                      mean_gain=("mean_gain", "mean"),
                                      frac_improved=("frac_improved", "mean"))
    return out.assign(first_improved_everywhere=first).reset_index()


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    exp_dir = Path(preset_dir) / EXPERIMENT
    study = read_json(exp_dir / "study.json") if (exp_dir / "study.json").exists() else {}
    runs = [d for d in complete_runs(exp_dir)     # only the study's target, if it was changed
            if read_json(d / "config.json")["target"] == study.get("target")]
    if not runs:
        return {}
    seeds = per_seed(runs, load_thresholds(preset_dir))
    out = {"seed_variance": seeds, "seed_summary": summary(seeds)}
    growth_seed = study.get("growth_seed")
    if growth_seed is None:   # the best run: Fig 2b is about growth, a stuck run shows none
        growth_seed = int(seeds.sort_values(["max_activation", "seed"], ascending=[False, True])
                          ["seed"].iloc[0])
    grow = [d for d in runs if read_json(d / "config.json")["seed"] == growth_seed]
    if grow:
        iters = read_json(grow[0] / "config.json")["iters"]
        checkpoints = study.get("checkpoints") or [max(1, round(c * iters / 300))
                                                   for c in (20, 40, 100, 300)]
        out["frontier_growth"] = growth(grow[0], checkpoints)
    restarts = restart_growth(runs)
    if len(restarts):
        out["restart_growth"] = restarts
        out["restart_runs"] = restart_runs(restarts)
    return out
