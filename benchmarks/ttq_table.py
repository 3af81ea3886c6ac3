"""The time-to-quality table (benchmarks/time_to_quality.py): per target the ratio of median times
to the reference's goal with a bootstrap interval over seeds, the "all targets" geometric mean, and
the markdown table and BENCHMARKS.md section that show them. Pure functions of the rows the
benchmark measured, so `--from-json` rebuilds the table without running anything."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from run import replace_section

SECTION = "## Time to quality against the reference implementation"


def _times(rows: list[dict], impl: str) -> np.ndarray:
    """(S,) seconds to the goal of one implementation's runs, inf where never reached."""
    return np.array([r["seconds_to_goal"] if r["seconds_to_goal"] is not None else np.inf
                     for r in rows if r["implementation"] == impl], float)


def speedup(rows: list[dict], seed: int = 0) -> dict:
    """Median time to the goal, reference / fluentdream, with a bootstrap interval over seeds."""
    theirs, ours = _times(rows, "reference"), _times(rows, "fluentdream")
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):     # a median may be inf (never reached)
        boot = (np.median(rng.choice(theirs, (10_000, len(theirs))), 1)
                / np.median(rng.choice(ours, (10_000, len(ours))), 1))           # inf/inf -> nan
        ratio = np.median(theirs) / np.median(ours)
    ci = np.nanquantile(boot, [0.025, 0.975], method="inverted_cdf")     # no interpolating infs
    return dict(ratio=float(ratio), ci=[float(x) for x in ci],
                reference_median_s=float(np.median(theirs)),
                fluentdream_median_s=float(np.median(ours)),
                reached={impl: int(np.isfinite(_times(rows, impl)).sum())
                         for impl in ("reference", "fluentdream")},
                runs={"reference": len(theirs), "fluentdream": len(ours)},
                **{key: {impl: _median(rows, impl, get) for impl in ("reference", "fluentdream")}
                   for key, get in (("hypervolume", lambda r: r["hypervolume"]),
                                    ("seconds_per_iteration",
                                     lambda r: r["total_seconds"] / r["iterations_run"]))})


def _median(rows: list[dict], impl: str, get) -> float:
    """Median of get(row) over one implementation's rows (nan where a row lacks the fields)."""
    try:
        return float(np.median([get(r) for r in rows if r["implementation"] == impl]))
    except KeyError:                                   # a results file from before the field
        return float("nan")


def summarize(rows: list[dict]) -> dict:
    """Per target: the speed-up; "all": geometric mean of the finite per-target ratios."""
    out = {name: speedup([r for r in rows if r["target"] == name])
           for name in dict.fromkeys(r["target"] for r in rows)}
    ratios = [s["ratio"] for s in out.values() if np.isfinite(s["ratio"]) and s["ratio"] > 0]
    out["all"] = dict(geometric_mean=(float(np.exp(np.mean(np.log(ratios)))) if ratios
                                      else float("nan")),
                      targets=len(ratios))
    return out


def markdown(summary: dict, iters: int) -> str:
    lines = [f"| target | reference: median s to its {iters}-iteration (lower) median hypervolume "
             "| fluentdream: median s to the same | speed-up [95% CI] | runs reaching it "
             "(reference, fluentdream) | median hypervolume at the runs' end (reference, "
             "fluentdream) | median s per iteration (reference, fluentdream) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        if name == "all":
            continue
        ratio = (f"{s['ratio']:.2f}x" if np.isfinite(s["fluentdream_median_s"]) else
                 "none: fluentdream's median run never reaches it")
        lines.append(f"| {name} | {s['reference_median_s']:.1f} | {s['fluentdream_median_s']:.1f} "
                     f"| {ratio} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] "
                     f"| {s['reached']['reference']} of {s['runs']['reference']}, "
                     f"{s['reached']['fluentdream']} of {s['runs']['fluentdream']} "
                     f"| {s['hypervolume']['reference']:.2f}, "
                     f"{s['hypervolume']['fluentdream']:.2f} "
                     f"| {s['seconds_per_iteration']['reference']:.3f}, "
                     f"{s['seconds_per_iteration']['fluentdream']:.3f} |")
    a = summary["all"]
    n = len(summary) - 1
    lines.append(f"| all targets | | | {a['geometric_mean']:.2f}x: the geometric mean over the "
                 f"{a['targets']} of {n} target(s) with a finite speed-up | | | |" if a["targets"]
                 else f"| all targets | | | none: no target of {n} has a finite speed-up | | | |")
    return "\n".join(lines)


def options_text(options: dict) -> str:
    """'restart_mode=frontier, operators=swap=0.5+insert=0.25' -> a heading's and a file's tag."""
    return ", ".join(f"{k}=" + ("+".join(f"{n}={p:g}" for n, p in v.items())
                                if isinstance(v, dict) else str(v))
                     for k, v in options.items())


def splice_section(path: Path, result: dict) -> None:
    """Replace (or append) the model's SECTION in the markdown file at `path`: command, settings,
    table. Each model, CPU and setting has its own section."""
    meta = result["meta"]
    heading = f"{SECTION}: {meta['model_name']}"
    if meta.get("cpu"):                                  # a ratio on another CPU is another result
        heading += f" on {meta['cpu']}"
    if meta.get("reference_options"):                    # the reference off Table 1
        heading += f", the reference with {options_text(meta['reference_options'])}"
    if meta.get("fluentdream_options"):                  # a variant gets its own section
        heading += f", fluentdream with {options_text(meta['fluentdream_options'])}"
    stop = (f"; each fluentdream run stopped at the first multiple of {meta['stop_at_goal']} "
            "iterations that reached the goal" if meta.get("stop_at_goal") else "")
    body = (f"{heading}\n\n`{meta['command']}` ({meta['model']}, {meta['threads']} thread(s), "
            f"fluentdream in {meta['fluentdream_dtype']} with each target's "
            f"{len(meta['seeds'])} seeds batched, the reference in {meta['reference_dtype']} "
            f"with {len(meta['reference_seeds'])} seed(s){stop}; both judged in float32; "
            f"fluentdream {meta['fluentdream_sha']}, reference {meta['reference_sha']}). "
            "Definitions: the docstring of benchmarks/time_to_quality.py.\n\n"
            + markdown(result["summary"], meta["config"]["iters"]) + "\n")
    replace_section(path, heading + "\n", body)
