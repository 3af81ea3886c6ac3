"""Every number the README results table quotes, with its interval, test, n and runs: numbers.json.

    python -m analysis.build_tables --preset embedded    # tables/*.csv, then numbers.json from them
    numbers = build(tables)                              # {key: entry}, tables as build_tables makes them

Schema (`schema` = "fluentdream.numbers", `schema_version` = 1) of results/<preset>/numbers.json:
  preset, created (UTC), git_sha and git_dirty of the code that computed the numbers,
  confidence, bootstrap {resamples, seed, method}, off_below (see OFF), and
  numbers: {key: entry}, keys dotted and stable ("seeds.max.median", "residual.dream.mean"), each
    claim       the README row it belongs to (analysis/readme_table.py: ROWS)
    label       what the number is, in words
    value       the number (null when it does not exist: no candidate under a CE limit)
    unit        activation | nats | z | count | share | area (activation x nats: a hypervolume) |
                seconds
    statistic   mean | median | max | min | sd | iqr | count | difference | difference of medians |
                value (one observed point); a mean of paired differences is "mean"
    n, over     how many units it summarizes, and which (seeds, directions, restarts, slices, runs)
    ci, ci_method   [low, high] 95% interval and how it was made (stats.py); null for one point
                or a count, which have no sampling distribution here
    test        comparisons only: {name, statistic, p, n, effect_name, effect, difference_name,
                difference, difference_ci, unreached} (stats.Test; paired Wilcoxon or unpaired
                Mann-Whitney; unreached: paired units counted as a loss of the side with no value)
    values      the per-unit values behind a summary (per seed, per run)
    at          for a point on a frontier: {xentropy, perplexity} of that point
    target, tokens, last_position   a few claims only: the logit's target (logits.*); the token
                that carries each attributed prompt and how many are its last (attribution.*)
    runs        how many run directories stand behind it
    provenance  {experiment, run_dirs (relative to results/<preset>/), wandb_run_ids, git_shas,
                git_dirty, files (non-run inputs such as 01's fluency.json), iterations (the
                runs' distinct iteration counts)}
Only the analysis tables are read (build_tables' output plus units.py's per-unit tables), so the
numbers work at any iteration or seed count; a claim whose tables are missing has no keys.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream.runs import git_info

from . import dataset, operators, sae_latents, stats
from .entries import entry, provenance_of

SCHEMA, SCHEMA_VERSION = "fluentdream.numbers", 1
OFF = 0.1   # a post-GELU activation at most this is "off": GELU's floor is -0.17, stuck runs end at -0.00
SLACKS = (0, 1, 2, 3)   # Fig 5b's slack values quoted in the README
LIMITS = {"perplexity_100": "the paper's perplexity 100", "ce_5": "the paper's CE 5",
          "ce_6": "the paper's CE 6", "in_distribution": "in distribution (mean + 2 SD)"}


def _point(row: pd.Series) -> dict:
    return dict(xentropy=row["xentropy"], perplexity=float(np.exp(row["xentropy"])))


def fluency(t: dict, index: pd.DataFrame) -> dict:
    """01: mean CE of n-token corpus slices (t interval: the slices are not saved) and the SD at 12."""
    out, calib = {}, t.get("fluency_calibration")
    if calib is None:
        return out
    prov = provenance_of(index, "01_fluency_calibration", files=["01_fluency_calibration/fluency.json"])
    for _, r in calib.iterrows():
        n = int(r["n"])
        out[f"fluency.ce.n{n}"] = entry(
            "fluency", f"mean CE of {n}-token corpus slices", "nats", prov, value=r["mean"],
            statistic="mean", n=r["count"], over="slices",
            ci=stats.t_interval(r["mean"], r["sd"], int(r["count"])), ci_method="t")
        if n == 12:
            out["fluency.sd.n12"] = entry("fluency", "SD of 12-token slice CE", "nats", prov,
                                          value=r["sd"], statistic="sd", n=r["count"], over="slices")
    limits = t.get("thresholds")
    for name, label in LIMITS.items() if limits is not None else ():
        out[f"fluency.limit.{name}"] = entry(
            "fluency", f"CE limit: {label}, moved by z-score at n = 12 (01's rule)", "nats",
            provenance_of(index, "01_fluency_calibration", files=["01_fluency_calibration/thresholds.json"]),
            value=limits[name].iloc[0], n=limits["n_slices"].iloc[0], over="slices")
    return out


def logits(t: dict, index: pd.DataFrame) -> dict:
    """02 (Table 2): each word's merged frontier, its lowest-CE and its highest point."""
    out, table = {}, t.get("table2_token_logits")
    if table is None:
        return out
    for target, g in table.groupby("target", sort=False):
        word = re.sub(r"\W+", "_", target.split(":", 1)[-1].strip()).strip("_") or "token"
        prov = provenance_of(index, "02_token_logits", targets=[target])
        for name, row in (("lowest_ce", g.loc[g["xentropy"].idxmin()]),
                          ("highest", g.loc[g["activation"].idxmax()])):
            out[f"logits.{word}.{name}"] = entry(
                "logits", f"{target}: {name.replace('_', ' ')} point of the merged frontier",
                "activation", prov, value=row["activation"], n=row["n_runs"], at=_point(row))
            out[f"logits.{word}.{name}"]["target"] = target
    return out


def six_neurons(t: dict, index: pd.DataFrame) -> dict:
    """03 (Table 3): per neuron, the best activation under the perplexity-100 analog; how many fire."""
    out, table = {}, t.get("table3_six_neurons")
    if table is None:
        return out
    for _, r in table.iterrows():
        prov = provenance_of(index, "03_six_neurons", names=[r["run"]])
        out[f"six_neurons.{r['target']}"] = entry(
            "six_neurons", f"{r['target']}: best activation with CE < {r['ce_limit']:.2f}",
            "activation", prov, value=r["activation"], at=dict(xentropy=r["xentropy"],
                                                              perplexity=r["perplexity"]))
        out[f"six_neurons.{r['target']}.max"] = entry(
            "six_neurons", f"{r['target']}: best activation at any CE", "activation", prov,
            value=r["best_activation"], statistic="max")
    fired = (table["activation"] > OFF).sum()
    out["six_neurons.fired"] = entry(
        "six_neurons", f"neurons with an activation above {OFF} under the CE limit", "count",
        provenance_of(index, "03_six_neurons"), value=fired, statistic="count", n=len(table), over="neurons")
    return out


def seeds(t: dict, index: pd.DataFrame) -> dict:
    """04 (Fig 2a): per-seed maxima, with and without the CE-5 analog: median (CI) and range."""
    out, table = {}, t.get("seed_variance")
    if table is None:
        return out
    prov = provenance_of(index, "04_seed_variance", names=table["run"])
    cols = [("max", "max_activation", "max activation")]
    if "max_under_ce5" in table:
        cols.append(("max_ce5", "max_under_ce5",
                     f"max activation with CE < {table['ce5_limit'].iloc[0]:.2f} (CE-5 analog)"))
    for key, col, label in cols:
        x = table[col]
        out[f"seeds.{key}.median"] = entry("seed_variance", f"median over seeds of the {label}",
                                           "activation", prov, est=stats.estimate(x, "median"),
                                           over="seeds", values=x)
        for stat in ("min", "max"):
            out[f"seeds.{key}.{stat}"] = entry(
                "seed_variance", f"{stat} over seeds of the {label}", "activation", prov,
                value=getattr(x, stat)(), statistic=stat, n=x.notna().sum(), over="seeds")
        out[f"seeds.{key}.missing"] = entry(
            "seed_variance", f"seeds without a candidate for: {label}", "count", prov,
            value=x.isna().sum(), statistic="count", n=len(x), over="seeds")
    out["seeds.off"] = entry("seed_variance", f"seeds whose max activation stays at or below {OFF}",
                             "count", prov, value=(table["max_activation"] <= OFF).sum(),
                             statistic="count", n=len(table), over="seeds")
    return out


def growth(t: dict, index: pd.DataFrame) -> dict:
    """04 (Fig 2b): the growth run's frontier maximum and lowest CE at each checkpoint."""
    out, table = {}, t.get("frontier_growth")
    if table is None:
        return out
    runs = index[index["growth"]]["run"] if len(index) else []
    prov = provenance_of(index, "04_seed_variance", names=runs)
    for k, g in table.groupby("checkpoint"):
        out[f"growth.max.it{k}"] = entry("growth", f"frontier max after {k} iterations",
                                         "activation", prov, value=g["activation"].max(),
                                         statistic="max")
        out[f"growth.min_ce.it{k}"] = entry("growth", f"frontier's lowest CE after {k} iterations",
                                            "nats", prov, value=g["xentropy"].min(), statistic="min")
    return out


def restarts(t: dict, index: pd.DataFrame) -> dict:
    """04 (§3.2): the population some iterations after each restart vs before it (analysis/
    seeds.py); runs are the units: Clopper-Pearson for the share of runs whose first restart
    improved everywhere, Wilcoxon over runs of each run's mean gain (which can be negative)."""
    out, table = {}, t.get("restart_runs")
    if table is None:
        return out
    prov = provenance_of(index, "04_seed_variance", names=table["run"].unique())
    every = table["first_improved_everywhere"].astype(bool)
    out["restarts.everywhere"] = entry(
        "restarts", "runs whose first restart left a population better at every penalty",
        "count", prov, value=int(every.sum()), statistic="count", n=len(table), over="runs")
    out["restarts.everywhere.share"] = entry(
        "restarts", "share of runs whose first restart improved every penalty", "share", prov,
        est=stats.proportion(int(every.sum()), len(table)), over="runs")
    out["restarts.share_improved.median"] = entry(
        "restarts", "median over runs of the share of penalties a restart improved", "share",
        prov, est=stats.estimate(table["frac_improved"], "median"), over="runs")
    out["restarts.mean_gain.median"] = entry(
        "restarts", "median over runs of a restart's gain of the population's best objective "
        "(mean over penalties)", "activation", prov,
        est=stats.estimate(table["mean_gain"], "median"), over="runs",
        test=stats.paired(table["mean_gain"], 0.0))
    return out


def dream_vs_dataset(t: dict, index: pd.DataFrame) -> dict:
    """05 and 06 (§3.3-3.4, Fig 3-4): per neuron, the best dataset example, the best dreams, and
    dream minus dataset at the example's CE; the test pairs each run's dream with that example."""
    out, summary, per_run = {}, t.get("dataset_summary"), t.get("dataset_runs")
    if summary is None:
        return out
    exps = {role: experiments for role, (experiments, _) in dataset.ROLES.items()}
    for _, s in summary.iterrows():
        role, neuron = s["role"], s["neuron"]
        runs = per_run[per_run["role"] == role] if per_run is not None else pd.DataFrame()
        prov = provenance_of(index, exps[role], targets=[neuron])
        mined = provenance_of(pd.DataFrame(), "05_dream_vs_dataset", files=[
            "05_dream_vs_dataset/mining/examples.parquet", "05_dream_vs_dataset/mining/summary.json"])
        claim = f"{role}_neuron"
        out[f"{role}.dataset.best"] = entry(
            claim, f"{neuron}: best of the top dataset examples, re-scored alone", "activation",
            mined, value=s["best_dataset"], statistic="max", n=s["dataset_examples"],
            over="examples", at=dict(xentropy=s["best_dataset_ce"],
                                     perplexity=np.exp(s["best_dataset_ce"])))
        for key, label in (("best_dream", "best dream at any CE"),
                           ("best_dream_in_dist", f"best dream with CE <= {s['threshold']:.2f}"),
                           ("dream_at_dataset_ce", "best dream with CE <= the best example's")):
            if key in s:
                ce = s.get(f"{key}_ce", np.nan)
                out[f"{role}.{key}"] = entry(claim, f"{neuron}: {label}, over all runs", "activation",
                                             prov, value=s[key], statistic="max", n=s["runs"],
                                             at=dict(xentropy=ce, perplexity=np.exp(ce)))
        if not len(runs):
            continue
        out[f"{role}.best_dream.median"] = entry(
            claim, f"{neuron}: median over runs of each run's best dream", "activation", prov,
            est=stats.estimate(runs["best_dream"], "median"), over="runs", values=runs["best_dream"])
        out[f"{role}.dream_minus_dataset"] = entry(
            claim, f"{neuron}: pooled best dream minus best example, both at CE <= the example's",
            "activation", prov, value=s.get("dream_minus_dataset"), statistic="difference",
            n=len(runs), test=stats.paired(runs["dream_at_dataset_ce"], runs["best_dataset"]),
            values=runs["dream_at_dataset_ce"] - runs["best_dataset"])
        out[f"{role}.off"] = entry(claim, f"{neuron}: runs whose best dream stays at or below {OFF}",
                                   "count", prov, value=(runs["best_dream"] <= OFF).sum(),
                                   statistic="count", n=len(runs))
    return out


def sampled_neurons(t: dict, index: pd.DataFrame) -> dict:
    """05's sampled neurons (beyond the paper's one neuron): per neuron, the best in-distribution
    dream against the best in-distribution dataset window; paired over neurons (Wilcoxon)."""
    table = t.get("dataset_sampled")
    if table is None:
        return {}
    prov = provenance_of(index, "05_dream_vs_dataset", names=[Path(r).name for r in table["run"]])
    dream, data = table["dream_best"], table["dataset_best"]
    won, compared = stats.wins(dream, data)         # a neuron never in distribution: a loss
    claim, limit = "sampled_neurons", f"CE <= {table['threshold'].iloc[0]:.2f}"
    return {
        "sampled.dream.median": entry(claim, f"median over neurons of the best dream with {limit}",
                                      "activation", prov, est=stats.estimate(dream, "median"),
                                      over="neurons"),
        "sampled.dataset.median": entry(claim, f"median over neurons of the best dataset window "
                                        f"with {limit}", "activation", prov,
                                        est=stats.estimate(data, "median"), over="neurons"),
        "sampled.dream_minus_dataset": entry(
            claim, f"best dream minus best dataset window, both with {limit} (mean over neurons)",
            "activation", prov, est=stats.estimate(dream - data), over="neurons",
            test=stats.paired(dream, data)),
        "sampled.wins": entry(claim, "neurons whose best in-distribution dream beats the dataset's",
                              "count", prov, value=won, statistic="count", n=compared,
                              over="neurons"),
        "sampled.wins.share": entry(claim, "share of neurons on which the dream wins", "share", prov,
                                    est=stats.proportion(won, compared), over="neurons"),
    }


def attribution(t: dict, index: pd.DataFrame) -> dict:
    """06 (Fig 4): which token carries each attributed prompt (largest drop when resampled)."""
    table = t.get("dataset_attribution")
    if table is None:
        return {}
    tops = table.loc[table.groupby("prompt")["max_drop"].idxmax()].sort_values("prompt")
    e = entry("attribution", "distinct tokens that carry an attributed prompt's activation", "count",
              provenance_of(index, "06_polysemantic_neuron", names=tops["run"].unique(),
                    files=["06_polysemantic_neuron/attribution.json"]),
              value=tops["token"].nunique(), statistic="count", n=len(tops), over="prompts")
    e["tokens"] = tops["token"].tolist()
    e["last_position"] = int((tops["position"] == table["position"].max()).sum())
    return {"attribution.top_tokens": e}


def _residual_means(d: pd.DataFrame, prov: dict) -> dict:
    out = {}
    for key, col, claim in (("dream", "dream_z", "residual"), ("dataset", "dataset_z", "residual"),
                            ("random", "random_z", "residual"),
                            ("dream_limited", "dream_limited_z", "residual_limited")):
        if col in d:
            out[f"residual.{key}.mean"] = entry(claim, f"mean over directions of the {key} alignment (z)",
                                                "z", prov, est=stats.estimate(d[col]), over="directions")
    pairs = (("dream", "dataset", "residual"), ("dataset", "random", "residual"),
             ("dream_limited", "dataset", "residual_limited"))
    for a, b, claim in pairs:
        if f"{a}_z" in d and f"{b}_z" in d:
            out[f"residual.{a}_minus_{b}"] = entry(
                claim, f"{a} minus {b} alignment, same directions (mean of differences)", "z",
                prov, est=stats.estimate(d[f"{a}_z"] - d[f"{b}_z"]), over="directions",
                test=stats.paired(d[f"{a}_z"], d[f"{b}_z"]))
    return out


def residual(t: dict, index: pd.DataFrame) -> dict:
    """07 (§3.5, Fig 5c-d, 5b, 6): alignment means with CIs, paired tests over directions, the
    slack curve, and per-layer dream alignment (first vs last layer: different directions)."""
    d = t.get("residual_directions")
    if d is None:
        return {}
    prov = provenance_of(index, "07_residual_directions",
                 files=["07_residual_directions/random_baseline.parquet"])
    out = _residual_means(d, prov)
    slack = t.get("residual_slack_runs")
    for s in SLACKS if slack is not None else ():
        g = slack[np.isclose(slack["slack"], s)]
        for col, unit in (("xentropy", "nats"), ("z", "z")):
            out[f"residual.slack{s}.{col}.mean"] = entry(
                "slack", f"chosen dream's {col} with {s} SD of slack, mean over directions", unit,
                prov, est=stats.estimate(g[col]), over="directions")
    if "dream_z" in d:
        layers = sorted(d["layer"].unique())
        for layer in layers:
            g = d[d["layer"] == layer]
            out[f"residual.layer{layer}.dream.mean"] = entry(
                "layers", f"mean dream alignment (z) at layer {layer}", "z",
                provenance_of(index, "07_residual_directions", targets=g["target"]),
                est=stats.estimate(g["dream_z"]), over="directions")
        first, last = d[d["layer"] == layers[0]], d[d["layer"] == layers[-1]]
        if len(layers) > 1:
            out["residual.last_minus_first_layer"] = entry(
                "layers", f"dream alignment, layer {layers[-1]} vs layer {layers[0]}", "z", prov,
                value=last["dream_z"].median() - first["dream_z"].median(),
                statistic="difference of medians", n=len(first) + len(last), over="directions",
                test=stats.unpaired(last["dream_z"], first["dream_z"]))
    return out


CLAIMS = (fluency, logits, six_neurons, seeds, growth, restarts, dream_vs_dataset, sampled_neurons,
          attribution, residual, sae_latents.claims, operators.claims)


def build(tables: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """{key: entry} for every claim whose tables exist (`runs` comes from units.py)."""
    index = tables.get("runs", pd.DataFrame())
    out: dict[str, dict] = {}
    for claim in CLAIMS:
        out.update(claim(tables, index))
    return out


def document(numbers: dict[str, dict], preset: str) -> dict:
    """numbers.json's whole content: the schema header around the entries."""
    return dict(schema=SCHEMA, schema_version=SCHEMA_VERSION, preset=preset,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), **git_info(),
                confidence=stats.CONFIDENCE, off_below=OFF,
                bootstrap=dict(resamples=stats.RESAMPLES, seed=stats.SEED, method="percentile"),
                numbers=numbers)


def flat(numbers: dict[str, dict]) -> pd.DataFrame:
    """numbers as one tidy table (tables/numbers.csv): a row per key, the test's fields inlined."""
    rows = []
    for key, e in numbers.items():
        test = e["test"] or {}
        rows.append(dict(key=key, claim=e["claim"], label=e["label"], value=e["value"],
                         unit=e["unit"], statistic=e["statistic"], n=e["n"], over=e["over"],
                         ci_low=(e["ci"] or [None, None])[0], ci_high=(e["ci"] or [None, None])[1],
                         test=test.get("name"), p=test.get("p"), effect_name=test.get("effect_name"),
                         effect=test.get("effect"), difference=test.get("difference"),
                         runs=e["runs"]))
    return pd.DataFrame(rows)
