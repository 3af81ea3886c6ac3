"""Benchmark: the restart penalty as the paper draws it against a fixed one, paired by seed
(issue 13: where fluentdream's frontier trails the reference implementation's on SmolLM2).

    python benchmarks/restart_penalty.py --threads 2 --iters 300 --seeds 10 --report BENCHMARKS.md
    python benchmarks/restart_penalty.py --model smollm2-135m --target L8.N1371 --iters 100 \
        --seeds 8 --threads 2 --reference /tmp/dreamy --reference-seeds 6 --report BENCHMARKS.md
    python benchmarks/restart_penalty.py --iters 4 --seeds 2 --target L1.N840   # a smoke run

At every restart (paper §2, Table 1) all slots take the pool member maximizing f - lambda_r * CE,
lambda_r ~ U[0.667, 6]; the reference implementation draws lambda_r and then selects at 2.0
(DESIGN §4). Both rules run here on the same seeds (the same initial prompts and random stream:
every restart mode draws lambda_r once), all runs of a target batched in one call, in
`fd.fast_dtype` unless --dtype says otherwise. Measured: the fp32 hypervolume of each run's
frontier (all candidates up to t, re-scored in fp32; one corner per target from the runs' initial
prompts, as benchmarks/time_to_quality.py does) at t = T/3, 2T/3 and T, and per t the paired
difference fixed - drawn: mean, 95% bootstrap interval, Wilcoxon p, seeds ahead / behind.
With --reference (a checkout of Confirm-Solutions/dreamy, run as benchmarks/time_to_quality.py
runs it: same dtype, same rules, its frontier re-scored in fp32) the reference's own runs are
measured alike on seeds 0..--reference-seeds - 1; they draw their own initial prompts, so they
are compared with each rule unpaired (Mann-Whitney p). Writes --json atomically after every
target.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream.evaluate import Scorer
from fluentdream.history import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402  (paired statistics)
import time_to_quality as ttq  # noqa: E402  (fp32 hypervolume, corner)
from run import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Restart penalty: drawn (the paper) against fixed (the reference)"


def rules_of(cfg: fd.EPOConfig, fixed: float) -> dict[str, fd.EPOConfig]:
    """The two restart rules on one configuration."""
    return {"drawn": cfg, "fixed": cfg.replace(restart_xentropy_min=fixed,
                                               restart_xentropy_max=fixed)}


def run_target(lm, lm32, spec: str, cfg: fd.EPOConfig, seeds: list[int], fixed: float,
               module=None, ref_seeds: tuple[int, ...] = ()) -> dict:
    """Both rules on every seed of one target (and the reference `module` on ref_seeds) ->
    {rule: (S, 3) hypervolumes at T/3, 2T/3, T}."""
    target, target32 = fd.parse_target(spec, lm), fd.parse_target(spec, lm32)
    rescore = Scorer(lm32, target32)
    corner = ttq.initial_corner(lm32, target32, cfg, seeds, rescore)
    jobs = [(rule, s, c.replace(seed=s)) for rule, c in rules_of(cfg, fixed).items() for s in seeds]
    print(f"{spec}: {len(jobs)} runs of {cfg.iters} iterations, batched", flush=True)
    every = max(1, cfg.iters // 10)

    def progress(job: int, report) -> None:                  # long work shows progress
        if job == 0 and (report.iteration + 1) % every == 0:
            print(f"{spec}: iteration {report.iteration + 1} of {cfg.iters}", flush=True)
    hists = fd.batched.epo_many(lm, [(target, c) for *_, c in jobs], callback=progress)
    at = sorted({max(1, cfg.iters * k // 3) for k in (1, 2, 3)})
    hv: dict[str, list] = {rule: [] for rule in rules_of(cfg, fixed)}
    for (rule, _, _), h in zip(jobs, hists):
        hv[rule].append([ttq.fp32_hypervolume(h, t, None if lm.dtype == torch.float32 else rescore,
                                              corner) for t in at])
    if module is not None:
        print(f"{spec}: the reference on seeds 0..{ref_seeds[-1]}", flush=True)
        runs = ttq.run_reference(module, lm, target, cfg, list(ref_seeds), rescore)
        hv["reference"] = [[ttq.fp32_hypervolume(h, t, None if lm.dtype == torch.float32
                                                 else rescore, corner) for t in at]
                           for h, _ in runs]
    return dict(target=spec, at=at, corner=corner, hypervolume=hv)


def summarize(row: dict) -> list[dict]:
    """Per t: each rule's median, the paired difference fixed - drawn, and with the reference
    its median and the Mann-Whitney p of each rule against it."""
    hv = {r: np.asarray(v, float) for r, v in row["hypervolume"].items()}
    out = []
    for j, t in enumerate(row["at"]):
        s = dict(t=t, **{r: float(np.median(v[:, j])) for r, v in hv.items()},
                 **ref.paired(hv["fixed"][:, j], hv["drawn"][:, j]))
        if "reference" in hv:
            from scipy.stats import mannwhitneyu
            s["p_reference"] = {r: float(mannwhitneyu(hv[r][:, j], hv["reference"][:, j]).pvalue)
                                for r in ("drawn", "fixed")}
        out.append(s)
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    with_ref = bool(meta.get("reference_seeds"))
    ref_text = (f"; the reference {meta['reference_sha']} on seeds 0..{meta['reference_seeds'][-1]}"
                if with_ref else "")
    lines = [f"`{meta['command']}` ({meta['model']}, {meta['dtype']}, {meta['threads']} "
             f"thread(s), seeds {meta['seeds'][0]}..{meta['seeds'][-1]}, fixed penalty "
             f"{meta['fixed']}; fluentdream {meta['fluentdream_sha']}{ref_text}). Hypervolume of "
             "the fp32 frontier of all candidates up to t; definitions: the docstring of "
             "benchmarks/restart_penalty.py.", "",
             "| target | t | median drawn (paper) | median fixed | fixed - drawn [95% CI] | "
             "Wilcoxon p | seeds fixed ahead / behind |"
             + (" median reference | Mann-Whitney p vs reference (drawn, fixed) |" if with_ref
                else ""), "|---|---|---|---|---|---|---|" + ("---|---|" if with_ref else "")]
    for row in result["rows"]:
        for s in summarize(row):
            p = "—" if s["p"] is None else f"{s['p']:.3g}"
            line = (f"| {row['target']} | {s['t']} | {s['drawn']:.2f} | {s['fixed']:.2f} | "
                    f"{s['mean']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}] | {p} | "
                    f"{s['ahead']} / {s['behind']} |")
            if with_ref:
                line += (f" {s['reference']:.2f} | {s['p_reference']['drawn']:.3g}, "
                         f"{s['p_reference']['fixed']:.3g} |")
            lines.append(line)
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="anything fd.load_model takes")
    ap.add_argument("--target", action="append", dest="targets", metavar="SPEC",
                    help="a target shorthand; repeat for several; default: "
                    + ", ".join(repr(t) for t in ttq.DEFAULT_TARGETS))
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=300, help="iterations (default: %(default)s)")
    ap.add_argument("--fixed", type=float, default=2.0,
                    help="the fixed restart penalty (default: %(default)s, the reference's)")
    ap.add_argument("--reference", help="also run the reference implementation from this "
                    "checkout of Confirm-Solutions/dreamy (the folder holding dreamy/epo.py)")
    ap.add_argument("--reference-seeds", type=int, metavar="N",
                    help="the reference's seeds 0..N-1 (default: --seeds)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="auto = fd.fast_dtype (default: %(default)s)")
    ap.add_argument("--json", help="results file (atomic; default: "
                    "benchmarks/restart_penalty_MODEL.json)")
    ap.add_argument("--report", metavar="MD", help=f"also write the '{SECTION}: MODEL' section "
                    "of this markdown file, replacing it")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    try:
        for name, v in (("--seeds", args.seeds), ("--iters", args.iters),
                        ("--threads", args.threads)):
            if v < 1:
                raise fd.UserError(f"{name} must be at least 1, got {v}")
        if args.fixed <= 0:
            raise fd.UserError(f"--fixed must be a positive penalty, got {args.fixed}")
        n_ref = (args.seeds if args.reference_seeds is None else args.reference_seeds
                 ) if args.reference else 0
        if args.reference and n_ref < 1:
            raise fd.UserError(f"--reference-seeds must be at least 1, got {n_ref}")
        module = ref.load_reference(args.reference) if args.reference else None
        torch.set_num_threads(args.threads)
        dtype = fd.fast_dtype("cpu") if args.dtype == "auto" else args.dtype
        lm32 = fd.load_model(args.model, dtype="float32")
        lm = lm32 if dtype == "float32" else fd.load_model(args.model, dtype=dtype)
        cfg = fd.EPOConfig(iters=args.iters)
        seeds = list(range(args.seeds))
        meta = dict(command="python benchmarks/restart_penalty.py " + shlex.join(argv),
                    model=args.model, dtype=dtype, threads=args.threads, seeds=seeds,
                    fixed=args.fixed, config=cfg.to_dict(), torch=torch.__version__,
                    fluentdream_sha=ref._checkout_sha(ROOT), reference_seeds=list(range(n_ref)),
                    reference_sha=ref._checkout_sha(args.reference) if args.reference else None)
        out = Path(args.json or ROOT / "benchmarks" /
                   f"restart_penalty_{Path(args.model).name}.json")
        result = dict(meta=meta, rows=[])
        for spec in args.targets or ttq.DEFAULT_TARGETS:
            result["rows"].append(run_target(lm, lm32, spec, cfg, seeds, args.fixed, module,
                                             tuple(range(n_ref))))
            doc = json.dumps(result, indent=1).encode()
            atomic_write(out, lambda fh: fh.write(doc))
            print(f"{spec}: done", flush=True)
    except fd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    print(f"results: {out}")
    if args.report:
        replace_section(Path(args.report), f"{SECTION}: {args.model}\n",
                        f"{SECTION}: {args.model}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
