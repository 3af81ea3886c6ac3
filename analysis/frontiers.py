"""Frontier tables of the dream experiments (paper Tables 2, 3, 5): saved runs -> tidy DataFrames.

    from analysis import frontiers
    tabs = frontiers.tables(Path("results/embedded"))
    tabs["table2_token_logits"]      # merged frontier of both runs per word (paper Table 2)
    tabs["table3_six_neurons"]       # best activation under the perplexity-100 analog (Table 3)
    tabs["frontier_points"]          # every frontier point of every run of 02 and 03 (Table 5)
    tabs["attribution_03"]           # one row per token of each attributed prompt (Fig 1)

Pure functions of the run directories (fluentdream.runs) and 01's thresholds.json; missing experiments
give missing tables, never an error.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.core.history import History
from fluentdream.runs import CHECKPOINT, is_complete, merged_frontier, read_json

from .fluency import load_thresholds

EXPERIMENTS = ("02_token_logits", "03_six_neurons")


def complete_runs(exp_dir: Path) -> list[Path]:
    """Finished run directories of one experiment, sorted by name."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    return sorted(d for d in exp_dir.iterdir() if d.is_dir() and is_complete(d))


def run_info(run_dir: Path) -> dict:
    config = read_json(run_dir / "config.json")
    return dict(run=run_dir.name, target=config["target"], seed=config["seed"],
                model=config["model"], iters=config["iters"])


def frontier_points(exp_dir: Path) -> pd.DataFrame:
    """Every frontier point of every complete run: experiment, run, target, seed, point, target
    value (`activation`), xentropy, perplexity, lam, text."""
    rows = []
    for d in complete_runs(exp_dir):
        info = run_info(d)
        for i, p in enumerate(read_json(d / "frontier.json")):
            rows.append(dict(info, experiment=Path(exp_dir).name, point=i, activation=p["target"],
                             xentropy=p["xentropy"], perplexity=p["perplexity"], lam=p["lam"],
                             text=p["text"]))
    return pd.DataFrame(rows)


def merged_by_target(exp_dir: Path) -> pd.DataFrame:
    """One frontier per target over all its seeds (runs.merged_frontier), in order of CE."""
    by_target: dict[str, list[Path]] = {}
    for d in complete_runs(exp_dir):
        by_target.setdefault(run_info(d)["target"], []).append(d)
    rows = []
    for target, dirs in by_target.items():
        records, runs = merged_frontier(dirs)
        for i, (p, run) in enumerate(zip(records, runs)):
            rows.append(dict(target=target, point=i, activation=p["target"],
                             xentropy=p["xentropy"], perplexity=p["perplexity"], text=p["text"],
                             run=run, n_runs=len(dirs)))
    return pd.DataFrame(rows)


def best_under(run_dir: Path, limit: float) -> tuple[float, float]:
    """(activation, CE) of the best candidate of the whole run with CE < limit; (nan, nan) if none.
    All candidates count, not only frontier points (a frontier is the convex hull)."""
    _, f, ce = History.load(Path(run_dir) / CHECKPOINT).candidates()
    ok = ce < limit
    if not ok.any():
        return float("nan"), float("nan")
    i = np.flatnonzero(ok)[np.argmax(f[ok])]
    return float(f[i]), float(ce[i])


def six_neurons_table(exp_dir: Path, limits: dict) -> pd.DataFrame:
    """Table 3: per neuron, the best activation with CE under the perplexity-100 analog."""
    rows = []
    for d in complete_runs(exp_dir):
        info = run_info(d)
        value, ce = best_under(d, limits["perplexity_100"])
        summary = read_json(d / "summary.json")
        rows.append(dict(target=info["target"], seed=info["seed"], activation=value,
                         xentropy=ce, perplexity=float(np.exp(ce)),
                         ce_limit=limits["perplexity_100"],
                         perplexity_limit=float(np.exp(limits["perplexity_100"])),
                         best_activation=summary["best_target"], run=info["run"]))
    df = pd.DataFrame(rows)
    if len(df):
        layer = df["target"].str.extract(r"L(\d+)\.N(\d+)").astype(int)
        df = df.assign(_l=layer[0], _n=layer[1]).sort_values(["_l", "_n"]).drop(columns=["_l", "_n"])
    return df.reset_index(drop=True)


def attribution_table(exp_dir: Path) -> pd.DataFrame:
    """Fig 1's data in long form: one row per (prompt, position)."""
    path = Path(exp_dir) / "attribution.json"
    if not path.exists():
        return pd.DataFrame()
    rows = []
    for j, p in enumerate(read_json(path)["prompts"]):
        for pos, (tok, hi, lo) in enumerate(zip(p["tokens"], p["max_drop"], p["min_drop"])):
            rows.append(dict(target=p["neuron"], prompt=j, position=pos, token=tok,
                             value=p["value"], xentropy=p["xentropy"], max_drop=hi, min_drop=lo,
                             text=p["text"]))
    return pd.DataFrame(rows)


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    preset_dir = Path(preset_dir)
    out = {}
    points = [frontier_points(preset_dir / e) for e in EXPERIMENTS]
    points = [p for p in points if len(p)]
    if points:
        out["frontier_points"] = pd.concat(points, ignore_index=True)
    logits = merged_by_target(preset_dir / "02_token_logits")
    if len(logits):
        out["table2_token_logits"] = logits
    limits = load_thresholds(preset_dir)
    six = preset_dir / "03_six_neurons"
    if limits is not None and complete_runs(six):
        out["table3_six_neurons"] = six_neurons_table(six, limits)
    att = attribution_table(six)
    if len(att):
        out["attribution_03"] = att
    return out
