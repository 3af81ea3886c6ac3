"""Dreams of SAE latents (experiment 10: paper §3.3-3.4 for SAE features, §4) -> tidy tables.

    from analysis import sae_latents
    t = sae_latents.tables(Path("results/embedded"))
    t["sae_latents"]    # one row per (latent, seed): dream vs dataset, post run vs pre run
    t["sae_families"]   # one row per run: trigger families of the top dreams, latents and neurons

Every comparison is under the in-distribution CE limit that experiment 10 wrote (05's: mean +
2 SD of 12-token corpus slices), CE <= limit as in analysis/dataset.py's sampled-neuron table:
  dream_best     the best candidate of the latent's own (post-activation) run
  dataset_best   the best of the latent's mined windows, each re-scored alone as 12 tokens
  pre_best_post  the best post-activation value among the candidates of the run that optimized
                 the latent's pre-activation (10's pre_post.parquet; exact, see the experiment)
Missing results give missing tables, never an error.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import dataset, stats
from .entries import entry, provenance_of

EXP = "10_sae_latents"


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def latent_rows(exp_dir: Path, limit: float) -> pd.DataFrame:
    """One row per post-activation run of a sampled latent (see the module docstring)."""
    examples = pd.read_parquet(exp_dir / "mining" / "examples.parquet",
                               columns=["target", "activation", "window_activation",
                                        "window_xentropy"])
    pre = pd.read_parquet(exp_dir / "pre_post.parquet")
    rows = []
    for d in dataset.run_dirs(exp_dir):
        config = _read(d / "config.json")
        target = config["target"]
        if not target.startswith("sae:") or target.endswith(":pre"):
            continue
        ex = examples[examples["target"] == target]
        ds, ds_ce = dataset.best_below(ex["window_activation"].to_numpy(float),
                                       ex["window_xentropy"].to_numpy(float), limit)
        c = dataset.candidates(d)
        dr, dr_ce = dataset.best_below(c["target"].to_numpy(), c["xentropy"].to_numpy(), limit)
        p = pre[(pre["target"] == target) & (pre["seed"] == config["seed"])]
        pb, pb_ce = ((p["best_post"].iloc[0], p["best_post_ce"].iloc[0]) if len(p)
                     else (np.nan, np.nan))
        rows.append(dict(latent=int(target.rsplit(":", 1)[1]), target=target, seed=config["seed"],
                         threshold=limit, run=d.relative_to(exp_dir.parent).as_posix(),
                         pre_run=f"{EXP}/runs/{p['run'].iloc[0]}" if len(p) else None,
                         dataset_best=ds, dataset_best_ce=ds_ce,
                         dataset_in_context=float(ex["activation"].max()) if len(ex) else np.nan,
                         dream_best=dr, dream_best_ce=dr_ce, dream_minus_dataset=dr - ds,
                         dream_wins=bool(dr > ds), pre_best_post=pb, pre_best_post_ce=pb_ce,
                         pre_minus_post=pb - dr))
    return pd.DataFrame(rows)


def family_rows(exp_dir: Path) -> pd.DataFrame:
    """10's families.parquet with each run's path under the preset directory."""
    fam = pd.read_parquet(exp_dir / "families.parquet")
    where = {d.name: d.relative_to(exp_dir.parent).as_posix()
             for exp in (exp_dir, exp_dir.parent / "05_dream_vs_dataset")
             for d in dataset.run_dirs(exp)}
    return fam.assign(path=[where.get(r) for r in fam["run"]])


def claims(t: dict, index: pd.DataFrame) -> dict:
    """10 (beyond the paper, §4): per sampled latent, the best in-distribution dream against the
    best in-distribution dataset window (paired over latents), the best post value reached by
    optimizing the pre-activation vs the latent itself (paired), and trigger families, latents vs
    neurons (unpaired)."""
    out, lat, fam = {}, t.get("sae_latents"), t.get("sae_families")
    if lat is not None:
        prov = provenance_of(index, EXP, targets=lat["target"])
        both = provenance_of(index, EXP,
                             targets=list(lat["target"]) + [x + ":pre" for x in lat["target"]])
        limit = f"CE <= {lat['threshold'].iloc[0]:.2f}"
        won, compared = stats.wins(lat["dream_best"], lat["dataset_best"])   # unreached: a loss
        out["sae.dream_wins"] = entry(
            "sae_latents", f"latents whose best dream with {limit} beats their best dataset window",
            "count", prov, value=won, statistic="count", n=compared, over="latents")
        out["sae.dream_wins.share"] = entry(
            "sae_latents", "share of latents on which the dream wins", "share", prov,
            est=stats.proportion(won, compared), over="latents")
        out["sae.dream_minus_dataset"] = entry(
            "sae_latents", f"best dream minus best dataset window, both with {limit} (mean over "
            "latents)", "activation", prov, over="latents",
            est=stats.estimate(lat["dream_best"] - lat["dataset_best"]),
            test=stats.paired(lat["dream_best"], lat["dataset_best"]))
        for key, col, claim, p in (("dream", "dream_best", "sae_latents", prov),
                                   ("dataset", "dataset_best", "sae_latents", prov),
                                   ("pre", "pre_best_post", "sae_pre_post", both)):
            out[f"sae.{key}.median"] = entry(claim, f"median over latents of {col} ({limit})",
                                             "activation", p, over="latents", values=lat[col],
                                             est=stats.estimate(lat[col], "median"))
        out["sae.pre_minus_post"] = entry(
            "sae_pre_post", f"best post value with {limit}, optimizing the pre-activation minus "
            "optimizing the latent, equal iterations (mean over latents)", "activation", both,
            est=stats.estimate(lat["pre_best_post"] - lat["dream_best"]), over="latents",
            test=stats.paired(lat["pre_best_post"], lat["dream_best"]))
    if fam is not None:
        prov = provenance_of(index, (EXP, "05_dream_vs_dataset"), names=fam["run"])
        x = {kind: fam.loc[fam["kind"] == kind, "families"] for kind in ("latent", "neuron")}
        for kind, values in x.items():
            out[f"sae.families.{kind}.median"] = entry(
                "sae_families", f"median over {kind}s of the trigger families of the top dreams",
                "count", prov, est=stats.estimate(values, "median"), over=f"{kind}s", values=values)
        if x["latent"].notna().any() and x["neuron"].notna().any():
            out["sae.families.latent_minus_neuron"] = entry(
                "sae_families", "trigger families, latents vs neurons", "count", prov,
                value=x["latent"].median() - x["neuron"].median(),
                statistic="difference of medians",
                n=int(x["latent"].notna().sum() + x["neuron"].notna().sum()), over="runs",
                test=stats.unpaired(x["latent"], x["neuron"]))
    return out


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    """sae_latents and sae_families, as far as experiment 10's results exist."""
    exp_dir = Path(preset_dir) / EXP
    needed = ("threshold.json", "pre_post.parquet", "families.parquet", "mining/examples.parquet")
    if not all((exp_dir / name).exists() for name in needed):
        return {}
    limit = _read(exp_dir / "threshold.json")["threshold"]
    out = {"sae_latents": latent_rows(exp_dir, limit), "sae_families": family_rows(exp_dir)}
    return {name: df for name, df in out.items() if len(df)}
