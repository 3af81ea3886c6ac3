"""Where an EPO iteration's time goes on a real model, per phase, with the fraction of this
machine's matmul peak (issue 13, item 4).

    python benchmarks/phases.py --model smollm2-135m --threads 2 --report BENCHMARKS.md

One run at paper settings (Table 1) in the given dtype, timed after a warm-up. Phases come from
timers around the Scorer's two entry points (packed scoring of the children; the gradient pass)
and, inside them, around the retokenization check, the unembedding + cross-entropy of the packed
tokens (`packed_nll`), and every attention and MLP module (forward hooks); the rest of the
iteration (mutate, select, restart, bookkeeping) is what is left of its wall time. A phase's
fraction of peak is its FLOPs (2 x weight-matrix parameters per token it processed, counted by
the Scorer and by the unembedding's rows) over its time, against a square matmul's rate here.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fluentdream as fd  # noqa: E402
from fluentdream.core.scoring import packed, packed_scoring  # noqa: E402
from fluentdream.core.scoring import scorer as scorer_module  # noqa: E402
from fluentdream.models.hardware import cpu_name  # noqa: E402
from fluentdream.files import atomic_write  # noqa: E402
from run import matmul_peak  # noqa: E402
from sections import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Where an iteration's time goes on a real model"


class Clock:
    """Seconds per (phase, part): the phase is what the Scorer is doing ("score", "gradients"),
    the part what runs inside it."""

    def __init__(self):
        self.phase, self.seconds, self.rows = None, defaultdict(float), 0

    def timed(self, part: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[self.phase, part] += time.perf_counter() - t0
        return wrapper

    def in_phase(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            self.phase = phase
            try:
                return self.timed("total", fn)(*args, **kwargs)
            finally:
                self.phase = None
        return wrapper

    def hook(self, module, part: str) -> list:
        """Time `module`'s forward calls under `part` (pre-hook starts, post-hook stops);
        returns the two hook handles."""
        start = []

        def stop(m, a, o):
            self.seconds[self.phase, part] += time.perf_counter() - start.pop()
        return [module.register_forward_pre_hook(lambda m, a: start.append(time.perf_counter())),
                module.register_forward_hook(stop)]


def weights(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def measure(lm, target, cfg: fd.EPOConfig, warmup: int) -> dict:
    """Run `warmup` iterations untimed, then cfg.iters more under the clock."""
    clock = Clock()
    scorer = fd.Scorer(lm, target, batch_size=cfg.batch_size, retokenize=cfg.retokenize)
    warm = fd.epo(lm, target, cfg.replace(iters=warmup), scorer=scorer, progress=False)
    blocks = {part: [m for name, m in lm.model.named_modules() if re.fullmatch(pattern, name)]
              for part, pattern in (("attention", r".*layers\.\d+\.(self_attn|attention)"),
                                    ("MLP", r".*layers\.\d+\.mlp"))}
    handles = [h for part, modules in blocks.items() for module in modules for h in clock.hook(module, part)]
    saved = packed_scoring.packed_nll, scorer_module.retokenizes, packed.unembed_rows, scorer.score_counted, scorer.gradients

    def counted(unembed, hidden, index):
        clock.rows += len(index)
        return saved[2](unembed, hidden, index)
    packed_scoring.packed_nll = clock.timed("unembedding + CE", saved[0])
    scorer_module.retokenizes = clock.timed("retokenization", saved[1])
    packed.unembed_rows = counted
    scorer.score_counted, scorer.gradients = clock.in_phase("score", saved[3]), clock.in_phase("gradients", saved[4])
    tokens0 = scorer.counts["model_tokens"]
    try:
        t0 = time.perf_counter()
        fd.epo(lm, target, cfg.replace(iters=warmup + cfg.iters), scorer=scorer, progress=False,
               resume=warm)
        wall = time.perf_counter() - t0
    finally:
        packed_scoring.packed_nll, scorer_module.retokenizes, packed.unembed_rows = saved[:3]
        for h in handles:
            h.remove()
    return dict(wall=wall, iters=cfg.iters, seconds={f"{k[0]}/{k[1]}": v for k, v in clock.seconds.items()},
                tokens=scorer.counts["model_tokens"] - tokens0, unembedded_rows=clock.rows,
                attention_weights=sum(map(weights, blocks["attention"])),
                mlp_weights=sum(map(weights, blocks["MLP"])), d_model=lm.d_model,
                vocab=lm.vocab_size)


def heading() -> str:
    """This CPU's section: a fraction of peak holds for the CPU that measured it."""
    return f"{SECTION} on {cpu_name()}"


def report(args, lm, m: dict, peak: float) -> str:
    it, sec = m["iters"], m["seconds"]
    get = lambda key: sec.get(key, 0.0)                                  # noqa: E731
    score, grad, retok = get("score/total"), get("gradients/total"), get("score/retokenization")
    unemb = get("score/unembedding + CE")
    attn, mlp = get("score/attention"), get("score/MLP")
    flops = dict(unemb=2 * m["unembedded_rows"] * m["d_model"] * m["vocab"],
                 mlp=2 * m["tokens"] * m["mlp_weights"], attn=2 * m["tokens"] * m["attention_weights"])
    rows = [("scoring: unembedding + cross-entropy over the vocabulary", unemb, flops["unemb"]),
            ("scoring: MLP blocks", mlp, flops["mlp"]),
            ("scoring: attention blocks (projections, n = 12 products)", attn, flops["attn"]),
            ("scoring: the rest (embeddings, norms, packing, padding, memo)",
             score - retok - unemb - attn - mlp, None),
            ("**scoring in all** (the three above: their FLOPs over all of scoring's time)",
             score - retok, sum(flops.values())),
            ("retokenization check (decode + encode of new children)", retok, None),
            (f"gradient pass ({lm.n_layers} layers, forward + backward)", grad, None),
            ("mutate, select, restart, bookkeeping", m["wall"] - score - grad, None)]
    lines = [heading(), "",
             f"`{args.command}`: {lm.name} ({lm.n_layers} layers, d_model {lm.d_model}, vocabulary "
             f"{lm.vocab_size:,}) in {args.dtype}, {args.threads} thread(s), target {args.target}, "
             f"paper settings (M = 8, r = 32, k = 512, n = 12), {it} iterations after "
             f"{args.warmup} of warm-up: {m['wall'] / it:.2f} s per iteration. {args.dtype} "
             f"matmul peak here: {peak / 1e9:.0f} GFLOP/s (a {args.peak_size}² square product).", "",
             "| phase | s / iteration | share | GFLOP/s | fraction of peak |",
             "|---|---:|---:|---:|---:|"]
    for name, s, flops in rows:
        rate = flops / s if flops and s > 0 else None
        lines.append(f"| {name} | {s / it:.3f} | {s / m['wall']:.0%} | "
                     + (f"{rate / 1e9:.0f} | {rate / peak:.0%} |" if rate else "— | — |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target", default="L15.N7")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--iters", type=int, default=5, help="profiled iterations")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--report", type=Path, help="replace (or append) this section in a markdown file")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "phases.json")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/phases.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    lm = fd.load_model(args.model, dtype=args.dtype)
    target = fd.parse_target(args.target, lm)
    m = measure(lm, target, fd.EPOConfig(iters=args.iters, seed=0, dtype=args.dtype), args.warmup)
    peak = matmul_peak(fd.models.DTYPES[args.dtype], "cpu", args.peak_size)
    text = report(args, lm, m, peak)
    atomic_write(args.json, lambda fh: fh.write(json.dumps(
        dict(m, peak=peak, command=args.command, cpu=cpu_name()), indent=1).encode()))
    if args.report:
        replace_section(args.report, heading() + "\n", text)
    print(text)


if __name__ == "__main__":
    main()
