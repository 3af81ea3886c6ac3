"""The results the report tests read, made once per test process (both report test files use
them): a small results folder from real EPO runs and a real mine on the embedded model, and a
large one whose 8 runs of 300 iterations are made up (History objects filled here, not EPO),
so the size and render time of a full-length page are measured in seconds.

    small = built(tmp_path_factory)     # .lm, .results, .site (fd.report of results)
    big = large(tmp_path_factory)       # .results, .site (8 seeds x 300 iterations)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream import runs
from fluentdream.data import mining
from fluentdream.report import Site

NEURON, LATENT, LOGIT = "L1.N660", "sae:embedded-L2:5:pre", "logit: the"
_cache: dict[str, object] = {}


@dataclass
class Tree:
    lm: object
    results: Path          # results/<experiment>/{runs,mining}
    site: Site


def _lm():
    if "lm" not in _cache:
        _cache["lm"] = fd.load_model("embedded", dtype="float32")
    return _cache["lm"]


def built(tmp_path_factory) -> Tree:
    """Two seeds of a neuron, a latent's pre-activation and a logit target (4 iterations each,
    in lockstep), a mine of the top 64 windows of layer 1's neurons and of the SAE's latents in
    3000 corpus tokens, and their report (with k = 8 for the attribution)."""
    if "small" not in _cache:
        lm, root = _lm(), tmp_path_factory.mktemp("report_small")
        results = root / "results"
        cfg = fd.EPOConfig(iters=4, population_size=4, explore_per_pop=8, topk=32)
        jobs = [(fd.parse_target(NEURON, lm), cfg.replace(seed=s)) for s in (0, 1)]
        jobs += [(fd.parse_target(t, lm), cfg) for t in (LATENT, LOGIT)]
        runs.dream_many(lm, jobs, results / "01_exp" / "runs")
        _mine(lm, results / "01_exp" / "mining")
        site = fd.report([results], root / "site", mine=[results], lm=lm, attribution_k=8,
                         progress=False)
        _cache["small"] = Tree(lm, results, site)
    return _cache["small"]


def _mine(lm, out: Path) -> None:
    """Scan for every feature's top 64 windows, and re-score alone only the two the pages show
    (as experiments 05 and 10 do; re-scoring all 3072 costs seconds)."""
    feats = [mining.neurons(1), mining.sae_latents(fd.load_sae("embedded-L2"))]
    cfg, source = mining.MineConfig(top_k=64, tokens=3000), mining.DataSource("embedded")
    tops, stats = mining.scan(lm, source, feats, cfg)
    shown = (NEURON, LATENT.removesuffix(":pre"))
    tops = [t.only(torch.tensor([n in shown for n in f.names(lm)])) for f, t in zip(feats, tops)]
    examples = mining.rescore(lm, feats, tops, cfg)
    mining.save(mining.MineResult(examples, mining.summary(lm, source, feats, cfg, stats, "local",
                                                           1, 0.0, 0.0)), out)


def _history(rng: np.random.Generator, vocab: int, T: int = 300, M: int = 8, r: int = 32,
             n: int = 12) -> fd.History:
    """A History shaped like an EPO run's (T iterations of M parents and M*r one-token
    children), with activations that trade off against CE as on a real frontier."""
    hist = fd.History(np.geomspace(0.1, 10, M), dict(model="embedded", target=NEURON))
    parents = rng.integers(300, vocab, (M, n))
    for _ in range(T):
        kids = np.repeat(parents, r, axis=0)
        kids[np.arange(M * r), rng.integers(0, n, M * r)] = rng.integers(300, vocab, M * r)
        ids = np.concatenate([parents, kids])
        ce = rng.uniform(3.0, 10.0, len(ids))
        f = 2.0 * np.sqrt(ce - 2.5) + rng.normal(0, 0.3, len(ids))   # concave, like a frontier
        hist.append(ids, f, ce, np.arange(M), np.nan, 0.2, M * r, 0)
        parents = ids[rng.choice(len(ids), M, replace=False)]
    return hist


def large(tmp_path_factory) -> Tree:
    """8 made-up runs of 300 iterations of one neuron, beside the small tree's mine, reported
    with the model (attribution with k = 4: the shading's size does not depend on k)."""
    if "large" not in _cache:
        small, lm = built(tmp_path_factory), _lm()
        root = tmp_path_factory.mktemp("report_large")
        rng = np.random.default_rng(0)
        for seed in range(8):
            hist = _history(rng, lm.vocab_size)
            cfg = fd.EPOConfig(iters=300, seed=seed)
            front = fd.pareto_frontier([hist], lm.tokenizer)
            runs.save_run(runs.run_dir_for(root / "results", "embedded", NEURON, seed), hist,
                          front, cfg)
        site = fd.report([root / "results"], root / "site", mine=[small.results], lm=lm,
                         attribution_k=4, progress=False)
        _cache["large"] = Tree(lm, root / "results", site)
    return _cache["large"]
