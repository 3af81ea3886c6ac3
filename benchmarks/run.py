"""Benchmark: fluentdream's EPO against a plain implementation of the same algorithm (DESIGN §10).

    python benchmarks/run.py                                   # embedded model, paper settings
    python benchmarks/run.py --iters 300 --threads 2,1         # what BENCHMARKS.md records
    python benchmarks/run.py --model-config benchmarks/configs/pythia-1.4b.json --device cuda \
        --dtypes bfloat16 --methods fluentdream               # random-init Pythia on a GPU
    python benchmarks/run.py --quick                           # smoke test, seconds

In one process, for each thread count: (a) `plain_epo` (no savings, fp32) and (b) `fd.epo` in each
dtype run the same seeds, interleaved (method order rotating per seed) so that machine load hits
them alike; medians of per-iteration seconds give the speed. At the first thread count, (c) all
seeds also run as one batched job (`fd.batched.epo_many`), reported per run. Frontier quality (hypervolume above a
stated reference point) is compared at equal iterations; bf16 runs' frontier points are re-scored
in fp32 first. Achieved FLOP/s of candidate scoring is compared with a large square matmul in the
same dtype and thread count. Writes BENCHMARKS.md (or --out) and results.json, and prints both.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fluentdream as fd  # noqa: E402
from fluentdream.core.scoring import Scorer  # noqa: E402
from fluentdream.models.hardware import cpu_name  # noqa: E402
from fluentdream.files import atomic_write  # noqa: E402
from plain_epo import plain_epo, plain_score  # noqa: E402
from sections import replace_section, split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Speed per iteration against the plain algorithm"


class TimedScorer(Scorer):
    """A Scorer that adds up the seconds spent scoring candidates and computing gradients."""
    seconds = gradient_seconds = 0.0

    def score_counted(self, *args, **kwargs):          # what the EPO loop calls
        t0 = time.perf_counter()
        out = super().score_counted(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out

    def gradients(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = super().gradients(*args, **kwargs)
        self.gradient_seconds += time.perf_counter() - t0
        return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, size: int, reps: int = 5) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul, median of `reps`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def flops_per_token(lm, seq_len: int) -> float:
    """2 x every weight matrix (projections, MLP, unembedding) + attention scores and mixing."""
    mats = sum(m.weight.numel() for m in lm.model.modules()
               if type(m).__name__ in ("Linear", "Conv1D"))
    return 2 * mats + 4 * lm.n_layers * seq_len * lm.d_model


def load(args, dtype: str):
    if args.model_config:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        config = AutoConfig.from_pretrained(args.model_config)
        for item in filter(None, args.config_override.split(",")):   # e.g. smoke-test sizes
            key, value = item.split("=")
            setattr(config, key, type(getattr(config, key))(value))
        torch.manual_seed(0)
        with torch.device(args.device):   # initialize in place: 12B parameters on the GPU
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                     dtype=fd.models.DTYPES[dtype])
        tok_dir = fd.models.EMBEDDED_DIR if args.tokenizer == "embedded" else args.tokenizer
        # The embedded tokenizer's ids are a subset of the config's vocabulary; the costs
        # (full-vocabulary logits) are the model's.
        return fd.wrap_model(model, AutoTokenizer.from_pretrained(tok_dir), Path(args.model_config).stem)
    return fd.load_model(args.model, device=args.device, dtype=dtype)


def frontier(hist, lm32, target, batch_size, rescore: bool) -> tuple[np.ndarray, np.ndarray]:
    """(f, ce) of the run's frontier points; a bf16 run's points are re-scored in fp32."""
    front = fd.pareto_frontier([hist])
    if not rescore or not len(front):
        return front.target, front.xentropy
    f, ce = plain_score(lm32, target, torch.from_numpy(front.ids).long(), batch_size)
    return f.numpy(), ce.numpy()


def run_one(method: str, lm, lm32, target, cfg) -> dict:
    n = cfg.seq_len
    if method == "plain":
        timer = {}
        t0 = time.perf_counter()
        hist = plain_epo(lm, target, cfg, timer)
        total = time.perf_counter() - t0
        executed, score_s, grad_s = timer["score_tokens"], timer["score_seconds"], timer["grad_seconds"]
    else:
        scorer = TimedScorer(lm, target, batch_size=cfg.batch_size, retokenize=cfg.retokenize)
        t0 = time.perf_counter()
        hist = fd.epo(lm, target, cfg, scorer=scorer)
        total = time.perf_counter() - t0
        executed, score_s, grad_s = scorer.counts["model_tokens"], scorer.seconds, scorer.gradient_seconds
    targets = np.concatenate(hist.target)
    return dict(seconds=list(hist.seconds), total=total, score_seconds=score_s, grad_seconds=grad_s,
                executed_tokens=executed, plain_tokens=cfg.iters * cfg.children * n,
                front=frontier(hist, lm32, target, cfg.batch_size, lm.dtype != torch.float32),
                initial=(float(np.max(hist.xentropy[0][:cfg.population_size])),
                         float(np.min(hist.target[0][:cfg.population_size]))),
                best=float(np.max(targets[np.isfinite(targets)])))


def run_batched(lm, lm32, target, cfg, seeds: int) -> list[dict]:
    """All seeds as one lockstep job (fd.batched.epo_many): one packed pass per iteration for
    every run. Per run, `seconds` is its share of each iteration's wall time."""
    scorer = TimedScorer(lm, [target], batch_size=cfg.batch_size * seeds, retokenize=cfg.retokenize)
    jobs = [(target, cfg.replace(seed=seed)) for seed in range(seeds)]
    t0 = time.perf_counter()
    hists = fd.batched.epo_many(lm, jobs, scorer=scorer)
    total = (time.perf_counter() - t0) / seeds
    share = lambda x: x / seeds                                     # noqa: E731
    return [dict(seconds=list(h.seconds), total=total, score_seconds=share(scorer.seconds),
                 grad_seconds=share(scorer.gradient_seconds),
                 executed_tokens=share(scorer.counts["model_tokens"]),
                 plain_tokens=cfg.iters * cfg.children * cfg.seq_len,
                 front=frontier(h, lm32, target, cfg.batch_size, lm.dtype != torch.float32),
                 best=float(max(np.max(t[np.isfinite(t)]) for t in h.target))) for h in hists]


def summarize(method, threads, runs, fpt, peak, ref, iters) -> dict:
    secs = [s for r in runs for s in r["seconds"][1:]]            # iteration 0 builds kernels
    score_s = sum(r["score_seconds"] for r in runs)
    return dict(method=method, threads=threads, sec_per_iter=statistics.median(secs),
                score_ms=1e3 * score_s / (iters * len(runs)),
                grad_ms=1e3 * sum(r["grad_seconds"] for r in runs) / (iters * len(runs)),
                executed_flops=sum(r["executed_tokens"] for r in runs) * fpt / score_s,
                effective_flops=sum(r["plain_tokens"] for r in runs) * fpt / score_s,
                peak=peak, ref=ref, quality=[fd.frontier_quality(r["front"], *ref) for r in runs],
                total=[r["total"] for r in runs], best=[r["best"] for r in runs])


def table(rows, children: int) -> list[str]:
    plain = next((r for r in rows if r["method"].startswith("plain")), None)
    lines = ["| method | dtype | s / iteration (median) | candidates / s | speed-up vs plain fp32 "
             "| frontier quality (mean ± sd) | scoring ms / iter | gradients ms / iter "
             "| scoring GFLOP/s executed | effective | matmul peak GFLOP/s | fraction of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = np.array(r["quality"])
        speed = plain["sec_per_iter"] / r["sec_per_iter"] if plain else float("nan")
        method, dtype = r["method"].split(":")
        method = method.replace("+batched", f" ({len(r['quality'])} runs batched, per run)")
        lines.append(
            f"| {method} | {dtype} | {r['sec_per_iter']:.4f} | {children / r['sec_per_iter']:.0f} | "
            f"{speed:.2f}x | {q.mean():.2f} ± {q.std():.2f} | {r['score_ms']:.1f} | {r['grad_ms']:.1f} | "
            f"{r['executed_flops'] / 1e9:.0f} | {r['effective_flops'] / 1e9:.0f} | "
            f"{r['peak'] / 1e9:.0f} | {r['executed_flops'] / r['peak']:.2f} |")
    return lines


def report(args, cfg, lm32, target, rows) -> str:
    minutes = sum(sum(r["total"]) for r in rows) / 60
    lines = [SECTION, "", "Per-iteration speed and throughput of fluentdream against the plain "
             "algorithm (the paper's loop with none of the savings, benchmarks/plain_epo.py).", "",
             f"Reproduce: `{args.command}` (about {minutes:.0f} min of runs here).", "",
             f"Model: {lm32!r}", f"Target: {target.name}; EPO settings: M={cfg.population_size}, "
             f"r={cfg.explore_per_pop}, k={cfg.topk}, n={cfg.seq_len}, T={cfg.iters} iterations, "
             f"seeds {list(range(args.seeds))}; restart every {cfg.restart_frequency}.",
             f"Machine: {cpu_name()}, {args.device}, torch "
             f"{torch.__version__}; load average at start {args.load}.", ""]
    for threads in sorted({r["threads"] for r in rows}, reverse=True):
        these = [r for r in rows if r["threads"] == threads]
        lines += [f"### {threads} intra-op thread(s)", ""] + table(these, cfg.children) + [""]
        lines += ["Per-seed frontier quality:", ""]
        lines += [f"- {r['method']}: " + ", ".join(f"{q:.2f}" for q in r["quality"]) for r in these]
        lines.append("")
    lines += [f"Frontier quality: hypervolume above the reference point CE {rows[0]['ref'][0]:.3f} "
              f"nats, activation {rows[0]['ref'][1]:.4f} (the worst CE and the lowest activation "
              "among the seeds' random initial prompts, fp32); larger is better. *Executed* FLOP/s "
              "counts the work done while scoring candidates (2 x weight-matrix parameters + "
              "attention per computed token, padding and parents included); *effective* counts the "
              "work the plain implementation does for the same candidates, so it shows what the "
              "savings buy. Matmul peak: a "
              f"{args.peak_size}x{args.peak_size} square matmul in that dtype and thread count.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--model-config", help="a config.json: random init, no weights needed")
    ap.add_argument("--config-override", default="", help="key=value,... e.g. num_hidden_layers=2")
    ap.add_argument("--tokenizer", default="embedded", help="tokenizer for --model-config")
    ap.add_argument("--target", help="default: L{layers//2}.N7")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="fluentdream dtypes")
    ap.add_argument("--methods", default="plain,fluentdream")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", default=str(torch.get_num_threads()),
                    help="comma-separated torch intra-op thread counts, each benchmarked in turn")
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--no-batched", dest="batched", action="store_false",
                    help="skip running all seeds as one batched job (first thread count only)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--extra", default=str(ROOT / "benchmarks" / "LIMITS.md"),
                    help="a markdown file appended to the report (what limits the rest)")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    cfg = fd.EPOConfig(iters=args.iters)
    if args.quick:
        cfg = cfg.replace(iters=2, population_size=2, explore_per_pop=4, topk=16)
        args.seeds, args.peak_size = min(args.seeds, 1), 256
    methods = ["plain:float32"] if "plain" in args.methods else []
    if "fluentdream" in args.methods:
        methods += [f"fluentdream:{d}" for d in args.dtypes.split(",")]
    lm32 = load(args, "float32")
    models = {m: (lm32 if m.endswith("float32") else load(args, m.split(":")[1])) for m in methods}
    target = fd.parse_target(args.target or f"L{lm32.n_layers // 2}.N7", lm32)
    fpt = flops_per_token(lm32, cfg.seq_len)
    rows, ref = [], None
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peaks = {d: matmul_peak(fd.models.DTYPES[d], args.device, args.peak_size)
                 for d in {m.split(":")[1] for m in methods}}
        results: dict[str, list] = {m: [] for m in methods}
        for seed in range(args.seeds):
            order = methods[seed % len(methods):] + methods[:seed % len(methods)]   # rotate
            for m in order:
                results[m].append(run_one(m.split(":")[0], models[m], lm32, target, cfg.replace(seed=seed)))
                print(f"threads {threads} seed {seed} {m}: {statistics.median(results[m][-1]['seconds']):.4f} "
                      f"s/iter, best {results[m][-1]['best']:.3f}", flush=True)
        if ref is None:   # frontier-quality reference: the random-prompt corner, one for all methods
            first = [r["initial"] for m in methods if m.endswith("float32") for r in results[m]]
            ref = (max(c for c, _ in first), min(f for _, f in first))
        rows += [summarize(m, threads, results[m], fpt, peaks[m.split(":")[1]], ref, cfg.iters)
                 for m in methods]
        if args.batched and threads == int(args.threads.split(",")[0]):
            for m in (m for m in methods if m.startswith("fluentdream")):
                runs = run_batched(models[m], lm32, target, cfg, args.seeds)
                print(f"threads {threads} {m} batched: {statistics.median(runs[0]['seconds']):.4f} "
                      "s/iter per run", flush=True)
                dtype = m.split(":")[1]
                rows.append(summarize(f"fluentdream+batched:{dtype}", threads, runs, fpt,
                                      peaks[dtype], ref, cfg.iters))
    text = report(args, cfg, lm32, target, rows)
    replace_section(Path(args.out), SECTION + "\n", text)
    extra = Path(args.extra).read_text() if args.extra and Path(args.extra).exists() else ""
    for section in split(extra)[1]:                    # LIMITS.md: its sections, each in its place
        replace_section(Path(args.out), section.splitlines()[0] + "\n", section)
    atomic_write(Path(args.json), lambda fh: fh.write(json.dumps(rows, indent=1).encode()))
    print(text)


if __name__ == "__main__":
    main()
