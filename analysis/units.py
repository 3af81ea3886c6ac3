"""Per-unit tables that the statistics need, and the run index that traces every number to its runs.

    from analysis import units
    t = units.tables(Path("results/embedded"))
    t["runs"]                 # every finished run directory: experiment, run, path, target, seed,
                              # W&B run id, git SHA, dirty flag, iterations, growth (04's Fig 2b run)
    t["dataset_runs"]         # per run of 05/06: best dream, best in-distribution dream, best dream
                              # at the best dataset example's CE (the paired test's unit)
    t["residual_slack_runs"]  # per run of 07 and slack s: the chosen dream's z and CE (Fig 5b)

The other analysis modules summarize over units (means, pooled maxima); numbers.py needs the
units themselves for intervals and paired tests, and each number's run directories, W&B run ids
and git SHAs come from `runs`. Paths are relative to the preset directory, so they hold on any
machine that has the results.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.runs import CHECKPOINT, is_complete, read_json

from . import dataset, residual


def _run_dirs(preset_dir: Path) -> list[Path]:
    """Finished run directories: <experiment>/<run> and <experiment>/runs/<run> (a mining
    directory also has a summary.json, but no history)."""
    found = [d for pattern in ("*/*", "*/runs/*") for d in preset_dir.glob(pattern)
             if d.is_dir() and is_complete(d) and (d / CHECKPOINT).exists()]
    return sorted(found)


def _growth_seed(exp_dir: Path, rows: list[dict]) -> int | None:
    """04's Fig 2b run: study.json's growth_seed, else the seed with the highest activation
    (lowest seed on ties), the rule of analysis/seeds.py."""
    study = read_json(exp_dir / "study.json") if (exp_dir / "study.json").exists() else {}
    if study.get("growth_seed") is not None:
        return study["growth_seed"]
    mine = [r for r in rows if r["experiment"] == exp_dir.name and r["target"] == study.get("target")]
    if not mine:
        return None
    return min(mine, key=lambda r: (-r["best_target"], r["seed"]))["seed"]


def run_index(preset_dir: Path) -> pd.DataFrame:
    """One row per finished run directory of the preset (see module docstring)."""
    preset_dir = Path(preset_dir)
    rows = []
    for d in _run_dirs(preset_dir):
        config, summary = read_json(d / "config.json"), read_json(d / "summary.json")
        prov = read_json(d / "provenance.json") if (d / "provenance.json").exists() else {}
        rel = d.relative_to(preset_dir)
        rows.append(dict(experiment=rel.parts[0], run=d.name, path=rel.as_posix(),
                         target=config.get("target"), seed=config.get("seed"),
                         iters=summary.get("iterations"), best_target=summary.get("best_target"),
                         wandb_run_id=prov.get("wandb_run_id"), git_sha=prov.get("git_sha"),
                         git_dirty=prov.get("git_dirty")))
    seed = _growth_seed(preset_dir / "04_seed_variance", rows)
    for r in rows:
        r["growth"] = r["experiment"] == "04_seed_variance" and r["seed"] == seed
    return pd.DataFrame(rows)


def dataset_runs(preset_dir: Path) -> pd.DataFrame:
    """Per dream run of 05 (example neuron) and 06 (polysemantic neuron), against the neuron's
    best re-scored dataset example: the unit of the paired dream-vs-dataset test."""
    mined = Path(preset_dir) / "05_dream_vs_dataset"
    if not (mined / "neuron_choices.json").exists() or not (mined / "mining" / "examples.parquet").exists():
        return pd.DataFrame()
    choices = read_json(mined / "neuron_choices.json")
    limit = read_json(mined / "threshold.json")["threshold"]
    examples = pd.read_parquet(mined / "mining" / "examples.parquet",
                               columns=["target", "window_activation", "window_xentropy"])
    rows = []
    for role, (_, key) in dataset.ROLES.items():
        ex = examples[examples["target"] == choices[key]]
        if not len(ex):
            continue
        best = ex.loc[ex["window_activation"].idxmax()]
        for d in dataset.role_runs(preset_dir, role, choices[key]):
            config = read_json(d / "config.json")
            c = dataset.candidates(d)
            act, ce = c["target"].to_numpy(), c["xentropy"].to_numpy()
            at_dataset, _ = dataset.best_below(act, ce, float(best["window_xentropy"]))
            in_dist, in_dist_ce = dataset.best_below(act, ce, limit)
            rows.append(dict(role=role, neuron=choices[key], run=d.name,
                             seed=config.get("seed"),
                             best_dream=float(act.max()), best_dream_in_dist=in_dist,
                             best_dream_in_dist_ce=in_dist_ce, dream_at_dataset_ce=at_dataset,
                             best_dataset=float(best["window_activation"]),
                             best_dataset_ce=float(best["window_xentropy"]), threshold=limit))
    return pd.DataFrame(rows)


def residual_slack_runs(preset_dir: Path) -> pd.DataFrame:
    """07's slack curve per run (residual.dream_rows), before residual.py averages it."""
    exp_dir = Path(preset_dir) / residual.EXP
    if not (exp_dir / "random_baseline.parquet").exists():
        return pd.DataFrame()
    base = pd.read_parquet(exp_dir / "random_baseline.parquet")
    limit = read_json(exp_dir / "threshold.json")["threshold"]
    _, slack = residual.dream_rows(exp_dir, base, limit, slacks=np.arange(0.0, 3.01, 1.0))
    return slack


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    """runs, dataset_runs, residual_slack_runs, as far as results exist."""
    out = {"runs": run_index(preset_dir), "dataset_runs": dataset_runs(preset_dir),
           "residual_slack_runs": residual_slack_runs(preset_dir)}
    return {name: df for name, df in out.items() if len(df)}
