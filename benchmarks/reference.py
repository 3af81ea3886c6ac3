"""Benchmark: fluentdream's EPO against the published reference implementation, given by path.

    git clone https://github.com/Confirm-Solutions/dreamy /tmp/dreamy      # never vendored here
    python benchmarks/reference.py --reference /tmp/dreamy --threads 2     # BENCHMARKS.md's table
    python benchmarks/reference.py --reference /tmp/dreamy --iters 2 --seeds 1 --target L1.N840
    python benchmarks/reference.py --from-json benchmarks/reference_results.json   # tables again

Both implementations run in this process on one HF model, in fp32, with one torch thread count and
the paper's settings (Table 1: M 8, r 32, k 512, n 12, restart every 30, slot penalties log-spaced
in [0.1, 10], restart penalty in [0.667, 6]) for the same number of iterations, for every (target,
seed); which one goes first alternates between seeds, so machine load hits both alike.

The reference optimizes fluentdream's target through `ReferenceObjective`, its `cache_run`: the
same hooks and target definition, and the same rejection rules (banned goal text, failed
retokenization: target -inf) for the prompts it is given as ids, so its values equal
`Scorer.score` and both optimize one objective. Every candidate of the reference's history becomes
a fluentdream History (`to_history`), re-checked against those rules (the reference scores its
initial prompts, drawn from the whole vocabulary, through embeddings, where no rule applies), and
both are measured alike, on all candidates of a run:

- best activation: the highest target of any candidate;
- best in distribution: the highest target among candidates with CE under the in-distribution
  threshold, mean + 2 SD of the self-CE of 12-token corpus slices (paper §3; computed with
  fluentdream.calibration as experiment 01 does, or given with --threshold);
- hypervolume: fluentdream.frontier_quality of the Pareto frontier of all candidates, above one
  reference point per target for both implementations: the worst CE and lowest activation among
  fluentdream's random initial prompts over the seeds (as in benchmarks/run.py);
- seconds per iteration: wall time of the whole call divided by the iterations, and the median
  of the iterations' own times (without the set-up before the first);
- candidates rejected: the fraction of a run's candidates that break those rules.

Reported per target: mean ± SD over seeds for each implementation, and the paired difference
(fluentdream - reference) per (target, seed): mean, 95% bootstrap interval, and the Wilcoxon
signed-rank p (scipy; with 5 seeds a target's p cannot go below 0.0625, so all pairs are also
pooled). Writes --json atomically after every target (a stopped run keeps the targets it
finished) and prints a markdown table at the end (also to --markdown if given).

The reference's quirks, worked around and not fixed: its `callback` is called with `final=True`
(and its `callback=False` stops at iteration 0), so a quiet callback taking **kwargs is passed; it
prints a line at every restart (silenced); its restart keeps the pool member that is best at
lambda = restart_xentropy (2.0) whatever lambda it draws; its gradient for row i uses the penalty
of slot i in row order, not of the slot the prompt came from; it seeds torch's global RNG.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import fluentdream as fd
from fluentdream import calibration
from fluentdream.corpus import DataSource
from fluentdream.evaluate import Scorer
from fluentdream.hooks import capture
from fluentdream.history import atomic_write

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("fluentdream", "reference")
METRICS = ("best", "best_in_dist", "hypervolume")
DEFAULT_TARGETS = ("L1.N840", "logit: function", "L2.N7", "resid:L2:0", "L1.N660")


class ReferenceObjective:
    """The reference's `cache_run` for a fluentdream target on `lm`.

    Called with input_ids (B, n) or inputs_embeds (B, n, d); returns {"target": (B,) float32,
    "logits": (B, n, V)}. Prompts given as ids that fluentdream rejects score -inf, as in
    `Scorer.score`; embeddings (the reference's gradient pass) carry no text to check.
    """

    def __init__(self, lm, target: fd.Target, retokenize: bool = True):
        self.lm, self.target = lm, target
        self.rules = Scorer(lm, target, retokenize=retokenize)    # only its rejection rules

    def __call__(self, input_ids: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None) -> dict:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("cache_run takes exactly one of input_ids and inputs_embeds")
        with capture(self.lm, self.target.sites) as acts:
            out = self.lm.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        f = self.target.value(acts, out.logits).float()              # (B,)
        if input_ids is not None:
            bad = torch.from_numpy(self.rules.rejected(input_ids.cpu())).to(f.device)
            f = torch.where(bad, -torch.inf, f)
        return {"target": f, "logits": out.logits}


def load_reference(path: str):
    """Import dreamy.epo from a checkout of Confirm-Solutions/dreamy at `path`."""
    root = Path(path).expanduser().resolve()
    if not (root / "dreamy" / "epo.py").is_file():
        raise fd.UserError(f"--reference {path!r} is not a checkout of Confirm-Solutions/dreamy; give "
                         "the folder that holds dreamy/epo.py")
    sys.path.insert(0, str(root))
    return importlib.import_module("dreamy.epo")


def _quiet(*args, **kwargs) -> None:
    """The reference's callback: never stops the run (it calls it with final=True at the end)."""


def _stamping(stamps: list) -> Callable:
    """A reference callback that never stops the run and appends (wall, process CPU) seconds
    each time it is called: before every iteration and once at the end, so the (T + 1) stamps
    bracket every iteration, its gradient pass included."""
    def callback(*args, **kwargs) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
    return callback


def run_reference(module, lm, target: fd.Target, cfg: fd.EPOConfig,
                  stamps: list | None = None) -> tuple[object, float]:
    """One reference run with cfg's settings -> (its History, wall seconds); `stamps`, if
    given, receives (wall, CPU) clock readings at the start, before each iteration and at the
    end: T + 2 of them, the end of iteration t (1-based) at stamps[t + 1]."""
    lo, hi = cfg.restart_xentropy_min, cfg.restart_xentropy_max
    t0 = time.perf_counter()
    if stamps is not None:
        stamps.append((t0, time.process_time()))
    with contextlib.redirect_stdout(io.StringIO()):          # it prints every restart
        hist = module.epo(
            ReferenceObjective(lm, target, cfg.retokenize), lm.model, lm.tokenizer,
            seq_len=cfg.seq_len, population_size=cfg.population_size, iters=cfg.iters,
            explore_per_pop=cfg.explore_per_pop, batch_size=cfg.batch_size, topk=cfg.topk,
            x_penalty_min=cfg.x_penalty_min, x_penalty_max=cfg.x_penalty_max,
            restart_frequency=cfg.restart_frequency,
            # its restart range is [c / m, c * m]: c = sqrt(lo * hi), m = sqrt(hi / lo)
            restart_xentropy=math.sqrt(lo * hi), restart_xentropy_max_mult=math.sqrt(hi / lo),
            seed=cfg.seed, callback=_quiet if stamps is None else _stamping(stamps))
    return hist, time.perf_counter() - t0


def to_history(ref_hist, lambdas: np.ndarray, rules: Scorer) -> fd.History:
    """The reference's History (ids (T, P, n), target/xentropy (T, P), keep (T, M), runtime (T,))
    -> a fluentdream History; prompts `rules` rejects get target -inf and CE nan, as ours do."""
    ids = np.asarray(ref_hist.ids)
    T, P, n = ids.shape
    flat = torch.from_numpy(ids.reshape(T * P, n).astype(np.int64))
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    bad = torch.from_numpy(rules.rejected(uniq))[inverse].numpy().reshape(T, P)
    target = np.where(bad, -np.inf, np.asarray(ref_hist.target, dtype=np.float32))
    xentropy = np.where(bad, np.nan, np.asarray(ref_hist.xentropy, dtype=np.float32))
    hist = fd.History(lambdas=np.asarray(lambdas, dtype=np.float64),
                      meta=dict(implementation="reference"))
    for t in range(T):
        hist.append(ids[t], target[t], xentropy[t], ref_hist.keep[t], np.nan,
                    ref_hist.runtime[t], P - len(lambdas))
    return hist


def run_metrics(hist: fd.History, threshold: float, ref_point: tuple[float, float]) -> dict:
    """best, best_in_dist (nan when no candidate has CE < threshold), hypervolume of one run,
    and the fraction of its candidates that were rejected."""
    _, f, ce = hist.candidates()
    under = f[ce < threshold]
    front = fd.pareto_frontier([hist])
    return dict(best=float(f.max()) if len(f) else float("nan"),
                best_in_dist=float(under.max()) if len(under) else float("nan"),
                hypervolume=fd.frontier_quality(front, *ref_point),
                rejected=1 - len(f) / hist.arrays()["target"].size)


def reference_point(initial: list[tuple[float, float]]) -> tuple[float, float]:
    """(CE, f) of random initial prompts -> (worst CE, lowest f): the hypervolume's corner."""
    return max(c for c, _ in initial), min(f for _, f in initial)


def threshold_from_corpus(lm, dataset: str, split: str, n: int) -> float:
    """Mean + 2 SD of the self-CE of n-token corpus slices (experiment 01's sample)."""
    table = calibration.fluency_calibration(lm, DataSource(dataset, split=split))
    return calibration.in_distribution_threshold(table, n=n)


def _wilcoxon_p(d: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of paired differences; None without scipy."""
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        return None
    if len(d) == 0 or not np.any(d):
        return 1.0 if len(d) else float("nan")
    return float(wilcoxon(d).pvalue)


def paired(ours: np.ndarray, theirs: np.ndarray, seed: int = 0) -> dict:
    """(S,), (S,) one metric per (target, seed) -> mean difference ours - theirs, its 95%
    bootstrap interval, Wilcoxon p, and how many pairs each side wins (nan pairs dropped)."""
    d = np.asarray(ours, float) - np.asarray(theirs, float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return dict(mean=float("nan"), ci=[float("nan")] * 2, p=None, ahead=0, behind=0, pairs=0)
    boot = np.random.default_rng(seed).choice(d, (10_000, len(d))).mean(1)
    return dict(mean=float(d.mean()), ci=[float(x) for x in np.percentile(boot, [2.5, 97.5])],
                p=_wilcoxon_p(d), ahead=int((d > 0).sum()), behind=int((d < 0).sum()),
                pairs=len(d))


def _mean_sd(v: np.ndarray) -> dict:
    """(S,) -> mean and SD (ddof 1) of the finite values, and how many there are."""
    v = v[np.isfinite(v)]
    return dict(mean=float(v.mean()) if len(v) else float("nan"),
                sd=float(v.std(ddof=1)) if len(v) > 1 else 0.0, runs=len(v))


def summarize(runs: list[dict]) -> dict:
    """Rows {target, implementation, seed, metrics..., sec_per_iter} -> per target: mean/SD per
    implementation and the paired comparison per metric; "all": pairs of every target pooled."""
    def column(rows, impl, key):     # (S,) ordered by seed, so the two sides pair up
        return np.array([r[key] for r in sorted(rows, key=lambda r: r["seed"])
                         if r["implementation"] == impl], float)

    out: dict = {}
    targets = list(dict.fromkeys(r["target"] for r in runs))
    for name in targets:
        rows = [r for r in runs if r["target"] == name]
        out[name] = dict(
            stats={impl: {key: _mean_sd(column(rows, impl, key))
                          for key in METRICS + ("sec_per_iter", "median_iter", "rejected")}
                   for impl in IMPLEMENTATIONS},
            paired={m: paired(column(rows, "fluentdream", m), column(rows, "reference", m))
                    for m in METRICS})
    out["all"] = dict(paired={m: paired(
        np.concatenate([column([r for r in runs if r["target"] == t], "fluentdream", m)
                        for t in targets]),
        np.concatenate([column([r for r in runs if r["target"] == t], "reference", m)
                        for t in targets])) for m in METRICS})
    return out


def _cell(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['sd']:.2f}" if s["runs"] else "none"


def _diff(p: dict) -> str:
    if p["pairs"] == 0:
        return "—"
    pval = "p n/a (no scipy)" if p["p"] is None else f"p = {p['p']:.3g}"
    return (f"{p['mean']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}], {pval}, "
            f"{p['ahead']}/{p['behind']}")


def markdown(summary: dict, threshold: float) -> str:
    """The two tables: per target and implementation; paired differences."""
    head = (f"| target | implementation | best activation | best at CE < {threshold:.2f} "
            "| hypervolume | s / iteration | median iteration s | candidates rejected |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    targets = [t for t in summary if t != "all"]
    for t in targets:
        for impl in IMPLEMENTATIONS:
            s = summary[t]["stats"][impl]
            lines.append(f"| {t} | {impl} | " + " | ".join(_cell(s[m]) for m in METRICS)
                         + f" | {s['sec_per_iter']['mean']:.3f} | {s['median_iter']['mean']:.3f} "
                         f"| {s['rejected']['mean']:.1%} |")
    lines += ["", "Paired per (target, seed), fluentdream − reference: mean difference [95% "
              "bootstrap interval], Wilcoxon signed-rank p, seeds where fluentdream is ahead / "
              "behind.", "",
              "| target | best activation | best in distribution | hypervolume |",
              "|---|---|---|---|"]
    for t in targets + ["all"]:
        label = "all targets (p and counts only)" if t == "all" else t
        cells = [_diff(summary[t]["paired"][m]) for m in METRICS]
        if t == "all":   # scales differ between targets: a pooled mean would mean nothing
            cells = [c.split("], ", 1)[-1] if "]" in c else c for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_target(module, lm, target: fd.Target, cfg: fd.EPOConfig, seeds: list[int],
               threshold: float) -> list[dict]:
    """Both implementations on every seed of one target -> one metrics row per run."""
    rules = Scorer(lm, target, retokenize=cfg.retokenize)
    hists, seconds = {}, {}
    for seed in seeds:
        c = cfg.replace(seed=seed)
        for impl in (IMPLEMENTATIONS if seed % 2 == 0 else IMPLEMENTATIONS[::-1]):
            if impl == "fluentdream":
                t0 = time.perf_counter()
                hists[impl, seed] = fd.epo(lm, target, c)
                seconds[impl, seed] = time.perf_counter() - t0
            else:
                ref, seconds[impl, seed] = run_reference(module, lm, target, c)
                hists[impl, seed] = to_history(ref, c.lambdas, rules)
            print(f"{target.name} seed {seed} {impl}: best {hists[impl, seed].best_target():.3f}, "
                  f"{seconds[impl, seed] / cfg.iters:.3f} s/iter", file=sys.stderr, flush=True)
    M = cfg.population_size
    initial = [(float(c), float(f)) for s in seeds
               for f, c in zip(hists["fluentdream", s].target[0][:M],
                               hists["fluentdream", s].xentropy[0][:M]) if np.isfinite(f)]
    point = reference_point(initial)
    return [dict(target=target.name, implementation=impl, seed=seed,
                 **run_metrics(hists[impl, seed], threshold, point),
                 seconds=seconds[impl, seed], sec_per_iter=seconds[impl, seed] / cfg.iters,
                 median_iter=float(np.median(hists[impl, seed].arrays()["seconds"])),
                 ref_point=list(point)) for seed in seeds for impl in IMPLEMENTATIONS]


def _checkout_sha(path: str) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference",
                    help="checkout of Confirm-Solutions/dreamy: the folder holding dreamy/epo.py "
                    "(needed unless --from-json)")
    ap.add_argument("--from-json", metavar="PATH",
                    help="run nothing: print the tables of a results file this script wrote "
                    "(also a stopped run's, with the targets it finished)")
    ap.add_argument("--model", default="embedded",
                    help="anything fd.load_model takes: embedded, a hub name, a local HF dir "
                    "(default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="device both implementations run on (default: %(default)s)")
    ap.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                    help="a target shorthand (fd.parse_target); repeat for several; default: "
                    + ", ".join(repr(t) for t in DEFAULT_TARGETS))
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every target (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=100, help="EPO iterations of every run (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch intra-op threads for both implementations (default: this "
                    "machine's, %(default)s)")
    ap.add_argument("--threshold", type=float,
                    help="in-distribution CE threshold; default: mean + 2 SD of the self-CE of "
                    "12-token slices of --calibration-dataset (fluentdream.calibration)")
    ap.add_argument("--calibration-dataset", default="embedded",
                    help="corpus for the threshold (fd.corpus.DataSource name or path; "
                    "default: %(default)s)")
    ap.add_argument("--calibration-split", default="validation", help="its split (default: %(default)s)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "reference_results.json"),
                    help="where the per-run rows, summary and settings go (written atomically; "
                    "default: %(default)s)")
    ap.add_argument("--markdown", help="also write the markdown tables to this file")
    return ap


def load_results(path: str) -> dict:
    """A results file written by this script, its summary recomputed from the runs."""
    try:
        result = json.loads(Path(path).read_text())
        result["summary"] = summarize(result["runs"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise fd.UserError(f"--from-json {path!r} is not a results file of this script "
                           f"({type(err).__name__}: {err})") from None
    return result


def check_run_args(args) -> None:
    """--reference given; --seeds, --iters and --threads at least 1 (else a one-line UserError)."""
    if not args.reference:
        raise fd.UserError("give --reference PATH (a checkout of Confirm-Solutions/dreamy) "
                           "or --from-json PATH")
    for name in ("seeds", "iters", "threads"):
        if getattr(args, name) < 1:
            raise fd.UserError(f"--{name} must be at least 1, got {getattr(args, name)}")


def run(args) -> dict:
    """Validate, load, measure every target; returns what --json holds."""
    check_run_args(args)
    for out in filter(None, (args.json, args.markdown)):     # fail now, not after the runs
        folder = Path(out).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise fd.UserError(f"cannot write {out!r}: {str(folder)!r} is not a writable folder")
    module = load_reference(args.reference)
    torch.set_num_threads(args.threads)
    lm = fd.load_model(args.model, device=args.device, dtype="float32")
    targets = [fd.parse_target(spec, lm) for spec in (args.targets or DEFAULT_TARGETS)]
    cfg = fd.EPOConfig(iters=args.iters)              # Table 1 everywhere else
    threshold = args.threshold if args.threshold is not None else threshold_from_corpus(
        lm, args.calibration_dataset, args.calibration_split, cfg.seq_len)
    meta = dict(command="python benchmarks/reference.py " + shlex.join(args.argv),
                model=repr(lm), threads=args.threads, config=cfg.to_dict(),
                seeds=list(range(args.seeds)), threshold=threshold,
                threshold_source=("--threshold" if args.threshold is not None else
                                  f"{args.calibration_dataset}:{args.calibration_split}, "
                                  f"mean + 2 SD of {cfg.seq_len}-token slices"),
                reference_sha=_checkout_sha(args.reference), fluentdream_sha=_checkout_sha(ROOT),
                machine=platform.processor() or platform.machine(), torch=torch.__version__)
    runs: list[dict] = []
    for t in targets:       # saved after every target: a stopped run keeps what it finished
        runs += run_target(module, lm, t, cfg, list(range(args.seeds)), threshold)
        result = dict(meta=meta, runs=runs, summary=summarize(runs))
        doc = json.dumps(result, indent=1).encode()
        atomic_write(Path(args.json), lambda fh: fh.write(doc))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        result = load_results(args.from_json) if args.from_json else run(args)
    except fd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = markdown(result["summary"], result["meta"]["threshold"])
    if args.markdown:
        atomic_write(Path(args.markdown), lambda fh: fh.write(table.encode() + b"\n"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
