"""Benchmark: wall time until fluentdream's frontier is as good as the reference implementation's
frontier after its full run (issue 13's headline number).

    git clone https://github.com/Confirm-Solutions/dreamy /tmp/dreamy      # never vendored here
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --threads 2        # BENCHMARKS.md
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --threads 2 --model smollm2-135m \
        --target L8.N1371 --target "logit: dog" --target resid:L12:0 --seeds 3 \
        --reference-seeds 1 --stop-at-goal 10 --report BENCHMARKS.md            # ~80 min
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --iters 3 --seeds 2 \
        --target L1.N840                                                            # a smoke run
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --threads 2 --restart-mode frontier \
        --operators swap=0.5,swap2=0.1,insert=0.2,delete=0.2 --min-len 8 --max-len 16 \
        --report BENCHMARKS.md                           # fluentdream with its own options
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --threads 2 --topk 64 \
        --reference-topk 64 --report BENCHMARKS.md       # both sides at k = 64
    python benchmarks/time_to_quality.py --from-json benchmarks/time_to_quality.json  # table again

A user asks how long until the frontier is as good as they need, not how fast one iteration is. So
per target:

1. the reference (`benchmarks/reference.py` runs it, optimizing fluentdream's target through the
   same hooks and rejection rules) runs `--iters` iterations on every seed in its best setting on
   this machine: `fd.fast_dtype` too, since on a CPU with native bf16 its iterations take a third
   of their fp32 time (LOG.md), one run at a time (it cannot batch runs). The goal is the (lower)
   median over its seeds of the fp32 hypervolume of its final frontier (all candidates): what the
   reference reaches after `--iters` iterations;
2. fluentdream runs `--iters` iterations in its best setting: `fd.fast_dtype` (bf16 where the CPU
   computes it natively) and every seed of the target batched in one `fd.batched.epo_many` call.
   A run's clock at iteration t is its share of the call's set-up plus the sum of its iterations'
   seconds (already divided among the batched runs), so set-up is never free. The reference's
   clock at t is its wall time times t / `--iters` (its own per-iteration times leave out the
   gradient pass). With `--stop-at-goal K` the reference runs first and a fluentdream run stops
   at the first multiple of K iterations whose fp32 frontier reaches the goal, which saves the
   iterations after it (the time of those checks counts against fluentdream, in its set-up);
3. each run's time to the goal is its clock at the first iteration whose frontier reaches the
   goal, or infinity if it never does. Quality is always measured in fp32, on both sides: the
   frontier of a run's candidates up to t, re-scored by an fp32 Scorer when the run was not in
   fp32 (bf16 values never enter a comparison); since the fp32 frontier of all its candidates
   dominates any re-scored subset, this is a lower bound and flatters neither side. The first
   iteration is found by bisection, which assumes the hypervolume grows with t (candidates only
   accumulate).

fluentdream runs the paper's EPO by default, as the reference does, so the ratio is the speed of
one algorithm in two implementations. --restart-mode, --operators, --min-len and --max-len add
fluentdream's own options beyond the paper (its §4 proposals; experiment 09 measures them at equal
wall time) to fluentdream's runs only: the ratio then says how much sooner a user of those options
reaches the reference's frontier. Such a run writes its own JSON file and its own BENCHMARKS.md
section, and its prompts may leave the paper's n = 12 (--min-len, --max-len): the hypervolume
compares (CE per token, activation) points whatever the length. --topk and --reference-topk set
each side's k, candidate tokens per position (the paper's 512 was chosen for Pythia; a greedier k
grows these frontiers sooner on both models here, LOG.md): the reference's k defines the goal
(its frontier at that k), so "--topk 64 --reference-topk 64" is one setting in two
implementations, and "--topk 64" alone races the reference's paper setting.

Speed-up per target = median time to the goal of the reference's seeds / fluentdream's (by the
goal's definition just over half the reference's runs reach it), with a 95% bootstrap interval
resampling the seeds of each side (with one reference seed, `--reference-seeds 1`, the interval
covers only fluentdream's seeds); "all targets" is the geometric mean of the finite per-target
ratios, and says over how many of the targets.
Hypervolumes share one corner per target: the worst CE and lowest activation among the fp32
scores of fluentdream's random initial prompts (as benchmarks/reference.py does), drawn before
anything runs. Writes --json atomically after every target.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream.cli import operators_arg
from fluentdream.config import RESTART_MODES
from fluentdream.epo import initial_prompts
from fluentdream.evaluate import Scorer
from fluentdream.hardware import cpu_name
from fluentdream.history import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402  (benchmarks/reference.py: the reference runner)
from ttq_table import SECTION, markdown, options_text, splice_section, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGETS = ("L1.N840", "logit: function", "resid:L2:0")   # a neuron, a logit, a direction
OWN_OPTIONS = ("topk", "restart_mode", "operators", "min_len", "max_len")   # fluentdream's


def fp32_hypervolume(hist: fd.History, t: int, rescore: Scorer | None,
                     corner: tuple[float, float]) -> float:
    """Hypervolume above `corner` (CE, f) of the frontier of hist's first t iterations; with
    `rescore`, its points re-scored in fp32 first (a lower bound on the fp32 frontier's)."""
    front = fd.pareto_frontier([hist.truncated(t)])
    if rescore is None:
        return fd.frontier_quality(front, *corner)
    f, ce = rescore.score(torch.tensor(np.asarray(front.ids), dtype=torch.long))
    keep = torch.isfinite(f)
    return fd.frontier_quality((f[keep].numpy(), ce[keep].numpy()), *corner)


def reference_goal(final: list[float]) -> float:
    """The goal: the lower median of the reference's final hypervolumes, which more than half of
    its runs reach, so its median time to the goal is finite (the plain median of an even count
    lies between two runs, exactly half reach it and the median time is infinite)."""
    return float(np.quantile(final, 0.5, method="lower"))


def first_reaching(hv, T: int, goal: float) -> int | None:
    """Smallest t in 1..T with hv(t) >= goal, by bisection (hv non-decreasing); None if
    hv(T) < goal."""
    if hv(T) < goal:
        return None
    lo, hi = 1, T
    while lo < hi:                                  # invariant: hv(hi) >= goal
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hv(mid) >= goal else (mid + 1, hi)
    return hi


def run_fluentdream(lm, target: fd.Target, cfg: fd.EPOConfig, seeds: list[int],
                    stop=None) -> list[tuple]:
    """Every seed batched in one call -> per seed (History, clock (t,): seconds at each
    iteration). stop(history) -> bool, if given, ends a run early (its time is counted: it falls
    outside the iterations' seconds, so in the shared set-up)."""
    t0 = time.perf_counter()
    hists = fd.batched.epo_many(lm, [(target, cfg.replace(seed=s)) for s in seeds],
                                callback=None if stop is None else lambda i, r: stop(r.history))
    wall = time.perf_counter() - t0
    iter_sec = [np.asarray(h.arrays()["seconds"], float) for h in hists]
    setup = (wall - sum(s.sum() for s in iter_sec)) / len(seeds)   # shared set-up, split evenly
    return [(h, setup + np.cumsum(s)) for h, s in zip(hists, iter_sec)]


def run_reference(module, lm, target: fd.Target, cfg: fd.EPOConfig, seeds: list[int],
                  rules: Scorer) -> list[tuple]:
    """The reference on every seed -> per seed (History, clock (T,): wall time pro rata)."""
    out = []
    for s in seeds:
        hist, sec = ref.run_reference(module, lm, target, cfg.replace(seed=s))
        print(f"{target.name}: reference seed {s}: {cfg.iters} iterations in {sec:.1f} s",
              flush=True)                                # long work shows progress
        clock = sec * np.arange(1, cfg.iters + 1) / cfg.iters
        out.append((ref.to_history(hist, cfg.lambdas, rules), clock))
    return out


def initial_corner(lm32, target: fd.Target, cfg: fd.EPOConfig, seeds: list[int],
                   rules: Scorer) -> tuple[float, float]:
    """(worst CE, lowest activation) among the fp32 scores of fluentdream's random initial prompts
    of every seed: the same prompts a run draws first (fd.epo.initial_prompts, seeded as a run
    seeds it), so the corner is known before anything runs."""
    initial = torch.cat([initial_prompts(lm32, cfg.replace(seed=s),
                                         torch.Generator().manual_seed(s))[:, :cfg.seq_len]
                         for s in seeds])
    f0, ce0 = rules.score(initial)
    ok = torch.isfinite(f0)
    return float(ce0[ok].max()), float(f0[ok].min())


def run_target(module, lms: dict, target_spec: str, cfgs: dict, seeds: dict,
               reference_first: bool, check_every: int | None = None) -> list[dict]:
    """Both implementations on one target -> one row per (implementation, seed). lms, cfgs and
    seeds by role: the models ("fp32" judges, "fluentdream" and "reference" run), the EPO
    settings (the reference's are the paper's; fluentdream's may add its own options), the
    seeds. With check_every, the reference runs first and each fluentdream run stops at the
    first multiple of check_every iterations whose fp32 frontier reaches the reference's goal."""
    cfg = cfgs["reference"]                    # the corner and the rules: the paper's settings
    t32 = fd.parse_target(target_spec, lms["fp32"])
    rules = Scorer(lms["fp32"], t32, retokenize=cfg.retokenize)     # fp32: rules and re-scoring
    rescore = {impl: rules if lms[impl].dtype != torch.float32 else None
               for impl in ("reference", "fluentdream")}             # judged in fp32, always
    corner = initial_corner(lms["fp32"], t32, cfg, seeds["fluentdream"], rules)
    goal = None

    @functools.cache                 # a finished run's hv(t): each t re-scored in fp32 once
    def curve(hist: fd.History, impl: str):
        return functools.cache(lambda t: fp32_hypervolume(hist, t, rescore[impl], corner))

    def reached(hist: fd.History) -> bool:
        t = hist.n_iters
        return t % check_every == 0 and fp32_hypervolume(hist, t, rescore["fluentdream"],
                                                         corner) >= goal
    runs = {}
    order = ("reference", "fluentdream") if reference_first or check_every else \
        ("fluentdream", "reference")
    for impl in order:
        target = fd.parse_target(target_spec, lms[impl])
        if impl == "reference":
            runs[impl] = run_reference(module, lms[impl], target, cfgs[impl], seeds[impl], rules)
            goal = reference_goal([curve(h, impl)(h.n_iters) for h, _ in runs[impl]])
        else:
            runs[impl] = run_fluentdream(lms[impl], target, cfgs[impl], seeds[impl],
                                         stop=reached if check_every else None)
    rows = []
    for impl, pairs in runs.items():
        for s, (hist, clock) in zip(seeds[impl], pairs):
            hv = curve(hist, impl)
            t_hit = first_reaching(hv, hist.n_iters, goal)
            rows.append(dict(target=t32.name, implementation=impl, seed=s, goal=goal,
                             corner=list(corner), reached_iteration=t_hit,
                             seconds_to_goal=float(clock[t_hit - 1]) if t_hit else None,
                             iterations_run=hist.n_iters, total_seconds=float(clock[-1]),
                             hypervolume=hv(hist.n_iters)))
            print(f"{t32.name} {impl} seed {s}: " + (
                f"goal {goal:.3f} at iteration {t_hit}, {clock[t_hit - 1]:.1f} s" if t_hit else
                f"goal {goal:.3f} not reached in {clock[-1]:.1f} s"), file=sys.stderr, flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="checkout of Confirm-Solutions/dreamy (the folder holding "
                    "dreamy/epo.py); needed unless --from-json")
    ap.add_argument("--from-json", metavar="PATH", help="run nothing: print the table of a "
                    "results file this script wrote")
    ap.add_argument("--model", default="embedded",
                    help="anything fd.load_model takes (default: %(default)s)")
    ap.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                    help="a target shorthand; repeat for several; default: "
                    + ", ".join(repr(t) for t in DEFAULT_TARGETS))
    ap.add_argument("--seeds", type=int, default=5,
                    help="seeds 0..N-1 per target (default: %(default)s)")
    ap.add_argument("--reference-seeds", type=int, metavar="N",
                    help="the reference's seeds 0..N-1 per target, when fewer than --seeds fit "
                    "the budget (default: --seeds)")
    ap.add_argument("--iters", type=int, default=300,
                    help="iterations of every run, both implementations (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads for both (default: %(default)s)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="fluentdream's dtype; auto = fd.fast_dtype (default: %(default)s)")
    ap.add_argument("--reference-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the reference's dtype; auto = fd.fast_dtype, its fastest here too "
                    "(LOG.md; default: %(default)s)")
    ap.add_argument("--reference-topk", type=int, metavar="K", help="the reference's k, "
                    "candidate tokens per position (default: the paper's 512); the goal is its "
                    "frontier at this k")
    own = ap.add_argument_group("fluentdream's settings beyond the paper's (the reference keeps "
                                "the paper's; fluentdream.EPOConfig documents them)")
    own.add_argument("--topk", type=int, metavar="K", help="fluentdream's k (default: the "
                     "paper's 512)")
    own.add_argument("--restart-mode", choices=RESTART_MODES,
                     help="fluentdream's restart (default: collapse, the paper's)")
    own.add_argument("--operators", type=operators_arg, metavar="NAME=P,...",
                     help="fluentdream's mutation operators (default: swap=1, the paper's)")
    own.add_argument("--min-len", type=int, help="fluentdream's shortest prompt (default: n)")
    own.add_argument("--max-len", type=int, help="fluentdream's longest prompt (default: n)")
    ap.add_argument("--stop-at-goal", type=int, metavar="K", help="run the reference first and "
                    "stop each fluentdream run at the first multiple of K iterations whose fp32 "
                    "frontier reaches the goal (saves the iterations after it; the checks' time "
                    "counts against fluentdream)")
    ap.add_argument("--json", help="where rows, summary and settings go (atomic; default: "
                    "benchmarks/time_to_quality.json for the embedded model, "
                    "benchmarks/time_to_quality_MODEL.json otherwise, with a tag of "
                    "fluentdream's own options before .json when they are given)")
    ap.add_argument("--report", metavar="MD", help="also write the table as the "
                    f"'{SECTION}: MODEL' section of this markdown file (e.g. BENCHMARKS.md), "
                    "replacing it")
    return ap


def own_options(args) -> dict:
    """fluentdream's settings the command line set (OWN_OPTIONS), by EPOConfig field."""
    return {k: getattr(args, k) for k in OWN_OPTIONS if getattr(args, k, None) is not None}


def configs(args) -> tuple[dict, dict, dict]:
    """-> (EPO settings by role, the reference's settings off Table 1, fluentdream's), validated
    (a bad value is a UserError before anything loads). fluentdream's start from Table 1, not
    from the reference's: --topk alone races the reference's paper setting."""
    theirs = {} if args.reference_topk is None else dict(topk=args.reference_topk)
    options = own_options(args)
    paper = fd.EPOConfig(iters=args.iters)                 # Table 1 settings otherwise
    return ({"reference": paper.replace(**theirs), "fluentdream": paper.replace(**options)},
            theirs, options)


def run(args) -> dict:
    """Validate, load both models, measure every target; returns what --json holds."""
    ref.check_run_args(args)
    n_ref = args.seeds if args.reference_seeds is None else args.reference_seeds
    for name, value in (("--reference-seeds", n_ref), ("--stop-at-goal", args.stop_at_goal)):
        if value is not None and value < 1:
            raise fd.UserError(f"{name} must be at least 1, got {value}")
    cfgs, theirs, options = configs(args)
    module = ref.load_reference(args.reference)
    torch.set_num_threads(args.threads)
    dtypes = {impl: fd.fast_dtype("cpu") if d == "auto" else d
              for impl, d in (("fluentdream", args.dtype), ("reference", args.reference_dtype))}
    lms = {"fp32": fd.load_model(args.model, dtype="float32")}
    for impl, dtype in dtypes.items():                   # one copy of the weights per dtype
        same = [lm for lm in lms.values() if lm.dtype == getattr(torch, dtype)]
        lms[impl] = same[0] if same else fd.load_model(args.model, dtype=dtype)
    seeds = {"fluentdream": list(range(args.seeds)), "reference": list(range(n_ref))}
    meta = dict(command="python benchmarks/time_to_quality.py " + shlex.join(args.argv),
                model_name=args.model, model=repr(lms["fp32"]), cpu=cpu_name(),
                threads=args.threads,
                fluentdream_dtype=dtypes["fluentdream"], reference_dtype=dtypes["reference"],
                stop_at_goal=args.stop_at_goal, config=cfgs["reference"].to_dict(),
                reference_options=theirs,
                fluentdream_options=options, seeds=seeds["fluentdream"],
                reference_seeds=seeds["reference"], torch=torch.__version__,
                reference_sha=ref._checkout_sha(args.reference),
                fluentdream_sha=ref._checkout_sha(ROOT))
    name = ("time_to_quality.json" if args.model == "embedded"
            else f"time_to_quality_{Path(args.model).name}.json")
    if theirs or options:                                # never overwrite the paper-rules file
        tag = options_text({f"reference_{k}": v for k, v in theirs.items()} | options)
        name = name.replace(".json", "_" + re.sub(r"[^A-Za-z0-9.]+", "-", tag) + ".json")
    out = Path(args.json or ROOT / "benchmarks" / name)
    rows: list[dict] = []
    for i, spec in enumerate(args.targets or DEFAULT_TARGETS):  # who goes first alternates
        rows += run_target(module, lms, spec, cfgs, seeds, reference_first=i % 2 == 0,
                           check_every=args.stop_at_goal)
        doc = json.dumps(dict(meta=meta, runs=rows, summary=summarize(rows)), indent=1).encode()
        atomic_write(out, lambda fh: fh.write(doc))
    return dict(meta=meta, runs=rows, summary=summarize(rows))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        if args.from_json:
            try:
                result = json.loads(Path(args.from_json).read_text())
                result["summary"] = summarize(result["runs"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise fd.UserError(f"--from-json {args.from_json!r} is not a results file of this "
                                   f"script ({type(err).__name__}: {err})") from None
        else:
            result = run(args)
    except fd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(result["summary"], result["meta"]["config"]["iters"]))
    if args.report:
        splice_section(Path(args.report), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
