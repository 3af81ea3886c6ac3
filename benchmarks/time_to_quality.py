"""Benchmark: wall time until fluentdream's frontier is as good as the reference implementation's
frontier after its full run (issue 13's headline number).

    git clone https://github.com/Confirm-Solutions/dreamy /tmp/dreamy      # never vendored here
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --threads 2        # BENCHMARKS.md
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --iters 3 --seeds 2 \
        --target L1.N840                                                            # a smoke run
    python benchmarks/time_to_quality.py --from-json benchmarks/time_to_quality.json  # table again

A user asks how long until the frontier is as good as they need, not how fast one iteration is. So
per target:

1. the reference (`benchmarks/reference.py` runs it, optimizing fluentdream's target through the
   same hooks and rejection rules) runs `--iters` iterations on every seed in fp32, its own best
   setting on CPU (it cannot batch runs). The goal is the median over its seeds of the hypervolume
   of its final frontier (all candidates): what the reference reaches after `--iters` iterations;
2. fluentdream runs `--iters` iterations in its best setting: `fd.fast_dtype` (bf16 where the CPU
   computes it natively) and every seed of the target batched in one `fd.batched.epo_many` call.
   A run's clock at iteration t is its share of the call's set-up plus the sum of its iterations'
   seconds (already divided among the batched runs), so set-up is never free. The reference's
   clock at t is its wall time times t / `--iters` (its own per-iteration times leave out the
   gradient pass);
3. each run's time to the goal is its clock at the first iteration whose frontier reaches the
   goal, or infinity if it never does. fluentdream's quality is always measured in fp32: the
   frontier of its candidates up to t, re-scored by an fp32 Scorer (bf16 values never enter a
   comparison); since the fp32 frontier of all its candidates dominates any re-scored subset, this
   is a lower bound and never flatters it. The first iteration is found by bisection, which
   assumes the hypervolume grows with t (candidates only accumulate).

Speed-up per target = median time to the goal of the reference's seeds / fluentdream's (by the
goal's definition about half the reference's runs reach it), with a 95% bootstrap interval
resampling the seeds of each side; "all targets" is the geometric mean of the per-target ratios.
Hypervolumes share one corner per target: the worst CE and lowest activation among the fp32
scores of fluentdream's random initial prompts (as benchmarks/reference.py does). Writes --json
atomically after every target.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream.evaluate import Scorer
from fluentdream.history import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402  (benchmarks/reference.py: the reference runner)
from run import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGETS = ("L1.N840", "logit: function", "resid:L2:0")   # a neuron, a logit, a direction


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


def run_fluentdream(lm, target: fd.Target, cfg: fd.EPOConfig, seeds: list[int]) -> list[tuple]:
    """Every seed batched in one call -> per seed (History, clock (T,): seconds at each
    iteration)."""
    t0 = time.perf_counter()
    hists = fd.batched.epo_many(lm, [(target, cfg.replace(seed=s)) for s in seeds])
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
        clock = sec * np.arange(1, cfg.iters + 1) / cfg.iters
        out.append((ref.to_history(hist, cfg.lambdas, rules), clock))
    return out


def run_target(module, lm32, lm_fast, target_spec: str, cfg: fd.EPOConfig, seeds: list[int],
               reference_first: bool) -> list[dict]:
    """Both implementations on every seed of one target -> one row per (implementation, seed)."""
    t32, t_fast = fd.parse_target(target_spec, lm32), fd.parse_target(target_spec, lm_fast)
    rules = Scorer(lm32, t32, retokenize=cfg.retokenize)            # fp32: rules and re-scoring
    runs = {}
    for impl in (("reference", "fluentdream") if reference_first else ("fluentdream", "reference")):
        runs[impl] = (run_reference(module, lm32, t32, cfg, seeds, rules) if impl == "reference"
                      else run_fluentdream(lm_fast, t_fast, cfg, seeds))
    initial = torch.cat([torch.tensor(h.ids[0][:cfg.population_size], dtype=torch.long)
                         for h, _ in runs["fluentdream"]])
    f0, ce0 = rules.score(initial)
    ok = torch.isfinite(f0)
    corner = (float(ce0[ok].max()), float(f0[ok].min()))
    goal = float(np.median([fp32_hypervolume(h, h.n_iters, None, corner)
                            for h, _ in runs["reference"]]))
    rows = []
    for impl, pairs in runs.items():
        rescore = rules if impl == "fluentdream" else None          # the reference's are fp32
        for s, (hist, clock) in zip(seeds, pairs):
            t_hit = first_reaching(lambda t: fp32_hypervolume(hist, t, rescore, corner),
                                   hist.n_iters, goal)
            rows.append(dict(target=t32.name, implementation=impl, seed=s, goal=goal,
                             corner=list(corner), reached_iteration=t_hit,
                             seconds_to_goal=float(clock[t_hit - 1]) if t_hit else None,
                             total_seconds=float(clock[-1]),
                             hypervolume=fp32_hypervolume(hist, hist.n_iters, rescore, corner)))
            print(f"{t32.name} {impl} seed {s}: " + (
                f"goal {goal:.3f} at iteration {t_hit}, {clock[t_hit - 1]:.1f} s" if t_hit else
                f"goal {goal:.3f} not reached in {clock[-1]:.1f} s"), file=sys.stderr, flush=True)
    return rows


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
                runs=len(ours))


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
    lines = [f"| target | reference: median s to its {iters}-iteration median hypervolume "
             "| fluentdream: median s to the same | speed-up [95% CI] | runs reaching it "
             "(reference, fluentdream) |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        if name == "all":
            continue
        lines.append(f"| {name} | {s['reference_median_s']:.1f} | {s['fluentdream_median_s']:.1f} "
                     f"| {s['ratio']:.2f}x [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] "
                     f"| {s['reached']['reference']}, {s['reached']['fluentdream']} "
                     f"of {s['runs']} |")
    a = summary["all"]
    lines.append(f"| all targets (geometric mean of {a['targets']}) | | "
                 f"| {a['geometric_mean']:.2f}x | |")
    return "\n".join(lines)


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
    ap.add_argument("--iters", type=int, default=300,
                    help="iterations of every run, both implementations (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads for both (default: %(default)s)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="fluentdream's dtype; auto = fd.fast_dtype (default: %(default)s)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "time_to_quality.json"),
                    help="where rows, summary and settings go (atomic; default: %(default)s)")
    ap.add_argument("--report", metavar="MD", help="also write the table as the "
                    f"'{SECTION}' section of this markdown file (e.g. BENCHMARKS.md), replacing it")
    return ap


SECTION = "## Time to quality against the reference implementation"


def splice_section(path: Path, result: dict) -> None:
    """Replace (or append) SECTION in the markdown file at `path`: command, settings, table."""
    meta = result["meta"]
    body = (f"{SECTION}\n\n`{meta['command']}` ({meta['model']}, {meta['threads']} thread(s), "
            f"fluentdream in {meta['fluentdream_dtype']} with each target's {len(meta['seeds'])} "
            f"seeds batched, the reference in float32; fluentdream {meta['fluentdream_sha']}, "
            f"reference {meta['reference_sha']}). Definitions: the docstring of "
            f"benchmarks/time_to_quality.py.\n\n"
            + markdown(result["summary"], meta["config"]["iters"]) + "\n")
    replace_section(path, SECTION, body)


def run(args) -> dict:
    """Validate, load both models, measure every target; returns what --json holds."""
    ref.check_run_args(args)
    module = ref.load_reference(args.reference)
    torch.set_num_threads(args.threads)
    dtype = fd.fast_dtype("cpu") if args.dtype == "auto" else args.dtype
    lm32 = fd.load_model(args.model, dtype="float32")
    lm_fast = lm32 if dtype == "float32" else fd.load_model(args.model, dtype=dtype)
    cfg = fd.EPOConfig(iters=args.iters)                  # Table 1 settings otherwise
    seeds = list(range(args.seeds))
    meta = dict(command="python benchmarks/time_to_quality.py " + shlex.join(args.argv),
                model=repr(lm32), threads=args.threads, fluentdream_dtype=dtype,
                config=cfg.to_dict(), seeds=seeds, torch=torch.__version__,
                reference_sha=ref._checkout_sha(args.reference),
                fluentdream_sha=ref._checkout_sha(ROOT))
    rows: list[dict] = []
    for i, spec in enumerate(args.targets or DEFAULT_TARGETS):  # who goes first alternates
        rows += run_target(module, lm32, lm_fast, spec, cfg, seeds, reference_first=i % 2 == 0)
        doc = json.dumps(dict(meta=meta, runs=rows, summary=summarize(rows)), indent=1).encode()
        atomic_write(Path(args.json), lambda fh: fh.write(doc))
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
