"""Benchmark table: how soon one run of an ablation arm reaches the reference code's frontier, in
CPU seconds of its one-thread process, from the runs benchmarks/ablation.py saved and judged.

    python benchmarks/ablation_latency.py results/ablation/smollm2.json --report BENCHMARKS.md

A pure function of the ablation's JSON: nothing runs. Per target, the goal is the lower median of
the reference runs' judged hypervolumes after the ablation's iterations (judge.reference_goal,
as time_to_quality.py sets it); each run's time is its CPU clock at the first iteration whose
judged curve reaches it (judge.first_reaching: a scan), infinity when it never does. The
statistics are time_to_quality's (benchmarks/ttq_table.py: exact Mann-Whitney tests, the exact
interval of the ratio of times, runs that never reach counted).

Why CPU seconds: every ablation run is one process on one thread, and the ablation may run
shards side by side, so wall time would measure the neighbours; a one-thread process's CPU clock
is what it would have waited on an idle core, up to what sharing caches and memory bandwidth
costs (both sides alike). It is one user's single run, one thread; time_to_quality.py measures
the same question on 2 threads in wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import ttq_table
from judge import first_reaching, reference_goal
from sections import replace_section

SECTION = "## Single runs to the reference's frontier in CPU seconds (ablation runs)"


def latency_rows(runs: list[dict], arm: str) -> list[dict]:
    """The ablation's judged runs of `arm` and of the reference -> time_to_quality's rows."""
    rows = []
    for target in dict.fromkeys(r["target"] for r in runs):
        theirs = [r for r in runs if r["target"] == target and r["arm"] == "reference"]
        if not theirs:
            continue
        goal = reference_goal([r["curve"][-1] for r in theirs])
        for r in theirs + [r for r in runs if r["target"] == target and r["arm"] == arm]:
            hit = first_reaching(np.asarray(r["curve"]), goal)
            rows.append(dict(target=target, seed=r["seed"], goal=goal,
                             implementation="reference" if r["arm"] == "reference" else "fluentdream",
                             seconds_to_goal=None if hit is None else r["cpu_clock"][hit - 1],
                             hypervolume=r["curve"][-1], total_seconds=r["cpu_clock"][-1],
                             iterations_run=len(r["curve"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="a results file of benchmarks/ablation.py")
    ap.add_argument("--arm", default="defaults", help="the arm raced against the reference "
                    "(default: %(default)s)")
    ap.add_argument("--report", metavar="MD", help=f"also write it as the '{SECTION}: MODEL' "
                    "section of this markdown file")
    args = ap.parse_args(argv)
    if not args.json.is_file():
        print(f"error: {args.json} is not a file; give a --json that ablation.py wrote",
              file=sys.stderr)
        return 2
    result = json.loads(args.json.read_text())
    meta, rows = result["meta"], latency_rows(result["runs"], args.arm)
    if not rows or args.arm not in {r["arm"] for r in result["runs"]}:
        print(f"error: {args.json} holds no runs of both the reference and the arm {args.arm!r}",
              file=sys.stderr)
        return 2
    table = ttq_table.markdown(ttq_table.summarize(rows), meta.get("reference_iters") or meta["iters"]).replace(
        "median s", "median CPU s").replace("fluentdream:", f"fluentdream ({args.arm}):")
    print(table)
    if args.report:
        body = (f"{SECTION}: {meta['model']}\n\n`python benchmarks/ablation_latency.py "
                f"{args.json} --arm {args.arm}` from `{meta['command']}` (on {meta['cpu']}; "
                f"fluentdream {meta['fluentdream_sha']}, reference {meta['reference_sha']}). "
                "Definitions: the docstring of benchmarks/ablation_latency.py.\n\n" + table + "\n")
        replace_section(Path(args.report), f"{SECTION}: {meta['model']}\n", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
