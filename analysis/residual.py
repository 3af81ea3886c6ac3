"""Residual-direction alignment: dream vs dataset scan vs random prompts (paper §3.5; experiment 07).

    from analysis import residual
    t = residual.tables(Path("results/embedded"))
    t["residual_summary"]     # mean alignment per layer and overall, with and without the CE limit

Alignment is a z-score against the direction's 1024 random-token prompts: (value - mean) / SD.
  random        the best of those random prompts
  dataset       the best of the scan's top windows, each re-scored alone as a 12-token prompt
  dream         the best EPO candidate (no CE limit)
  dream_limited the best EPO candidate with CE < the in-distribution threshold (paper: CE < 6)
Slack curve (Fig 5b): allowing s SDs of slack below a run's max alignment, the chosen dream is the
most fluent candidate with z >= z_max - s; its mean z and mean CE are reported for each s, beside
the corpus's mean 12-token CE.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream import History
from fluentdream.runs import is_complete

EXP = "07_residual_directions"
SLACKS = np.round(np.arange(0.0, 8.01, 0.25), 2)


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def dream_rows(exp_dir: Path, base: pd.DataFrame, limit: float,
               slacks: np.ndarray = SLACKS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per finished run: best z with and without the CE limit; and its slack-curve points."""
    stats = base.set_index("target")
    rows, slack_rows = [], []
    for d in sorted((exp_dir / "runs").glob("*")):
        if not is_complete(d):      # unfinished, or being written by another process
            continue
        target = _read(d / "config.json")["target"]
        _, f, ce = History.load(d / "history.npz").candidates()
        z = (f.astype(float) - stats.at[target, "mean"]) / stats.at[target, "sd"]
        ce = ce.astype(float)
        j = int(np.argmax(z))
        ok = np.flatnonzero(ce < limit)
        k = ok[np.argmax(z[ok])] if len(ok) else None
        rows.append(dict(target=target, dream_z=z[j], dream_ce=ce[j],
                         dream_limited_z=z[k] if k is not None else np.nan,
                         dream_limited_ce=ce[k] if k is not None else np.nan))
        for s in slacks:
            near = np.flatnonzero(z >= z[j] - s)
            i = near[np.argmin(ce[near])]
            slack_rows.append(dict(target=target, slack=s, z=z[i], xentropy=ce[i]))
    return pd.DataFrame(rows), pd.DataFrame(slack_rows)


def dataset_rows(exp_dir: Path, base: pd.DataFrame) -> pd.DataFrame | None:
    """Per direction: the best re-scored scan window (z, CE, text) and the in-context top-1 z."""
    path = exp_dir / "mining" / "examples.parquet"
    if not path.exists():
        return None
    ex = pd.read_parquet(path, columns=["target", "rank", "activation", "window_activation",
                                       "window_xentropy", "window_text"])
    stats = base.set_index("target")
    ex["z"] = (ex["window_activation"] - ex["target"].map(stats["mean"])) / ex["target"].map(stats["sd"])
    ex["context_z"] = (ex["activation"] - ex["target"].map(stats["mean"])) / ex["target"].map(stats["sd"])
    best = ex.loc[ex.groupby("target")["z"].idxmax()]
    top1 = ex[ex["rank"] == 0].set_index("target")["context_z"]
    return pd.DataFrame(dict(target=best["target"].values, dataset_z=best["z"].values,
                             dataset_ce=best["window_xentropy"].values,
                             dataset_text=best["window_text"].values,
                             dataset_context_z=best["target"].map(top1).values))


def summarize(directions: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD of every alignment column per layer, plus an 'all' row."""
    cols = [c for c in ("random_z", "dataset_z", "dataset_context_z", "dream_z", "dream_limited_z",
                        "dream_ce", "dream_limited_ce", "dataset_ce") if c in directions]
    parts = []
    for layer, g in list(directions.groupby("layer")) + [("all", directions)]:
        row = dict(layer=str(layer), directions=len(g))
        for c in cols:
            row[c] = g[c].mean()
            row[f"{c}_sd"] = g[c].std()
        parts.append(row)
    return pd.DataFrame(parts)


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    """residual_{directions,summary,slack}, as far as experiment 07's results exist."""
    exp_dir = Path(preset_dir) / EXP
    if not (exp_dir / "random_baseline.parquet").exists():
        return {}
    base = pd.read_parquet(exp_dir / "random_baseline.parquet")
    limits = _read(exp_dir / "threshold.json")
    directions = base[["target", "layer"]].assign(
        random_z=((base["max"] - base["mean"]) / base["sd"]).values)
    data = dataset_rows(exp_dir, base)
    if data is not None:
        directions = directions.merge(data, on="target", how="left")
    dreams, slack = dream_rows(exp_dir, base, limits["threshold"])
    if len(dreams):
        directions = directions.merge(dreams, on="target", how="left")
    directions = directions.assign(threshold=limits["threshold"])
    out = dict(residual_directions=directions, residual_summary=summarize(directions))
    if len(slack):
        curve = slack.merge(base[["target", "layer"]], on="target").groupby("slack").agg(
            z=("z", "mean"), z_sd=("z", "std"), xentropy=("xentropy", "mean"),
            xentropy_sd=("xentropy", "std"), runs=("z", "size")).reset_index()
        out["residual_slack"] = curve.assign(corpus_ce=limits["corpus_mean"],
                                             corpus_ce_sd=limits["corpus_sd"],
                                             threshold=limits["threshold"])
    return out
