"""Benchmark: how long one dream takes to be as good as the reference code's, one run at a time
(the speed headline, issue 29).

    git clone https://github.com/Confirm-Solutions/dreamy /tmp/dreamy      # never vendored here
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --pilot 3 --report BENCHMARKS.md
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --seeds 10 --report BENCHMARKS.md
    python benchmarks/time_to_quality.py --reference /tmp/dreamy --iters 3 --seeds 2 \
        --target L1.N840                                                            # a smoke run
    python benchmarks/time_to_quality.py --from-json benchmarks/time_to_quality_embedded.json
    python benchmarks/time_to_quality.py --from-json a.json b.json --report BENCHMARKS.md  # merged

A user dreams one target with one seed and waits. So both sides run exactly so: one seed per run,
one run at a time, in this process, on --threads threads, each side in its best setting (below).
Per target:

1. the reference (benchmarks/reference.py runs it on fluentdream's target through the same hooks;
   its search knows no retokenization rule, as published; the goal text stays banned) runs
   --iters iterations on each of its seeds; its clock at iteration t is the wall time from the
   call to the end of iteration t (its callback stamps every iteration, gradient pass included).
   The goal is the lower median of its runs' final judged hypervolumes (benchmarks/judge.py):
   what the reference reaches after --iters iterations, reached by more than half of its runs;
2. fluentdream runs each seed as a user's `fd.epo` call; its clock at iteration t is the wall
   time from the call to the end of iteration t (set-up included), plus what a fresh process
   computes once before its first run (the token tables, timed afresh for every run). Kernel
   construction, which both sides pay once per process and shape, is paid before timing by one
   uncounted 2-iteration run per side; model loading is not timed on either side. With
   --stop-at-goal K a run stops at the first multiple of K iterations whose judged frontier
   reaches the goal (the reference runs first); the judging is not counted in its clock;
3. a run's time to the goal is its clock at the first iteration whose judged curve reaches the
   goal (a scan: right for any curve), or infinity. Judged = fp32, with fluentdream's rules, one
   corner per target, the same for both sides (benchmarks/judge.py).
Statistics: benchmarks/ttq_table.py (exact Mann-Whitney tests and intervals; a target never
reached counts).

Best settings. `--pilot N` runs N seeds of the first target for every dtype setting of each side
(the reference: bf16, fp32, and bf16 with its logits, and so its CE, in fp32; fluentdream: bf16
and fp32) and picks, per side, the setting with the lowest median time to the lower median of that
side's pooled final hypervolumes; it writes its own table and the choice. The main run takes the
choice as --dtype and --reference-dtype.

fluentdream runs the paper's EPO by default, as the reference does. --topk, --restart-mode,
--operators, --min-len and --max-len set fluentdream's own options (its runs only; with
--max-len 12 its prompts never pass the paper's n = 12, which the CE limits are calibrated at);
--reference-topk the reference's k (its frontier at that k is the goal).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream.core import tokens
from fluentdream.cli import operators_arg
from fluentdream.core.config import RESTART_MODES
from fluentdream.models.hardware import cpu_name
from fluentdream.files import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402  (the reference runner)
from judge import Judge, first_reaching, reference_goal  # noqa: E402
from sections import replace_section  # noqa: E402
from ttq_table import (markdown, options_text, pilot_markdown, read_results,  # noqa: E402
                       splice_section, summarize)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGETS = ("L1.N840", "logit: function", "resid:L2:0")   # a neuron, a logit, a direction
OWN_OPTIONS = ("topk", "restart_mode", "operators", "min_len", "max_len")   # fluentdream's
DTYPES = {"reference": ("bfloat16", "float32", "bfloat16-fp32-ce"),
          "fluentdream": ("bfloat16", "float32")}


def token_tables_seconds(lm) -> float:
    """What fluentdream computes once per process and model before its first run (which tokens
    may be proposed and drawn: a decode and encode of the vocabulary), timed afresh."""
    tokens._token_masks.cache_clear()
    t0 = time.perf_counter()
    tokens.allowed_tokens(lm)
    return time.perf_counter() - t0


def warm_up(impl: str, module, lm, spec: str, cfg: fd.EPOConfig) -> None:
    """A 2-iteration run that is not counted, so neither side's first measured run pays the
    kernel construction (oneDNN builds a kernel per new shape) that later runs do not."""
    target, short = fd.parse_target(spec, lm), cfg.replace(iters=2, seed=10_000)
    if impl == "reference":
        run_reference(module, lm, target, short, fp32_logits=False)
    else:
        fd.epo(lm, target, short, progress=False)


def run_fluentdream(lm, target: fd.Target, cfg: fd.EPOConfig, stop=None) -> tuple:
    """One run as a user runs it -> (History, clock (T,)); stop(history) -> bool ends it early,
    its own time left out of the clock. The clock starts at the token tables' cost
    (token_tables_seconds), which a user's process pays before its first run."""
    ends, spent = [], 0.0

    def callback(report) -> bool:
        nonlocal spent
        ends.append(time.perf_counter() - spent)
        if stop is None:
            return False
        t0 = time.perf_counter()
        done = stop(report.history)
        spent += time.perf_counter() - t0
        return done
    tables = token_tables_seconds(lm)
    t0 = time.perf_counter()
    hist = fd.epo(lm, target, cfg, callback, progress=False)
    return hist, np.asarray(ends) - t0 + tables


def run_reference(module, lm, target: fd.Target, cfg: fd.EPOConfig, fp32_logits: bool) -> tuple:
    """One reference run -> (History with its rules applied, clock (T,)); fp32_logits: its CE
    (and the CE in its gradient) from logits cast to fp32."""
    stamps: list = []
    raw, _ = ref.run_reference(module, lm, target, cfg, stamps, fp32_logits=fp32_logits)
    rules = fd.Scorer(lm, target, retokenize=False)
    return ref.to_history(raw, cfg.lambdas, rules), np.array([w for w, _ in stamps[2:]]) - stamps[0][0]


def cached_reference(module, lm, target: fd.Target, cfg: fd.EPOConfig, fp32_logits: bool,
                     cache: Path | None) -> tuple:
    """run_reference, or the run saved in `cache` by a call with exactly these settings (model,
    dtype, logits, EPO settings with the seed, target, threads, CPU, both commits): a reference run
    serves every row of fluentdream options raced against it, and nothing else."""
    key = dict(model=lm.name, dtype=str(lm.dtype), fp32_logits=fp32_logits, config=cfg.to_dict(),
               target=target.name, threads=torch.get_num_threads(), cpu=cpu_name(),
               reference_sha=ref.checkout_sha(Path(module.__file__).parents[1]),
               fluentdream_sha=ref.checkout_sha(ROOT))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{digest}.npz" if cache is not None else None
    if path is not None and path.exists():
        hist = fd.History.load(path)
        if hist.meta.get("cache_key") == key:
            return hist, np.asarray(hist.meta["clock"])
    hist, clock = run_reference(module, lm, target, cfg, fp32_logits)
    if path is not None:
        hist.meta.update(cache_key=key, clock=clock.tolist())
        hist.save(path)
    return hist, clock


def judged_runs(impl: str, module, lm, judge: Judge, corner, cfg: fd.EPOConfig, seeds: list,
                fp32_logits: bool = False, stop=None, cache: Path | None = None) -> list[dict]:
    """Each seed of one side, run and judged -> dicts of seed, History, clock and curve (T,).
    stop(history), fluentdream's only: ends a run early (run_fluentdream); cache: where the
    reference's runs are kept for reuse (cached_reference)."""
    target, out = fd.parse_target(judge.spec, lm), []
    if seeds:
        warm_up(impl, module, lm, judge.spec, cfg)
    for s in seeds:
        if impl == "reference":
            hist, clock = cached_reference(module, lm, target, cfg.replace(seed=s), fp32_logits,
                                           cache)
        else:
            hist, clock = run_fluentdream(lm, target, cfg.replace(seed=s), stop)
        out.append(dict(seed=s, hist=hist, clock=clock,
                        curve=judge.curve(hist, corner, lm.dtype == torch.float32)))
        print(f"{judge.spec}: {impl} seed {s}: {hist.n_iters} iterations in {clock[-1]:.1f} s",
              file=sys.stderr, flush=True)                 # long work shows progress
    return out


def row(impl: str, run: dict, judge: Judge, corner, goal: float) -> dict:
    """One run's time to the goal and what it is measured from."""
    t_hit = first_reaching(run["curve"], goal)
    clock = run["clock"]
    return dict(target=judge.target.name, implementation=impl, seed=run["seed"], goal=goal,
                corner=list(corner), reached_iteration=t_hit,
                seconds_to_goal=float(clock[t_hit - 1]) if t_hit else None,
                iterations_run=run["hist"].n_iters, total_seconds=float(clock[-1]),
                hypervolume=float(run["curve"][-1]), curve=run["curve"].round(4).tolist(),
                clock=clock.round(3).tolist())


def race(module, lms: dict, spec: str, cfgs: dict, seeds: dict, stop_every: int | None = None,
         fp32_logits: bool = False, cache: Path | None = None) -> list[dict]:
    """Both sides on one target -> one row per (implementation, seed). lms, cfgs and seeds by
    role: "fp32" judges, "reference" and "fluentdream" run; fp32_logits: the reference's CE in
    fp32 (run_reference); cache: cached_reference's."""
    judge = Judge(lms["fp32"], spec)
    corner = judge.corner(cfgs["reference"], seeds["fluentdream"])
    theirs = judged_runs("reference", module, lms["reference"], judge, corner, cfgs["reference"],
                         seeds["reference"], fp32_logits, cache=cache)
    goal = reference_goal([r["curve"][-1] for r in theirs])
    native = lms["fluentdream"].dtype == torch.float32

    def reached(hist) -> bool:
        return (hist.n_iters % stop_every == 0
                and judge.curve(hist, corner, native)[-1] >= goal)
    ours = judged_runs("fluentdream", module, lms["fluentdream"], judge, corner,
                       cfgs["fluentdream"], seeds["fluentdream"],
                       stop=reached if stop_every else None)
    return ([row("reference", r, judge, corner, goal) for r in theirs]
            + [row("fluentdream", r, judge, corner, goal) for r in ours])


def load_models(model: str, settings) -> dict:
    """One model per dtype named by the settings ("bfloat16-fp32-ce" is bf16), fp32 always."""
    out = {"float32": fd.load_model(model, dtype="float32")}
    for setting in settings:
        dtype = setting.split("-")[0]
        if dtype not in out:
            out[dtype] = fd.load_model(model, dtype=dtype)
    return out


def pilot(args, module, cfgs: dict) -> dict:
    """Every dtype setting of each side (DTYPES) on --pilot seeds of the first target -> rows
    and, per side, the setting with the lowest median time to the lower median of that side's
    pooled final hypervolumes (ties: the higher median final hypervolume)."""
    spec = (args.targets or DEFAULT_TARGETS)[0]
    seeds = list(range(args.pilot))
    models = load_models(args.model, DTYPES["reference"])
    judge = Judge(models["float32"], spec)
    corner = judge.corner(cfgs["reference"], seeds)
    rows, choice = [], {}
    for impl, settings in DTYPES.items():
        runs = {setting: judged_runs(impl, module, models[setting.split("-")[0]], judge, corner,
                                     cfgs[impl], seeds, fp32_logits=setting.endswith("-ce"),
                                     cache=args.reference_cache)
                for setting in settings}
        goal = reference_goal([r["curve"][-1] for rs in runs.values() for r in rs])
        score = {}
        for setting, rs in runs.items():
            part = [dict(row(impl, r, judge, corner, goal), setting=setting) for r in rs]
            rows += part
            t = [r["seconds_to_goal"] if r["seconds_to_goal"] is not None else np.inf for r in part]
            score[setting] = (float(np.median(t)), -float(np.median([r["hypervolume"] for r in part])))
        choice[impl] = min(score, key=score.get)
    return dict(rows=rows, choice=choice, target=spec, seeds=seeds)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="checkout of Confirm-Solutions/dreamy (the folder holding "
                    "dreamy/epo.py); needed unless --from-json")
    ap.add_argument("--from-json", metavar="PATH", nargs="+", help="run nothing: print the "
                    "table of results files this script wrote (several: one setting's targets, "
                    "e.g. one per session, merged)")
    ap.add_argument("--model", default="embedded",
                    help="anything fd.load_model takes (default: %(default)s)")
    ap.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                    help="a target shorthand; repeat for several; default: "
                    + ", ".join(repr(t) for t in DEFAULT_TARGETS))
    ap.add_argument("--seeds", type=int, default=10,
                    help="fluentdream's seeds 0..N-1 per target (default: %(default)s)")
    ap.add_argument("--reference-seeds", type=int, metavar="N",
                    help="the reference's seeds 0..N-1 per target (default: --seeds)")
    ap.add_argument("--iters", type=int, default=300,
                    help="iterations of every run, both implementations (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads for both (default: %(default)s)")
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES["fluentdream"],
                    help="fluentdream's dtype (the pilot's choice; default: %(default)s)")
    ap.add_argument("--reference-dtype", default="bfloat16", choices=DTYPES["reference"],
                    help="the reference's setting (the pilot's choice; default: %(default)s)")
    ap.add_argument("--pilot", type=int, metavar="N", help="run the dtype pilot on N seeds of "
                    "the first target instead (module docstring)")
    ap.add_argument("--reference-topk", type=int, metavar="K", help="the reference's k "
                    "(default: the paper's 512); the goal is its frontier at this k")
    own = ap.add_argument_group("fluentdream's settings beyond the paper's (the reference keeps "
                                "the paper's; fluentdream.EPOConfig documents them)")
    own.add_argument("--topk", type=int, metavar="K", help="fluentdream's k (default: 512)")
    own.add_argument("--restart-mode", choices=RESTART_MODES,
                     help="fluentdream's restart (default: collapse, the paper's)")
    own.add_argument("--operators", type=operators_arg, metavar="NAME=P,...",
                     help="fluentdream's mutation operators (default: swap=1, the paper's)")
    own.add_argument("--min-len", type=int, help="fluentdream's shortest prompt (default: n)")
    own.add_argument("--max-len", type=int, help="fluentdream's longest prompt (default: n)")
    ap.add_argument("--stop-at-goal", type=int, metavar="K", help="stop each fluentdream run at "
                    "the first multiple of K iterations whose judged frontier reaches the goal")
    ap.add_argument("--reference-cache", type=Path, default=ROOT / "results" / "reference_runs",
                    metavar="DIR", help="where the reference's runs are kept and reused by later "
                    "calls with exactly the same settings (default: %(default)s)")
    ap.add_argument("--json", help="where rows, summary and settings go (atomic; default: "
                    "benchmarks/time_to_quality_MODEL[_OPTIONS].json, ..._pilot.json for --pilot)")
    ap.add_argument("--report", metavar="MD", help="also write the table as this setting's "
                    "section of this markdown file (e.g. BENCHMARKS.md), replacing it")
    return ap


def configs(args) -> tuple[dict, dict, dict]:
    """-> (EPO settings by role, the reference's settings off Table 1, fluentdream's). The
    reference searches as published: no retokenization rule (the judge applies it to both)."""
    theirs = {} if args.reference_topk is None else dict(topk=args.reference_topk)
    options = {k: getattr(args, k) for k in OWN_OPTIONS if getattr(args, k, None) is not None}
    paper = fd.EPOConfig(iters=args.iters)                 # Table 1 settings otherwise
    return ({"reference": paper.replace(retokenize=False, **theirs),
             "fluentdream": paper.replace(**options)}, theirs, options)


def check(args) -> None:
    """One-line errors before anything loads."""
    if not args.reference:
        raise fd.UserError("give --reference PATH (a checkout of Confirm-Solutions/dreamy) "
                           "or --from-json PATH")
    for name in ("seeds", "iters", "threads", "reference_seeds", "stop_at_goal", "pilot"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise fd.UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def out_path(args, theirs: dict, options: dict) -> Path:
    name = f"time_to_quality_{Path(args.model).name}"
    if theirs or options:                                # never overwrite the paper-rules file
        tag = options_text({f"reference_{k}": v for k, v in theirs.items()} | options)
        name += "_" + re.sub(r"[^A-Za-z0-9.]+", "-", tag)
    return Path(args.json or ROOT / "benchmarks" / (name + ("_pilot" if args.pilot else "") + ".json"))


def run(args) -> dict:
    """Validate, load, measure every target (or the pilot); returns what --json holds."""
    check(args)
    cfgs, theirs, options = configs(args)
    module = ref.load_reference(args.reference)
    torch.set_num_threads(args.threads)
    meta = dict(command="python benchmarks/time_to_quality.py " + shlex.join(args.argv),
                model_name=args.model, cpu=cpu_name(), threads=args.threads,
                fluentdream_dtype=args.dtype, reference_dtype=args.reference_dtype,
                stop_at_goal=args.stop_at_goal, config=cfgs["reference"].to_dict(),
                reference_options=theirs, fluentdream_options=options,
                torch=torch.__version__, reference_sha=ref.checkout_sha(args.reference),
                fluentdream_sha=ref.checkout_sha(ROOT))
    out = out_path(args, theirs, options)
    if args.pilot:
        result = dict(meta=meta, pilot=pilot(args, module, cfgs))
        doc = json.dumps(result, indent=1).encode()
        atomic_write(out, lambda fh: fh.write(doc))
        return result
    models = load_models(args.model, (args.dtype, args.reference_dtype))
    lms = {"fp32": models["float32"], "fluentdream": models[args.dtype],
           "reference": models[args.reference_dtype.split("-")[0]]}
    n_ref = args.seeds if args.reference_seeds is None else args.reference_seeds
    seeds = {"fluentdream": list(range(args.seeds)), "reference": list(range(n_ref))}
    meta.update(model=repr(lms["fp32"]), seeds=seeds["fluentdream"],
                reference_seeds=seeds["reference"])
    rows: list[dict] = []
    for spec in args.targets or DEFAULT_TARGETS:
        rows += race(module, lms, spec, cfgs, seeds, args.stop_at_goal,
                     fp32_logits=args.reference_dtype.endswith("-ce"), cache=args.reference_cache)
        doc = json.dumps(dict(meta=meta, runs=rows, summary=summarize(rows)), indent=1).encode()
        atomic_write(out, lambda fh: fh.write(doc))          # a stopped run keeps its targets
    return dict(meta=meta, runs=rows, summary=summarize(rows))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        if args.from_json:
            try:
                result = read_results(args.from_json)
            except ValueError as err:
                raise fd.UserError(f"--from-json: {err}") from None
        else:
            result = run(args)
    except fd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "pilot" in result:
        table = pilot_markdown(result["pilot"], DTYPES)
        print(table)
        if args.report:
            meta, p = result["meta"], result["pilot"]
            heading = f"## Best settings for time to quality: {meta['model_name']} on {meta['cpu']}"
            replace_section(Path(args.report), heading + "\n", (
                f"{heading}\n\n`{meta['command']}` ({meta['threads']} thread(s); {p['target']}, "
                f"seeds {p['seeds']}, one run at a time; fluentdream {meta['fluentdream_sha']}). "
                "Each side's goal: the lower median of its own runs' final hypervolumes; the "
                "chosen setting has the lowest median time to it.\n\n" + table + "\n"))
        return 0
    print(markdown(result["summary"], result["meta"]["config"]["iters"]))
    if args.report:
        splice_section(Path(args.report), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
