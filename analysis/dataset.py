"""Dreams vs max-activating dataset examples (paper §3.3-3.4; experiments 05 and 06) -> tidy tables.

    from analysis import dataset
    t = dataset.tables(Path("results/embedded"))
    t["dataset_summary"]      # one row per neuron role: best dream, best dataset example, the gap

"Matched CE" (the paper's "at CE ~4 dreams are 1-1.5 units higher"): the best dream candidate with
CE at most the best dataset example's CE, minus that example's activation. Dataset examples are
re-scored alone as 12-token windows (mining), so both sit on the same (CE, activation) axes.
Missing experiments give missing tables, never an error.

Dreams of several lengths (EPOConfig.operators insert/delete, issue 14): the windows stay scored
once, at the mining length (the dreams' seq_len), and every dream candidate is compared with them
whatever its length: CE is a mean per predicted token and the activation is read at the last
position, so both axes mean the same at any length. The tables say which length won
(`best_dream_length`). Re-scoring windows at each dream length would need the model in analysis;
a longer window gives the corpus more context, so this favours dreams longer than the window.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fluentdream import History
from fluentdream.runs import is_complete

BIN_WIDTH = 0.5
# role -> (experiments whose runs on the role's neuron count, key in neuron_choices.json); 04 dreams
# on the example neuron with many seeds, so its runs count for 05's comparison too.
ROLES = {"example": (("05_dream_vs_dataset", "04_seed_variance"), "example_neuron"),
         "polysemantic": (("06_polysemantic_neuron",), "polysemantic_neuron")}


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_dirs(exp_dir: Path, target: str | None = None, seed: int | None = None) -> list[Path]:
    """Finished runs under exp_dir/runs (05-07) or exp_dir itself (02-04), in name order; only
    those of `target` and `seed` if given (05 keeps several neurons' runs side by side)."""
    parent = exp_dir / "runs" if (exp_dir / "runs").is_dir() else exp_dir
    dirs = sorted(d for d in parent.glob("*") if is_complete(d))
    if target is None and seed is None:
        return dirs
    configs = [_read(d / "config.json") for d in dirs]
    return [d for d, c in zip(dirs, configs)
            if target in (None, c.get("target")) and seed in (None, c.get("seed"))]


def candidates(run_dir: Path) -> pd.DataFrame:
    """Every finite candidate of a run: target, xentropy, length (tokens)."""
    ids, f, ce = History.load(run_dir / "history.npz").candidates()
    return pd.DataFrame(dict(target=f.astype(float), xentropy=ce.astype(float),
                             length=(ids >= 0).sum(1)))


def best_per_bin(act: np.ndarray, ce: np.ndarray, width: float = BIN_WIDTH) -> pd.DataFrame:
    """Best activation in each CE bin [k w, (k+1) w): columns ce_bin (left edge), best, count."""
    df = pd.DataFrame(dict(act=act, bin=np.floor(ce / width) * width)).dropna()
    g = df.groupby("bin")["act"]
    return pd.DataFrame(dict(ce_bin=g.max().index, best=g.max().values, count=g.size().values))


def best_below(act: np.ndarray, ce: np.ndarray, limit: float) -> tuple[float, float]:
    """(activation, CE) of the best point with CE <= limit, or (nan, nan)."""
    ok = np.flatnonzero(ce <= limit)
    if len(ok) == 0:
        return float("nan"), float("nan")
    i = ok[np.argmax(act[ok])]
    return float(act[i]), float(ce[i])


def role_runs(preset_dir: Path, role: str, neuron: str) -> list[Path]:
    """Finished runs on `neuron` in every experiment of `role` (ROLES)."""
    return [d for exp in ROLES[role][0] for d in run_dirs(Path(preset_dir) / exp, neuron)]


def neuron_tables(role: str, neuron: str, dirs: list[Path], examples: pd.DataFrame,
                  limit: float) -> dict[str, pd.DataFrame]:
    """Frontiers, per-bin maxima and the summary row of one neuron's dreams (run directories
    `dirs`) vs its examples."""
    ex = examples[examples["target"] == neuron].sort_values("rank")
    fronts, cands = [], []
    for d in dirs:
        s, front = _read(d / "summary.json"), _read(d / "frontier.json")
        seed = _read(d / "config.json").get("seed")
        fronts.append(pd.DataFrame(front).assign(run=d.name, seed=seed, best_target=s["best_target"]))
        cands.append(candidates(d))
    out = {}
    d_act, d_ce = ex["window_activation"].to_numpy(float), ex["window_xentropy"].to_numpy(float)
    bins = [best_per_bin(d_act, d_ce).assign(source="dataset")]
    row = dict(role=role, neuron=neuron, threshold=limit, runs=len(dirs), dataset_examples=len(ex))
    i = int(np.argmax(d_act)) if len(ex) else None
    row.update(best_dataset=d_act[i] if i is not None else np.nan,
               best_dataset_ce=d_ce[i] if i is not None else np.nan,
               best_dataset_in_context=float(ex["activation"].max()) if len(ex) else np.nan)
    if fronts:
        front = pd.concat(fronts, ignore_index=True)
        front["best_run"] = front["run"] == front.loc[front["best_target"].idxmax(), "run"]
        out["frontiers"] = front.drop(columns=["ids", "lam"], errors="ignore")
        allc = pd.concat(cands, ignore_index=True)
        a, c = allc["target"].to_numpy(), allc["xentropy"].to_numpy()
        bins.append(best_per_bin(a, c).assign(source="dream"))
        j = int(np.argmax(a))
        row.update(best_dream=a[j], best_dream_ce=c[j],
                   best_dream_length=int(allc["length"].iloc[j]))
        row["best_dream_in_dist"], row["best_dream_in_dist_ce"] = best_below(a, c, limit)
        if i is not None:
            row["dream_at_dataset_ce"], row["dream_at_dataset_ce_ce"] = best_below(a, c, d_ce[i])
            row["dream_minus_dataset"] = row["dream_at_dataset_ce"] - d_act[i]
        row["best_dream_per_run"] = ";".join(f"{x['target'].max():.3f}" for x in cands)
    out["bins"] = pd.concat(bins, ignore_index=True).assign(role=role, neuron=neuron)
    out["examples"] = ex.drop(columns=["window_ids"]).assign(role=role)
    out["summary"] = pd.DataFrame([row])
    return out


def sampled_table(mined: Path, examples: pd.DataFrame, limit: float) -> pd.DataFrame | None:
    """One row per neuron of 05's sampled_neurons.json: its best corpus window and its best dream
    (the seed-0 run), each with CE <= limit (in distribution), and whether the dream wins."""
    path = mined / "sampled_neurons.json"
    if not path.exists():
        return None
    rows = []
    for neuron in _read(path)["neurons"]:
        dirs = run_dirs(mined, neuron, seed=0)
        if not dirs:
            continue
        ex = examples[examples["target"] == neuron]
        ds, ds_ce = best_below(ex["window_activation"].to_numpy(float),
                               ex["window_xentropy"].to_numpy(float), limit)
        c = candidates(dirs[0])
        dr, dr_ce = best_below(c["target"].to_numpy(), c["xentropy"].to_numpy(), limit)
        rows.append(dict(neuron=neuron, threshold=limit, run=str(dirs[0].relative_to(mined.parent)),
                         dataset_best=ds, dataset_best_ce=ds_ce,
                         dataset_in_context=float(ex["activation"].max()), dream_best=dr,
                         dream_best_ce=dr_ce, dream_minus_dataset=dr - ds, dream_wins=bool(dr > ds)))
    return pd.DataFrame(rows) if rows else None


def attribution_table(exp_dir: Path) -> pd.DataFrame | None:
    """One row per (prompt, position) of experiment 06's attribution.json."""
    path = exp_dir / "attribution.json"
    if not path.exists():
        return None
    doc, rows = _read(path), []
    for p, a in enumerate(doc["prompts"]):
        for pos, (tok, hi, lo) in enumerate(zip(a["tokens"], a["max_drop"], a["min_drop"])):
            rows.append(dict(prompt=p, position=pos, token=tok, max_drop=hi, min_drop=lo,
                             value=a["value"], xentropy=a["xentropy"], text=a["text"],
                             run=a["run"], target=doc["target"]))
    return pd.DataFrame(rows)


def tables(preset_dir: Path) -> dict[str, pd.DataFrame]:
    """dataset_{summary,bins,frontiers,examples,neuron_stats,sampled,attribution}, as far as
    results exist."""
    preset_dir = Path(preset_dir)
    mined = preset_dir / "05_dream_vs_dataset"
    if not (mined / "neuron_choices.json").exists() or not (mined / "mining" / "summary.json").exists():
        return {}
    choices = _read(mined / "neuron_choices.json")
    limit = _read(mined / "threshold.json")["threshold"]
    examples = pd.read_parquet(mined / "mining" / "examples.parquet")
    parts: dict[str, list[pd.DataFrame]] = {}
    for role, (exps, key) in ROLES.items():
        if any((preset_dir / exp).exists() for exp in exps) or role == "example":
            dirs = role_runs(preset_dir, role, choices[key])
            for name, df in neuron_tables(role, choices[key], dirs, examples, limit).items():
                parts.setdefault(name, []).append(df.assign(role=role))
    out = {f"dataset_{name}": pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}
    if (mined / "neuron_stats.parquet").exists():
        out["dataset_neuron_stats"] = pd.read_parquet(mined / "neuron_stats.parquet")
    sample = sampled_table(mined, examples, limit)
    if sample is not None:
        out["dataset_sampled"] = sample
    att = attribution_table(preset_dir / "06_polysemantic_neuron")
    if att is not None:
        out["dataset_attribution"] = att
    return out
