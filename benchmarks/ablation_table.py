"""The tables of benchmarks/ablation.py, pure functions of its judged runs (rows: one per arm,
target and seed, with the judged hypervolume curve and the clocks): per target, each arm at equal
iterations and at equal CPU time against the reference and the defaults; over all targets at once,
each arm against the defaults. Definitions: the docstring of benchmarks/ablation.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ablation_arms import ARMS
from analysis import stats


def made_at(rows: list[dict]) -> dict[str, list[str]]:
    """Per arm, the fluentdream commits its saved runs were made at (a run keeps its own)."""
    out: dict[str, set] = {}
    for r in rows:
        out.setdefault(r["arm"], set()).add(r.get("made_at") or "?")
    return {arm: sorted(shas) for arm, shas in out.items()}


def at_compute(row: dict, seconds: float) -> float:
    """The run's judged hypervolume at the last iteration its CPU clock reached by `seconds`
    (0 before its first iteration ends)."""
    done = np.flatnonzero(np.asarray(row["cpu_clock"]) <= seconds)
    return row["curve"][done[-1]] if len(done) else 0.0


def at_equal_iterations(rows: list[dict]) -> dict[str, tuple[int, dict[tuple[str, int], float]]]:
    """Per target: the equal iterations (those of that target's shortest run) and each
    (arm, seed)'s judged hypervolume there."""
    out: dict[str, tuple] = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        n_eq = min(len(r["curve"]) for r in mine)
        out[target] = n_eq, {(r["arm"], r["seed"]): r["curve"][n_eq - 1] for r in mine}
    return out


def summarize(rows: list[dict]) -> dict:
    """Per target and arm: the hypervolume at equal iterations and at equal compute with the
    reference, their tests against the reference and against the defaults (module docstring)."""
    out: dict = {}
    for target, (n_eq, value) in at_equal_iterations(rows).items():
        mine = [r for r in rows if r["target"] == target]
        by_arm = {a: sorted([r for r in mine if r["arm"] == a], key=lambda r: r["seed"])
                  for a in dict.fromkeys(r["arm"] for r in mine)}
        final = {a: np.array([value[a, r["seed"]] for r in rs]) for a, rs in by_arm.items()}
        cpu = {a: float(np.median([r["cpu_clock"][-1] for r in rs])) for a, rs in by_arm.items()}
        out[target] = {}
        for arm, rs in by_arm.items():
            entry = dict(runs=len(rs), mean=float(final[arm].mean()),
                         sd=float(final[arm].std(ddof=1)) if len(rs) > 1 else 0.0,
                         iterations=n_eq, cpu_seconds=cpu[arm],
                         seconds_per_iteration=cpu[arm] / len(rs[0]["curve"]))
            if arm != "reference" and "reference" in by_arm:
                budget = min(cpu[arm], cpu["reference"])
                ours = np.array([at_compute(r, budget) for r in rs])
                theirs = np.array([at_compute(r, budget) for r in by_arm["reference"]])
                entry["vs_reference"] = stats.unpaired(final[arm], final["reference"]).to_dict()
                entry["equal_compute"] = dict(seconds=budget, mean=float(ours.mean()),
                                              reference_mean=float(theirs.mean()),
                                              test=stats.unpaired(ours, theirs).to_dict())
            if arm not in ("defaults", "reference") and "defaults" in by_arm:
                seeds = [r["seed"] for r in rs]
                if all(("defaults", s) in value for s in seeds):
                    entry["vs_defaults"] = stats.paired(
                        final[arm], [value["defaults", s] for s in seeds]).to_dict()
            out[target][arm] = entry
    return out


def across_targets(rows: list[dict]) -> dict:
    """Per arm other than the reference and the defaults: the arm against the defaults on every
    target at once, at each target's equal iterations, seeds paired within a target
    (stats.stratified_signed_rank, exact), with Holm's adjustment over the arms tested."""
    diffs: dict[str, list[np.ndarray]] = {}
    for _, value in at_equal_iterations(rows).values():
        for arm in dict.fromkeys(a for a, _ in value if a not in ("reference", "defaults")):
            seeds = sorted(s for a, s in value if a == arm and ("defaults", s) in value)
            diffs.setdefault(arm, []).append(
                np.array([value[arm, s] - value["defaults", s] for s in seeds]))
    out = {}
    for arm, strata in diffs.items():
        s, n, p = stats.stratified_signed_rank(strata)
        d = np.concatenate(strata)
        out[arm] = dict(targets=len(strata), pairs=len(d), wins=int((d > 0).sum()),
                        statistic=s, nonzero=n, p=p)
    for arm, adjusted in zip(out, stats.holm([e["p"] for e in out.values()])):
        out[arm]["holm_p"] = adjusted
    return out


def across_markdown(across: dict | None) -> str:
    if not across:
        return ""
    lines = ["", "**All targets at once**: each arm against the defaults, seeds paired within a "
             "target (signed ranks within a target, summed; exact two-sided p over every sign "
             "flip; Holm's adjustment over the arms in this table)", "",
             "| arm | pairs where the arm is higher | signed-rank sum | p | Holm p |",
             "|---|---|---|---|---|"]
    lines += [f"| {arm} | {e['wins']} of {e['pairs']} | {e['statistic']:+.1f} | {e['p']:.2g} | "
              f"{e['holm_p']:.2g} |" for arm, e in across.items()]
    return "\n".join(lines) + "\n"


def _p(test: dict | None) -> str:
    return "—" if test is None else f"{test['difference']:+.2f}, p = {test['p']:.2g}"


def markdown(summary: dict, meta: dict) -> str:
    """One table per target: an arm a row."""
    lines = []
    for target, arms in summary.items():
        ref_iters = meta.get("reference_iters") or meta["iters"]
        runs = (f"{meta['iters']} iterations" if ref_iters == meta["iters"] else
                f"the reference {ref_iters} iterations, the other arms {meta['iters']}; the "
                f"hypervolume columns at {ref_iters}")
        lines += [f"**{target}** ({runs}, seeds 0..{meta['seeds'] - 1}; n = the "
                  "runs an arm has saved)", "",
                  "| arm | what differs from the defaults | hypervolume, mean ± SD (n) | vs the "
                  "reference: difference of medians, Mann-Whitney p | vs the defaults: median "
                  "paired difference, Wilcoxon p | at equal compute: arm vs reference (CPU s) "
                  "| CPU s / iteration |", "|---|---|---|---|---|---|---|"]
        for arm, e in arms.items():
            eq = e.get("equal_compute")
            eq_text = (f"{eq['mean']:.1f} vs {eq['reference_mean']:.1f} ({eq['seconds']:.0f} s; "
                       f"p = {eq['test']['p']:.2g})" if eq else "—")
            lines.append(f"| {arm} | {ARMS[arm]} | {e['mean']:.1f} ± {e['sd']:.1f} ({e['runs']}) "
                         f"| {_p(e.get('vs_reference'))} | {_p(e.get('vs_defaults'))} | {eq_text} "
                         f"| {e['seconds_per_iteration']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def merged(results: list[dict], paths: list[Path]) -> dict:
    """One result of several --json files' judged runs: one file as it is (older files gain the
    all-targets test); several re-summarized together, their commands kept in order."""
    if len(results) == 1:
        return dict(results[0], across_targets=results[0].get("across_targets")
                    or across_targets(results[0]["runs"]))
    rows = [r for res in results for r in res["runs"]]
    metas = [res["meta"] for res in results]
    meta = dict(metas[0], made_at=made_at(rows),
                command="; ".join(dict.fromkeys(m["command"] for m in metas)) + "; then "
                "python benchmarks/ablation.py --from-json " + " ".join(map(str, paths)),
                targets=list(dict.fromkeys(t for m in metas for t in m["targets"])),
                arms=list(dict.fromkeys(a for m in metas for a in m["arms"])),
                fluentdream_sha=", ".join(dict.fromkeys(m["fluentdream_sha"] for m in metas)))
    return dict(meta=meta, summary=summarize(rows), across_targets=across_targets(rows), runs=rows)
