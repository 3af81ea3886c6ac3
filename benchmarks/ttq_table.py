"""The time-to-quality statistics and table (benchmarks/time_to_quality.py): pure functions of
the rows the benchmark measured, so `--from-json` rebuilds the table without running anything.

Per target, from each side's times to the goal (infinity for a run that never reaches it):
  speed-up  median time of the reference's runs / median time of fluentdream's (0 when
            fluentdream's median run never reaches the goal, infinity when the reference's
            never does; a target is never dropped);
  interval  the exact 95% interval of the ratio of times under a shift model on log time: the
            Mann-Whitney test inverted (Hodges-Lehmann), the order statistics of all pairwise
            log-time differences at the exact null distribution's critical value. Pairs where
            both runs never reach the goal count against the ratio at the lower end and for it
            at the upper end. With 3 + 3 runs no 95% interval exists (the smallest two-sided
            exact p is 0.1), and the interval says so: [0, inf];
  p         two-sided exact Mann-Whitney p of the times (ties, infinities included: by
            permutation), the test that the two sides are equally fast;
  p vs 3x   one-sided exact Mann-Whitney p that fluentdream's runs are more than 3x faster
            (the reference's times divided by 3 against fluentdream's).
All targets: the median of the per-target speed-ups (0 and infinity included) and how many
targets' intervals lie above 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats as sps

from sections import replace_section

SECTION = "## Time to quality against the reference implementation"
CONFIDENCE = 0.95
IMPLEMENTATIONS = ("reference", "fluentdream")


def times(rows: list[dict], impl: str) -> np.ndarray:
    """(S,) seconds to the goal of one implementation's runs, inf where never reached."""
    return np.array([r["seconds_to_goal"] if r["seconds_to_goal"] is not None else np.inf
                     for r in rows if r["implementation"] == impl], float)


def null_counts(m: int, n: int) -> np.ndarray:
    """(m n + 1,) number of the C(m + n, m) orderings of two untied samples of sizes m and n
    whose Mann-Whitney U (pairs with the first above the second) is 0, 1, ..., m n."""
    # ways[i][j]: counts of U for i and j items; the largest item belongs to one sample or the
    # other: from the first it beats all j others (U += j), from the second it adds nothing.
    ways = [[np.array([1], dtype=object) for _ in range(n + 1)] for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(n + 1):
            if i == 0 or j == 0:
                continue
            out = np.zeros(i * j + 1, dtype=object)
            a, b = ways[i - 1][j], ways[i][j - 1]
            out[j:j + len(a)] += a
            out[:len(b)] += b
            ways[i][j] = out
    return np.array([int(c) for c in ways[m][n]], dtype=float) if m and n else np.ones(1)


def ratio_interval(theirs: np.ndarray, ours: np.ndarray,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact interval of the ratio of times theirs / ours (module docstring)."""
    m, n = len(theirs), len(ours)
    counts = null_counts(m, n)
    cdf = np.cumsum(counts) / counts.sum()                  # P(U <= u)
    k = int(np.searchsorted(cdf, (1 - confidence) / 2, side="right"))   # P(U <= k - 1) <= a/2
    if k == 0:
        return 0.0, float("inf")
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.log(theirs)[:, None] - np.log(ours)[None, :]  # (m, n), inf - inf = nan
    both = np.isnan(d)
    low = np.sort(np.where(both, -np.inf, d).ravel())       # unknown pairs against the ratio
    high = np.sort(np.where(both, np.inf, d).ravel())       # ... and for it
    return float(np.exp(low[k - 1])), float(np.exp(high[m * n - k]))


def mann_whitney_p(x: np.ndarray, y: np.ndarray, alternative: str = "two-sided") -> float:
    """Exact Mann-Whitney p of x against y; with ties (infinities) by all relabellings."""
    pooled = np.concatenate([x, y])
    method = ("exact" if len(np.unique(pooled)) == len(pooled) else
              sps.PermutationMethod(n_resamples=100_000, rng=np.random.default_rng(0)))
    return float(sps.mannwhitneyu(x, y, alternative=alternative, method=method).pvalue)


def speedup(rows: list[dict]) -> dict:
    """One target's statistics (module docstring) and the medians they come from."""
    theirs, ours = times(rows, "reference"), times(rows, "fluentdream")
    med_theirs, med_ours = float(np.median(theirs)), float(np.median(ours))
    ratio = (float("nan") if np.isinf(med_theirs) and np.isinf(med_ours) else
             0.0 if np.isinf(med_ours) else med_theirs / med_ours)
    return dict(ratio=ratio, ci=list(ratio_interval(theirs, ours)),
                p=mann_whitney_p(theirs, ours),
                p_three=mann_whitney_p(theirs / 3.0, ours, alternative="greater"),
                reference_median_s=med_theirs, fluentdream_median_s=med_ours,
                reached={impl: int(np.isfinite(times(rows, impl)).sum()) for impl in IMPLEMENTATIONS},
                runs={impl: len(times(rows, impl)) for impl in IMPLEMENTATIONS},
                hypervolume={impl: float(np.median([r["hypervolume"] for r in rows
                                                    if r["implementation"] == impl]))
                             for impl in IMPLEMENTATIONS},
                seconds_per_iteration={impl: float(np.median(
                    [r["total_seconds"] / r["iterations_run"] for r in rows
                     if r["implementation"] == impl])) for impl in IMPLEMENTATIONS})


def summarize(rows: list[dict]) -> dict:
    """Per target: speedup(); "all": the median per-target speed-up and the count of targets
    whose interval lies above 1."""
    out = {name: speedup([r for r in rows if r["target"] == name])
           for name in dict.fromkeys(r["target"] for r in rows)}
    ratios = [s["ratio"] for s in out.values()]
    out["all"] = dict(median=float(np.median(ratios)) if ratios else float("nan"),
                      targets=len(ratios), above_one=sum(s["ci"][0] > 1 for s in out.values()))
    return out


# What every merged file must share: the measurement's settings. The commit may differ (each
# file names its own), and so may the targets, which must not repeat.
SAME_SETTINGS = ("model_name", "cpu", "threads", "fluentdream_dtype", "reference_dtype",
                 "stop_at_goal", "config", "reference_options", "fluentdream_options",
                 "reference_sha", "seeds", "reference_seeds", "torch")


def merge(results: list[dict]) -> dict:
    """Results files of one setting, each holding other targets (e.g. one target per session on
    a CPU too slow for all in one) -> one result. Each target's runs, both sides', come from one
    process, so each speed-up compares runs made side by side; ValueError names what differs."""
    first = results[0]["meta"]
    rows, seen = [], set()
    for result in results:
        meta = result["meta"]
        for key in SAME_SETTINGS:
            if meta.get(key) != first.get(key):
                raise ValueError(f"the files differ in {key}: {first.get(key)!r} vs "
                                 f"{meta.get(key)!r}; merge only runs of one setting")
        targets = {r["target"] for r in result["runs"]}
        if targets & seen:
            raise ValueError(f"target {sorted(targets & seen)[0]!r} is in two files; each "
                             "target's runs must come from one file")
        seen |= targets
        rows += result["runs"]
    shas = ", ".join(dict.fromkeys(r["meta"]["fluentdream_sha"] for r in results))
    meta = dict(first, command="`; `".join(r["meta"]["command"] for r in results),
                fluentdream_sha=shas)
    return dict(meta=meta, runs=rows, summary=summarize(rows))


def read_results(paths: list[str]) -> dict:
    """--from-json: one results file (its summary recomputed, once), or several of one setting
    merged; ValueError says which file is wrong and how."""
    docs = []
    for path in paths:
        try:
            docs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path!r} is not a results file of time_to_quality.py "
                             f"({type(err).__name__}: {err})") from None
    if len(docs) > 1 and any("runs" not in doc for doc in docs):
        raise ValueError("only main runs' files merge, not pilots: give one pilot file")
    try:
        if len(docs) > 1:
            return merge(docs)
        if "runs" in docs[0]:
            docs[0]["summary"] = summarize(docs[0]["runs"])
        return docs[0]
    except (KeyError, TypeError) as err:
        which = repr(paths[0]) if len(docs) == 1 else "one of the files"
        raise ValueError(f"{which} is not a results file of time_to_quality.py "
                         f"({type(err).__name__}: {err})") from None


def _x(v: float) -> str:
    return "never" if np.isinf(v) else f"{v:.1f}"


def markdown(summary: dict, iters: int) -> str:
    lines = [f"| target | reference: median s to its {iters}-iteration (lower) median hypervolume "
             "| fluentdream: median s to the same | speed-up [exact 95% CI] | p (equal speed) "
             "| p (> 3x) | runs reaching it (reference, fluentdream) | median hypervolume at the "
             "runs' end (reference, fluentdream) | median s per iteration (reference, "
             "fluentdream) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        if name == "all":
            continue
        lines.append(f"| {name} | {_x(s['reference_median_s'])} | {_x(s['fluentdream_median_s'])} "
                     f"| {s['ratio']:.2f}x [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] "
                     f"| {s['p']:.2g} | {s['p_three']:.2g} "
                     f"| {s['reached']['reference']} of {s['runs']['reference']}, "
                     f"{s['reached']['fluentdream']} of {s['runs']['fluentdream']} "
                     f"| {s['hypervolume']['reference']:.2f}, {s['hypervolume']['fluentdream']:.2f} "
                     f"| {s['seconds_per_iteration']['reference']:.3f}, "
                     f"{s['seconds_per_iteration']['fluentdream']:.3f} |")
    a = summary["all"]
    lines.append(f"| all targets | | | median {a['median']:.2f}x | | | {a['above_one']} of "
                 f"{a['targets']} target(s) with the interval above 1 | | |")
    return "\n".join(lines)


def pilot_markdown(result: dict, settings: dict[str, tuple[str, ...]]) -> str:
    """The pilot's table: per side and dtype setting (`settings`: side -> its settings), the
    median time to that side's goal, how many runs reach it, and which setting was chosen."""
    lines = ["| side | setting | median s to the side's goal | runs reaching it | median final "
             "hypervolume | median s per iteration | chosen |", "|---|---|---|---|---|---|---|"]
    for impl, options in settings.items():
        for setting in options:
            rs = [r for r in result["rows"] if r["implementation"] == impl and r["setting"] == setting]
            t = [r["seconds_to_goal"] if r["seconds_to_goal"] is not None else np.inf for r in rs]
            med = float(np.median(t))
            lines.append(f"| {impl} | {setting} | {'never' if np.isinf(med) else f'{med:.1f}'} "
                         f"| {sum(np.isfinite(t))} of {len(t)} "
                         f"| {np.median([r['hypervolume'] for r in rs]):.2f} "
                         f"| {np.median([r['total_seconds'] / r['iterations_run'] for r in rs]):.3f} "
                         f"| {'yes' if result['choice'][impl] == setting else ''} |")
    return "\n".join(lines)


def options_text(options: dict) -> str:
    """'restart_mode=frontier, operators=swap=0.5+insert=0.25' -> a heading's and a file's tag."""
    return ", ".join(f"{k}=" + ("+".join(f"{n}={p:g}" for n, p in v.items())
                                if isinstance(v, dict) else str(v))
                     for k, v in options.items())


def splice_section(path: Path, result: dict) -> None:
    """Replace (or append) this setting's SECTION in the markdown file at `path`: command,
    settings, table. Each model, CPU and setting has its own section."""
    meta = result["meta"]
    heading = f"{SECTION}: {meta['model_name']} on {meta['cpu']}, one run at a time"
    if meta.get("reference_options"):                    # the reference off Table 1
        heading += f", the reference with {options_text(meta['reference_options'])}"
    if meta.get("fluentdream_options"):                  # a variant gets its own section
        heading += f", fluentdream with {options_text(meta['fluentdream_options'])}"
    stop = (f"; each fluentdream run stopped at the first multiple of {meta['stop_at_goal']} "
            "iterations that reached the goal" if meta.get("stop_at_goal") else "")
    body = (f"{heading}\n\n`{meta['command']}` ({meta['model']}, {meta['threads']} thread(s), "
            f"one seed per run and one run at a time on each side: fluentdream in "
            f"{meta['fluentdream_dtype']}, {len(meta['seeds'])} seeds; the reference in "
            f"{meta['reference_dtype']}, {len(meta['reference_seeds'])} seeds{stop}; both "
            f"judged in float32; fluentdream {meta['fluentdream_sha']}, reference "
            f"{meta['reference_sha']}). Definitions: the docstrings of "
            "benchmarks/time_to_quality.py and benchmarks/ttq_table.py.\n\n"
            + markdown(result["summary"], meta["config"]["iters"]) + "\n")
    replace_section(path, heading + "\n", body)
