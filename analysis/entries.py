"""One entry of numbers.json and the provenance it carries (analysis/numbers.py has the schema):
the form every claim fills, whether numbers.py computes it or a study's own module (operators.py,
sae_latents.py) does.

    prov = provenance_of(index, "04_seed_variance")          # run dirs, W&B ids, git SHAs
    e = entry("seeds", "best activation, median over seeds", "activation", prov, est=estimate)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats


def json_number(x) -> float | int | None:
    """JSON-ready scalar: NaN -> null, integers stay integers."""
    if x is None or pd.isna(x):
        return None
    return int(x) if isinstance(x, (int, np.integer)) else float(x)


def provenance_of(index: pd.DataFrame, experiment: str | tuple[str, ...], targets=None,
                  names=None, files=()) -> dict:
    """Run directories, W&B ids and git SHAs of one or several experiments' runs (optionally some
    targets or run names only), from units.py's run index."""
    exps = (experiment,) if isinstance(experiment, str) else tuple(experiment)
    experiment = "+".join(exps)
    rows = index[index["experiment"].isin(exps)] if len(index) else index
    if len(rows) and targets is not None:
        rows = rows[rows["target"].isin(list(targets))]
    if len(rows) and names is not None:
        rows = rows[rows["run"].isin(list(names))]
    def col(c: str) -> list:
        return rows[c].dropna().tolist() if len(rows) and c in rows else []
    return dict(experiment=experiment, run_dirs=sorted(col("path")),
                wandb_run_ids=sorted(set(col("wandb_run_id"))), git_shas=sorted(set(col("git_sha"))),
                git_dirty=bool(any(col("git_dirty"))), files=list(files),
                iterations=sorted({int(i) for i in col("iters")}))


def entry(claim: str, label: str, unit: str, prov: dict, *, value=None, statistic: str = "value",
          n: int = 1, over: str = "runs", est: stats.Estimate | None = None,
          test: stats.Test | None = None, values=None, at: dict | None = None,
          ci: tuple[float, float] | None = None, ci_method: str | None = None) -> dict:
    """One numbers.json entry (analysis/numbers.py has the schema); an Estimate fills value,
    statistic, n and ci."""
    e = dict(claim=claim, label=label, value=json_number(value), unit=unit, statistic=statistic,
             n=int(n), over=over, ci=list(ci) if ci else None, ci_method=ci_method, test=None,
             runs=len(prov["run_dirs"]), provenance=prov)
    if est is not None:
        e.update(value=json_number(est.value), statistic=est.statistic, n=est.n,
                 ci=list(est.ci) if est.ci else None, ci_method=est.ci_method)
    if test is not None:
        e["test"] = test.to_dict()
    if values is not None:
        e["values"] = [json_number(v) for v in values]
    if at is not None:
        e["at"] = {k: json_number(v) for k, v in at.items()}
    return e
