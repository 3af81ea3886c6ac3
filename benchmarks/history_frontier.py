"""Time the work done outside the EPO loop: loading a saved History and building a frontier.

    python benchmarks/history_frontier.py                 # paper settings: T 300, M 8, r 32, n 12
    python benchmarks/history_frontier.py --pooled 60     # the frontier of 60 seeds pooled

The History is synthetic but shaped like a paper-setting run (P = M + M*r = 264 candidates per
iteration, children differ from their parent in one token, so it compresses like a real one);
it is saved with History.save and timed through History.load and fd.pareto_frontier.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import fluentdream as fd


def synthetic_history(iters: int, M: int, r: int, n: int, vocab: int, seed: int) -> fd.History:
    """A History with EPO's pool layout: M parents, then r one-token children of each."""
    rng = np.random.default_rng(seed)
    hist = fd.History(np.geomspace(0.1, 10, M), meta=dict(target="L1.N5", seed=seed))
    parents = rng.integers(0, vocab, (M, n))
    for t in range(iters):
        kids = np.repeat(parents, r, axis=0)                       # (M*r, n)
        kids[np.arange(M * r), rng.integers(0, n, M * r)] = rng.integers(0, vocab, M * r)
        pool = np.concatenate([parents, kids])                     # (P, n)
        ce = rng.uniform(3.0, 10.0, len(pool))
        f = ce + rng.normal(0.0, 1.0, len(pool))                   # activation grows with CE
        kept = rng.integers(0, len(pool), M)
        hist.append(pool, f, ce, kept, float("nan"), 0.1, M * r)
        parents = pool[kept]
    return hist


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--explore", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=12)
    p.add_argument("--pooled", type=int, default=1, help="runs pooled into one frontier")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    shape = (args.iters, args.population, args.explore, args.seq_len, 50_304)
    hists = [synthetic_history(*shape, seed=s) for s in range(args.pooled)]
    with tempfile.TemporaryDirectory() as tmp:
        path = hists[0].save(Path(tmp) / "history.npz")
        size = path.stat().st_size
        load_s = best_of(lambda: fd.History.load(path), args.repeats)
    n_cands = sum(len(h.candidates()[1]) for h in hists)
    front_s = best_of(lambda: fd.pareto_frontier(hists), args.repeats)
    front = fd.pareto_frontier(hists)
    print(f"history: T={args.iters} P={args.population * (1 + args.explore)} n={args.seq_len}, "
          f"{size / 1e6:.1f} MB on disk")
    print(f"History.load: {load_s:.3f} s (best of {args.repeats})")
    print(f"pareto_frontier over {args.pooled} run(s), {n_cands} candidates: {front_s:.3f} s, "
          f"{len(front)} points")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6    # kB on Linux
    print(f"peak resident memory of the process: {peak:.2f} GB")


if __name__ == "__main__":
    main()
