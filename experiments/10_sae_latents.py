"""10 · Dreams of SAE latents: vs dataset examples, pre- vs post-activation, trigger families.

    python experiments/10_sae_latents.py                  # -> results/embedded/10_sae_latents
    python experiments/10_sae_latents.py --preset smollm2 # SmolLM2-135M and its SAE, ~15 min
    python experiments/10_sae_latents.py --preset smoke   # seconds

The paper closes (§4) by proposing sparse-autoencoder features in place of polysemantic neurons;
the EPO authors' follow-up dreams SAE latents and optimizes each latent's pre-activation. On an
SAE shipped with the package (embedded-L2: TopK, 2048 latents, residual entering block 2 of the
embedded model; smollm2-L15: TopK, 4096 latents, residual entering block 15 of SmolLM2's 30):
1. scan the corpus once for the top-k examples of every latent (as `fluentdream mine --sae`);
2. draw `latents` live latents by LIVE_RULE, and re-score their examples alone as the 12-token
   window ending at the max token (the others are never compared with a dream);
3. dream each latent twice at equal iterations, in lockstep: on the latent itself (post) and on
   its pre-activation (`sae:...:j:pre`);
   a. best in-distribution dream (post run) vs the latent's best in-distribution dataset window:
      05's comparison for sampled neurons, with 05's CE limit (mean + 2 SD of 12-token slices);
   b. the best POST value under that limit reached by each mode: post runs carry it in their
      History; for pre runs every in-limit candidate is re-scored by the post target, highest
      pre-activation first, until no remaining candidate can win (post <= relu(pre) for every
      architecture here), which is exact and costs a few hundred prompts (pre_post.parquet);
   c. §3.4's polysemanticity question by FAMILY_RULE, on the latents' post runs and on 05's
      sampled neurons' runs cut to the same iteration count (families.parquet).
analysis/sae_latents.py makes the tables, numbers and Fig 7 from these files.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import fluentdream as fd
from fluentdream import runs
from fluentdream.data import calibration, mining
from fluentdream.data.corpus import CORPORA
from fluentdream.core.scoring import Scorer

NAME = "10_sae_latents"
LIVE_RULE = ("live = the latent fires (activation > 0 after its activation function) somewhere in "
             "the scanned tokens; `latents` of them drawn with pandas .sample(random_state=0)")
FAMILY_RULE = ("a dream's trigger family is its last token, stripped and lower-cased (the family "
               "of 05's RULE); a run's top dreams are its distinct candidates with CE <= the "
               "in-distribution limit whose value reaches at least `family_share` of the run's "
               "best such value (none when that best is <= 0); its families are those holding at "
               "least `family_min_share` of its top dreams (a family found once is noise)")


@dataclass(frozen=True)
class Config:
    model: str = "embedded"
    """Model name or directory (fd.load_model); the model the SAE was trained on."""
    dtype: str | None = None
    """Model dtype; None = the checkpoint's own. Embedded: fd.fast_dtype (bf16 where the CPU
    measures it faster); mining and dreams share it, so they share one scale."""
    sae: str = "embedded-L2"
    """SAE directory (SAELens or sparsify layout) or a shipped SAE's name."""
    dataset: str = "embedded"
    """Corpus mined for examples (mining.DataSource): the one the SAE was trained on."""
    mine_tokens: int | None = 200_000
    """Dataset tokens scanned; 200k of the embedded corpus, as 05 (about 25 s on one thread)."""
    top_k: int = 64
    """Examples kept per latent (paper §3.3: the top 64)."""
    latents: int = 8
    """Live latents drawn (LIVE_RULE), as many as 05's sampled neurons (smollm2: 6)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds per (latent, mode). One: 8 latents x 2 modes x 1 seed x 100 iterations is 1600
    run-iterations, about 2.5 minutes at ~0.1 s per batched run-iteration on one thread."""
    iters: int = 100
    """EPO iterations T, equal in both modes (Table 1 has 300; 100 keeps `make figures` within
    ~3 more minutes, and 05's neuron runs are cut to the same T for the family count).
    Smollm2: 20, so 6 latents x 2 modes (240 run-iterations, ~12 minutes of one core) fit beside
    04's T = 300 seeds in the 90-minute pipeline (02's smollm2 preset says more)."""
    population_size: int = 8
    """M (Table 1: 8)."""
    explore_per_pop: int = 32
    """r (Table 1: 32)."""
    topk: int = 512
    """k (Table 1: 512)."""
    family_share: float = 0.5
    """FAMILY_RULE's bar for a top dream, as a share of the run's best in-distribution value."""
    family_min_share: float = 0.05
    """FAMILY_RULE's share of a run's top dreams that a family must hold to count."""
    calibration_slices: int = 1024
    """12-token validation slices for the in-distribution CE limit when neither 05 nor 01 has
    written one."""


PRESETS = {
    "embedded": Config(dtype=fd.fast_dtype("cpu")),
    "paper": Config(model="EleutherAI/pythia-12b-deduped", dtype="float16", sae="",
                    dataset="monology/pile-uncopyrighted", mine_tokens=100_000_000, seeds=(0, 1),
                    iters=300, latents=16),
    # SmolLM2 and its shipped SAE (experiments/10a_train_sae.py --preset smollm2), mined on the
    # general corpus it was trained on: 100k tokens (the scan stops after block 14).
    "smollm2": Config(model="smollm2-135m", dtype=fd.fast_dtype("cpu"), sae="smollm2-L15",
                      dataset="general", mine_tokens=100_000, latents=6, iters=20),
    "smoke": Config(mine_tokens=3000, top_k=4, latents=2, iters=3, population_size=4,
                    explore_per_pop=4, topk=16, calibration_slices=64),
}


def threshold(preset_dir: Path, lm, cfg: Config) -> dict:
    """05's in-distribution CE limit (mean + 2 SD of 12-token slices, paper §3): its
    threshold.json, else 01's thresholds.json, else computed here on the validation split."""
    for path, key in ((preset_dir / "05_dream_vs_dataset/threshold.json", "threshold"),
                      (preset_dir / "01_fluency_calibration/thresholds.json", "in_distribution")):
        if path.exists():
            return dict(threshold=runs.read_json(path)[key], source=str(path))
    split = "validation" if cfg.dataset in CORPORA else "train"
    table = calibration.fluency_calibration(lm, mining.DataSource(cfg.dataset, split=split), (12,),
                                            n_slices=cfg.calibration_slices, tokens=2_000_000)
    return dict(threshold=calibration.in_distribution_threshold(table, 12),
                source=f"computed here ({cfg.dataset}:{split})")


def sample_live(top: pd.Series, n: int) -> list[str]:
    """LIVE_RULE on each latent's top in-context activation (index: target names)."""
    live = top[top > 0].sort_index()
    return sorted(live.sample(n=min(n, len(live)), random_state=0).index,
                  key=lambda t: int(t.rsplit(":", 1)[1]))


def sample_neurons(top: pd.Series, n: int) -> list[str]:
    """05's rule for its sampled neurons, used when 05 has not run: n neurons drawn (seed 0)
    among those whose top example is at least the layer's median top activation."""
    return sorted(top[top >= top.median()].sample(n=min(n, len(top)), random_state=0).index)


def neuron_runs(preset_dir: Path) -> list[Path]:
    """05's seed-0 runs on its sampled neurons (their family counts), if 05 has made them."""
    exp = preset_dir / "05_dream_vs_dataset"
    if not (exp / "sampled_neurons.json").exists():
        return []
    names = {runs.slug(n) for n in runs.read_json(exp / "sampled_neurons.json")["neurons"]}
    return sorted(d for d in (exp / "runs").glob("*__seed0") if runs.is_complete(d)
                  and d.name.split("__")[1] in names)


def mine(lm, sae, cfg: Config, mine_dir: Path, neuron_layer: int | None) -> tuple[list, list]:
    """Scan once for the top-k examples of every latent (and every neuron of `neuron_layer`),
    draw the latents (and neurons) to dream, and re-score only their examples alone: the
    other 2040 latents' 130k windows would cost ~85 s and are never compared with a dream.
    -> (latents, neurons); mining/ holds examples.parquet, top.parquet and summary.json."""
    if (mine_dir / "summary.json").exists():
        chosen = runs.read_json(mine_dir / "summary.json")["chosen"]
        return chosen["latents"], chosen["neurons"]
    features = [mining.sae_latents(sae)] + ([mining.neurons(neuron_layer)]
                                            if neuron_layer is not None else [])
    mcfg = mining.MineConfig(top_k=cfg.top_k, tokens=cfg.mine_tokens)
    source = mining.DataSource(cfg.dataset)
    t0 = time.perf_counter()
    with tqdm(total=cfg.mine_tokens, desc=f"scan {sae.label}", unit="tok") as bar:
        tops, stats = mining.scan(lm, source, features, mcfg, progress=bar.update)
    top = pd.concat([pd.Series(t.values[:, 0].numpy(), index=f.names(lm))    # (F,) best in context
                     for f, t in zip(features, tops)])
    latents = sample_live(top[top.index.str.startswith("sae:")], cfg.latents)
    neurons = (sample_neurons(top[top.index.str.startswith("L")], cfg.latents)
               if neuron_layer is not None else [])
    keep = set(latents + neurons)
    masked = [t.only(torch.tensor([n in keep for n in f.names(lm)])) for f, t in zip(features, tops)]
    t1 = time.perf_counter()
    examples = mining.rescore(lm, features, masked, mcfg)
    summary = mining.summary(lm, source, features, mcfg, stats, "local", 1, t1 - t0,
                             time.perf_counter() - t1)
    mining.write_parquet(top.rename("top_activation").rename_axis("target").reset_index(),
                         mine_dir / "top.parquet")
    mining.save(mining.MineResult(examples, dict(summary, chosen=dict(
        latents=latents, neurons=neurons, rule=LIVE_RULE,
        live=int((top[top.index.str.startswith("sae:")] > 0).sum())))), mine_dir)
    return latents, neurons


def best_post(lm, post_target, run_dir: Path, limit: float, chunk: int = 256) -> dict:
    """Highest post-activation value among a pre run's candidates with CE <= limit (3b): scored
    in chunks of descending pre-activation, stopping once the next chunk's pre-activation cannot
    beat the best post value found (post <= relu(pre))."""
    ids, pre, ce = fd.History.load(run_dir / "history.npz").candidates()
    ok = ce <= limit
    ids, pre, ce = ids[ok], pre[ok], ce[ok]
    ids, first = np.unique(ids, axis=0, return_index=True)
    pre, ce = pre[first], ce[first]
    order = np.argsort(-pre, kind="stable")
    scorer, best, scored = Scorer(lm, post_target, retokenize=False), (-np.inf, np.nan, None), 0
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        if max(pre[rows[0]], 0.0) + 1e-3 < best[0]:   # 1e-3: bf16 rounding of pre vs post
            break
        f = scorer.score(torch.from_numpy(ids[rows]).long())[0].numpy()
        scored += len(rows)
        if f.max() > best[0]:
            i = rows[int(np.argmax(f))]
            best = (float(f.max()), float(ce[i]), ids[i])
    return dict(run=run_dir.name, best_post=best[0] if best[2] is not None else np.nan,
                best_post_ce=best[1], best_post_text=(lm.tokenizer.decode(best[2].tolist())
                                                      if best[2] is not None else None),
                in_limit=len(pre), rescored=scored)


def families(tokenizer, run_dir: Path, iters: int, limit: float, cfg: Config) -> dict:
    """FAMILY_RULE on one run, cut to its first `iters` iterations."""
    hist = fd.History.load(run_dir / "history.npz")
    hist.trim(iters)
    ids, f, ce = hist.candidates()
    ok = ce <= limit
    ids, first = np.unique(ids[ok], axis=0, return_index=True)
    f = f[ok][first]
    best = float(f.max()) if len(f) else np.nan
    out = dict(run=run_dir.name, target=runs.read_json(run_dir / "config.json")["target"],
               iters=len(hist), best_in_dist=best, bar=cfg.family_share * best, candidates=len(f))
    if not best > 0:
        return dict(out, families=np.nan, top_families="")
    high = ids[f >= cfg.family_share * best]
    vocab = {t: tokenizer.decode([t]).strip().lower() for t in np.unique(high[:, -1])}
    counts = pd.Series([vocab[t] for t in high[:, -1]]).value_counts()
    return dict(out, families=int((counts >= cfg.family_min_share * len(high)).sum()),
                distinct_last_tokens=len(counts), high_candidates=len(high),
                top_families=" | ".join(f"{w}:{c}" for w, c in counts.head(5).items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--model", help="override the preset's model (a name or local directory)")
    p.add_argument("--sae", help="override the preset's SAE (a directory or a shipped name)")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    overrides = {k: v for k, v in dict(model=args.model, sae=args.sae).items() if v}
    cfg = Config(**{**asdict(cfg), **overrides})
    if not cfg.sae:
        raise ValueError(f"preset {args.preset!r} names no SAE; give --sae DIR (a SAELens or "
                         "sparsify directory for the model)")
    preset_dir = Path(args.results) / args.preset
    out = preset_dir / NAME
    torch.manual_seed(0)
    t_start = time.perf_counter()

    lm = fd.load_model(cfg.model, dtype=cfg.dtype)
    sae = fd.load_sae(cfg.sae)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", dict(asdict(cfg), preset=args.preset))
    limit = threshold(preset_dir, lm, cfg)
    runs.write_json(out / "threshold.json", limit)

    # 1-2. Every latent's top-k examples in one scan (§3.3's mining, for SAE features; the
    #      neurons of 05's layer too when 05 has not dreamed its sampled neurons); live latents.
    neurons = neuron_runs(preset_dir)
    layer = None if neurons else round(0.28 * (lm.n_layers - 1))
    latents, own_neurons = mine(lm, sae, cfg, out / "mining", layer)
    runs.write_json(out / "latents.json", dict(
        latents=latents, rule=LIVE_RULE, family_rule=FAMILY_RULE, threshold=limit["threshold"],
        neurons_dreamed_here=own_neurons,
        neuron_runs=[str(d.relative_to(preset_dir)) for d in neurons]))

    # 3. Dream each latent after and before its activation function, all in lockstep.
    base = fd.EPOConfig(iters=cfg.iters, population_size=cfg.population_size,
                        explore_per_pop=cfg.explore_per_pop, topk=cfg.topk)
    # built from the loaded SAE: target names hold its label (as mining's do), not its path
    jobs = [(fd.SAELatent(sae, int(t.rsplit(":", 1)[1]), pre=pre), base.replace(seed=s))
            for t in latents for pre in (False, True) for s in cfg.seeds]
    jobs += [(fd.parse_target(t, lm), base.replace(seed=0)) for t in own_neurons]
    dirs = runs.dream_many(lm, jobs, out / "runs", desc=f"{NAME} {len(jobs)} runs")
    t_dream = time.perf_counter()
    kinds = ["latent" if t.name.startswith("sae:") else "neuron" for t, _ in jobs]

    # 3b. Best post value under the limit of every pre run (post runs have theirs in History).
    rows = [dict(best_post(lm, tgt.post, d, limit["threshold"]), target=tgt.post.name, mode="pre",
                 seed=c.seed) for (tgt, c), d in zip(jobs, dirs) if tgt.post is not None]
    mining.write_parquet(pd.DataFrame(rows), out / "pre_post.parquet")

    # 3c. Trigger families of the latents' post runs and of the neurons' runs, equal iterations.
    fam = [dict(families(lm.tokenizer, d, cfg.iters, limit["threshold"], cfg), kind=kind)
           for (tgt, _), d, kind in zip(jobs, dirs, kinds) if tgt.post is None]
    fam += [dict(families(lm.tokenizer, d, cfg.iters, limit["threshold"], cfg), kind="neuron")
            for d in neurons]
    mining.write_parquet(pd.DataFrame(fam), out / "families.parquet")
    runs.write_json(out / "timing.json", dict(seconds_total=time.perf_counter() - t_start,
                                              seconds_to_dreams_end=t_dream - t_start))

    for r in rows:
        print(f"{r['target']}: best post value with CE <= {limit['threshold']:.2f} via :pre "
              f"{r['best_post']:.3f} (re-scored {r['rescored']} of {r['in_limit']} candidates)")
    print(f"{NAME}: {len(dirs)} runs, {time.perf_counter() - t_start:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
