"""Benchmark: what costs fluentdream frontier on a real model (issue 35). The reference code, and
fluentdream with one difference at a time switched to the reference's behaviour, at the paper's
settings (Table 1), judged alike (benchmarks/judge.py: one fp32 scorer with fluentdream's rules).

    git clone https://github.com/Confirm-Solutions/dreamy /tmp/dreamy      # never vendored here
    python benchmarks/ablation.py --reference /tmp/dreamy --model smollm2-135m \
        --target L8.N1371 --target "logit: dog" --seeds 8 --iters 40 --threads 2 \
        --report BENCHMARKS.md --check         # every arm, then the tables and the parity check
    python benchmarks/ablation.py --judge ...  # judge and tabulate the saved runs only

Every (arm, target, seed) is one run, saved as a History under --runs (resumable: a saved run is
not run again; --shard I/N splits what is left between processes), with its wall and CPU clock
at the end of every iteration. --reference-iters N runs and judges the reference at N
iterations and the other arms at --iters; a saved run of another arm shorter than --iters is
continued from its saved state (the same trajectory as one long run; its clocks go on from
where they stopped), so fluentdream can be given the CPU time of the reference's runs. Arms
(benchmarks/ablation_arms.py): the reference as published (fp32; its search knows no
retokenization rule, the goal text stays banned); fluentdream at its defaults; and the defaults
with exactly one change, made in this process only, never in the library.

Measured per run: the judged hypervolume after the reference's last iteration (equal
iterations), and after
the compute both sides spend: the smaller of the two medians of total process CPU seconds at
--iters, each run credited with its curve at the last iteration its CPU clock had reached by then
(equal compute: CPU seconds, unlike wall time, barely move with other load on the machine). Per
arm and target: mean and SD over seeds; against the reference a two-sided exact Mann-Whitney test
(unpaired: the two codes draw different random streams); against the defaults an exact Wilcoxon
signed-rank test paired by seed (a blocking by seed only: arms that draw their initial prompts
differently start from different prompts), and over all targets at once a signed-rank test
with ranks within each target (exact; Holm's adjustment over the arms). --check exits 1 when
the defaults fall short of the reference on a target: `make bench` runs it on both models.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import fluentdream as fd
from fluentdream.core import batched
from fluentdream.core.scoring import Scorer
from fluentdream.models.hardware import cpu_name
from fluentdream.files import atomic_write
from fluentdream.runs import slug

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
import reference as ref  # noqa: E402
from judge import Judge  # noqa: E402
from ablation_arms import ARMS, NoLabelScorer, arm_config, patched  # noqa: E402
from sections import replace_section  # noqa: E402
from ablation_table import (across_markdown, across_targets, made_at, markdown,  # noqa: E402
                            merged, summarize)

def run_one(arm: str, lm, spec: str, cfg: fd.EPOConfig, module,
            resume: fd.History | None = None) -> fd.History:
    """One run of `arm`, with its clocks (wall, CPU) at the end of every iteration in meta;
    resume: a saved shorter run of a fluentdream arm, continued to cfg.iters (clocks go on)."""
    target = fd.parse_target(spec, lm)
    cfg = arm_config(arm, cfg)
    before = (0.0, 0.0) if resume is None else (resume.meta["wall_clock"][-1],
                                                resume.meta["cpu_clock"][-1])
    t0 = (time.perf_counter() - before[0], time.process_time() - before[1])
    if arm == "reference":
        stamps: list = []
        raw, _ = ref.run_reference(module, lm, target, cfg, stamps)
        hist = ref.to_history(raw, cfg.lambdas, Scorer(lm, target, retokenize=False))
        ends = stamps[2:]
    else:
        ends = []
        scorer = (NoLabelScorer if arm == "no-label-term" else Scorer)(
            lm, target, retokenize=cfg.retokenize)
        with patched(arm, lm):
            hist, = batched.epo_many(lm, [(target, cfg)], scorer=scorer, callback=lambda i, r: ends.append(
                (time.perf_counter(), time.process_time())), resume=[resume])
    old = {} if resume is None else {k: list(resume.meta[k]) for k in ("wall_clock", "cpu_clock")}
    hist.meta.update(arm=arm, target=spec, seed=cfg.seed, dtype=str(lm.dtype),
                     wall_clock=old.get("wall_clock", []) + [w - t0[0] for w, _ in ends],
                     cpu_clock=old.get("cpu_clock", []) + [c - t0[1] for _, c in ends])
    return hist


def run_path(runs: Path, arm: str, spec: str, seed: int) -> Path:
    return runs / arm / slug(spec) / f"seed{seed}.npz"


def saved_iterations(path: Path) -> int:
    return fd.History.load(path).n_iters if path.exists() else 0


def run_all(args, module) -> None:
    """Every (arm, target, seed) of this shard not saved yet, or saved shorter than its arm's
    iterations (continued), loading each dtype's model once."""
    todo = [(a, t, s) for s in range(args.seeds) for t in args.targets for a in args.arms
            if saved_iterations(run_path(args.runs, a, t, s)) < iterations(args, a)]
    # every arm's first seeds first
    shard, shards = args.shard
    todo = todo[shard::shards]
    models: dict[str, object] = {}
    for i, (arm, spec, seed) in enumerate(todo):
        dtype = "float32" if arm in ("reference", "fp32") else fd.fast_dtype("cpu")
        if dtype not in models:
            models[dtype] = fd.load_model(args.model, dtype=dtype)
        path = run_path(args.runs, arm, spec, seed)
        if arm == "reference" and path.exists():
            raise fd.UserError(f"{path} holds a reference run shorter than {iterations(args, arm)} "
                               "iterations; the reference cannot be continued: remove it")
        cfg = fd.EPOConfig(iters=iterations(args, arm), seed=seed)
        hist = run_one(arm, models[dtype], spec, cfg, module,
                       resume=fd.History.load(path) if path.exists() else None)
        sha = ref.checkout_sha(ROOT)
        if "fluentdream_sha" in hist.meta:                  # continued: it keeps where it began
            hist.meta["continued_at"] = sha
        hist.meta.update(model=args.model, threads=args.threads, cpu=cpu_name(),
                         fluentdream_sha=hist.meta.get("fluentdream_sha", sha))
        hist.save(path)
        print(f"[{i + 1}/{len(todo)}] {arm} {spec} seed {seed}: {hist.meta['wall_clock'][-1]:.0f} s",
              file=sys.stderr, flush=True)


def judge_all(args) -> list[dict]:
    """Every saved run of the requested arms, targets and seeds -> one row each: its judged
    hypervolume curve (benchmarks/judge.py) and clocks. Missing runs are listed, not invented."""
    lm32 = fd.load_model(args.model, dtype="float32")
    cfg = fd.EPOConfig(iters=args.iters)
    rows, missing = [], []
    for spec in args.targets:
        judge = Judge(lm32, spec)
        corner = judge.corner(cfg, list(range(args.seeds)))
        for arm in args.arms:
            for seed in range(args.seeds):
                path = run_path(args.runs, arm, spec, seed)
                if not path.exists():
                    missing.append(f"{arm} {spec} seed {seed}")
                    continue
                n = iterations(args, arm)
                hist = fd.History.load(path).truncated(n)
                native = hist.meta["dtype"] == "torch.float32"
                rows.append(dict(arm=arm, target=judge.target.name, seed=seed, corner=list(corner),
                                 made_at="+".join(str(hist.meta[k])[:7] for k in
                                                  ("fluentdream_sha", "continued_at")
                                                  if hist.meta.get(k)),
                                 curve=judge.curve(hist, corner, native).tolist(),
                                 cpu_clock=hist.meta["cpu_clock"][:n],
                                 wall_clock=hist.meta["wall_clock"][:n]))
    if missing:
        print(f"{len(missing)} runs not saved yet, left out: " + "; ".join(missing[:5])
              + (" ..." if len(missing) > 5 else ""), file=sys.stderr)
    return rows


def iterations(args, arm: str) -> int:
    """The iterations `arm` runs and is judged at (the reference's may differ: --reference-iters)."""
    return args.reference_iters if arm == "reference" and args.reference_iters else args.iters


SECTION = "## Ablation against the reference"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="checkout of Confirm-Solutions/dreamy (the folder "
                    "holding dreamy/epo.py); needed to run the reference arm")
    ap.add_argument("--model", default="smollm2-135m", help="anything fd.load_model takes "
                    "(default: %(default)s)")
    ap.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                    help="a target shorthand; repeat for several (default: L8.N1371 and "
                    "'logit: dog')")
    ap.add_argument("--arms", default=",".join(ARMS), type=lambda s: s.split(","),
                    help="comma-separated arms (default: all: %(default)s)")
    ap.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=60, help="iterations (default: %(default)s)")
    ap.add_argument("--reference-iters", type=int, metavar="N", help="the reference's iterations "
                    "(default: --iters); the other arms run --iters, continuing shorter saved runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--shard", default="0/1", type=lambda s: tuple(map(int, s.split("/"))),
                    help="I/N: run every N-th missing run from the I-th (default: %(default)s)")
    ap.add_argument("--runs", type=Path, help="where runs are saved (default: "
                    "results/ablation/MODEL)")
    ap.add_argument("--judge", action="store_true", help="run nothing: judge the saved runs")
    ap.add_argument("--json", type=Path, help="judged rows and summary (default: "
                    "benchmarks/ablation_MODEL.json)")
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="JSON", help="run and judge "
                    "nothing: tabulate one --json, or the judged runs of several together "
                    "(judged apart, e.g. one target or arm each, by the same commit)")
    ap.add_argument("--report", metavar="MD", help="also write the tables as the "
                    f"'{SECTION}: MODEL' section of this markdown file")
    ap.add_argument("--check", action="store_true", help="exit 1 when fluentdream's defaults "
                    "fall short of the reference on any target (exact Mann-Whitney p < 0.05 with "
                    "a lower mean hypervolume at equal iterations)")
    return ap


def check(args) -> None:
    """One-line errors for settings that cannot run, before anything loads."""
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise fd.UserError(f"unknown arms {unknown}; allowed: {', '.join(ARMS)}")
    for name in ("seeds", "iters", "threads", "reference_iters"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise fd.UserError(f"--{name.replace('_', '-')} must be at least 1, "
                               f"got {getattr(args, name)}")
    if len(args.shard) != 2 or not 0 <= args.shard[0] < args.shard[1]:
        raise fd.UserError(f"--shard must read I/N with 0 <= I < N, got {args.shard}")
    if "reference" in args.arms and not (args.judge or args.from_json or args.reference):
        raise fd.UserError("the reference arm needs --reference PATH (a checkout of "
                           "Confirm-Solutions/dreamy); or leave it out of --arms")


def read_result(path: Path) -> dict:
    """A --json file of this script, or a one-line error."""
    try:
        result = json.loads(path.read_text())
        if not {"meta", "runs"} <= set(result):
            raise ValueError("no meta or runs")
        return result
    except (OSError, ValueError) as err:
        raise fd.UserError(f"--from-json {path}: not a results file of this script "
                           f"({type(err).__name__}: {err})") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.targets = args.targets or ["L8.N1371", "logit: dog"]
    name = Path(args.model).name
    args.runs = args.runs or ROOT / "results" / "ablation" / name
    out = args.json or ROOT / "benchmarks" / f"ablation_{name}.json"
    try:
        check(args)
        if args.from_json:
            result = merged([read_result(path) for path in args.from_json], args.from_json)
        else:
            torch.set_num_threads(args.threads)
            if not args.judge:
                module = ref.load_reference(args.reference) if "reference" in args.arms else None
                run_all(args, module)
                if args.shard[1] > 1:
                    return 0                   # the last shard to finish judges with --judge
            rows = judge_all(args)
            meta = dict(command="python benchmarks/ablation.py " + shlex.join(
                argv if argv is not None else sys.argv[1:]), model=args.model, iters=args.iters,
                reference_iters=args.reference_iters or args.iters,
                seeds=args.seeds, targets=args.targets, arms=args.arms, cpu=cpu_name(),
                fluentdream_sha=ref.checkout_sha(ROOT), made_at=made_at(rows),
                reference_sha=ref.checkout_sha(args.reference) if args.reference else None)
            result = dict(meta=meta, summary=summarize(rows), across_targets=across_targets(rows),
                          runs=rows)
        if not args.from_json or args.json:           # a merge is saved where --json says
            doc = json.dumps(result, indent=1).encode()
            atomic_write(out, lambda fh: fh.write(doc))
    except fd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = markdown(result["summary"], result["meta"]) + across_markdown(result.get("across_targets"))
    print(table)
    if args.report:
        meta = result["meta"]
        made = "; ".join(f"{arm} at {', '.join(shas)}" for arm, shas in meta.get("made_at", {}).items())
        body = (f"{SECTION}: {meta['model']}\n\n`{meta['command']}` (on {meta['cpu']}; judged "
                f"at fluentdream {meta['fluentdream_sha']}, reference {meta['reference_sha']}; "
                f"runs made at fluentdream commits: {made or 'not recorded'}). "
                "Definitions: the docstring of benchmarks/ablation.py.\n\n" + table)
        replace_section(Path(args.report), f"{SECTION}: {meta['model']}\n", body)
    return 1 if args.check and short_of_reference(result["summary"]) else 0


def short_of_reference(summary: dict) -> list[str]:
    """Targets on which the defaults arm's hypervolume is significantly below the reference's."""
    out = []
    for target, arms in summary.items():
        test = arms.get("defaults", {}).get("vs_reference")
        if test and test["p"] < 0.05 and arms["defaults"]["mean"] < arms["reference"]["mean"]:
            out.append(target)
            print(f"parity check: the defaults fall short of the reference on {target} "
                  f"(p = {test['p']:.2g})", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(main())
