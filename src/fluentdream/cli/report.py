"""The `fluentdream report` command: saved runs -> a static site (DESIGN §7, docs/report.md).

    fluentdream report results/embedded__L1.N5__seed0 --out site
    fluentdream report results/embedded --mine results/embedded/05_dream_vs_dataset/mining \\
        --in-distribution results/embedded/01_fluency_calibration/thresholds.json --out site
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="pages of every target among finished runs: a static site "
                       "that opens offline (index.html and one page per target)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders "
                   "searched for them (runs of one target, model and context share a page)")
    p.add_argument("--mine", action="append", default=[], metavar="MINE_DIR", help="a folder "
                   "written by `fluentdream mine` (or an experiment's mining/): its examples go "
                   "beside the dreams; repeatable, the first holding a target is used")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the site: new, empty, "
                   "or a report made before (replaced whole)")
    p.add_argument("--in-distribution", default=None, metavar="CE|FILE", help="the "
                   "in-distribution CE limit marked on every page: a number, or a JSON file "
                   "holding in_distribution (experiment 01's thresholds.json) or threshold "
                   "[default: each run's frontier CE limit]")
    p.add_argument("--attribution-k", type=int, default=32, metavar="K", help="gradient "
                   "candidates swapped in per token for the attribution shading [default: 32]")
    p.add_argument("--no-model", action="store_true", help="do not load the runs' models: no "
                   "attribution, token shading or logit effects (the pages say so)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import report

    site = report(args.run_dirs, args.out, mine=args.mine, in_distribution=args.in_distribution,
                  model=not args.no_model, attribution_k=args.attribution_k,
                  progress=False if args.no_progress else None)
    for d, why in site.left_out:
        print(f"left out: {d}: {why}", file=sys.stderr)
    left = f" ({len(site.left_out)} runs left out)" if site.left_out else ""
    print(f"{len(site.pages)} target pages from {site.runs} runs{left}; open "
          f"{Path(site.index).resolve().as_uri()}")
    return 0


def report_command(run_dir: Path) -> str:
    """The command that reports one run beside it (`fluentdream dream` prints it)."""
    import shlex
    return shlex.join(["fluentdream", "report", str(run_dir), "--out",
                       str(Path(run_dir).parent / "report")])
