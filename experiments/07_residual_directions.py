"""07 · Random residual directions: dreams vs a dataset scan vs random prompts (§3.5, Figs 5b-e, 6).

    python experiments/07_residual_directions.py                 # -> results/embedded/07_...
    python experiments/07_residual_directions.py --preset paper  # 50 directions at L4, 8, ..., 28

The paper draws 50 random vectors at each of layers 4, 8, ..., 28 of Pythia-12B; the target is the
standardized residual stream entering the layer, dotted with the vector (fd.ResidualDirection).
Three sources of prompts are compared, all as z-scores ("alignment") against 1024 random-token
12-token prompts: (1) the best random prompt itself, (2) a scan of 100M Pile tokens, (3) EPO.
Here, per direction: the random baseline (calibration.random_prompt_baseline: mean, SD, max), the
dataset scan (mining.mine with the direction matrix; the top `dataset_top_k` windows per direction,
each re-scored *alone* as a 12-token prompt so it sits on the dreams' axes; the best re-scored one
counts) and one EPO dream (all directions in lockstep, fluentdream.core.batched). analysis/residual.py
reads the dream histories to apply the CE limit (the in-distribution threshold of experiment 01)
and the slack curve (Fig 5b).

Directions: vector i of layer L is ResidualDirection.random_vector(d_model, seed=1000 * L + i)
(isotropic Gaussian, unit norm), i.e. target resid:L{L}:v{1000 L + i}.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import fluentdream as fd
from fluentdream import runs
from fluentdream.data import calibration, mining
from fluentdream.data.corpus import CORPORA
from fluentdream.core.progress import CountBar


@dataclass(frozen=True)
class Config:
    model: str = "embedded"
    """Model name or directory (fd.load_model)."""
    dtype: str | None = None
    """Model dtype; None = the checkpoint's own (fp32 on CPU). Embedded: fd.fast_dtype."""
    dataset: str = "embedded"
    """Corpus scanned for the dataset baseline (mining.DataSource; smollm2: the general corpus)."""
    layers: tuple[int, ...] | None = None
    """Residual streams entering these layers (n_layers = the final one); None = 1..n_layers.
    Paper: 4, 8, ..., 28."""
    directions_per_layer: int = 50
    """Random directions per layer (paper: 50; embedded: 2, so 8 dreams of 300 iterations fit
    `make figures`' 20 minutes)."""
    seed_stride: int = 1000
    """Direction i of layer L uses seed seed_stride * L + i."""
    random_prompts: int = 1024
    """Random-token prompts of the z-score baseline (paper: 1024)."""
    mine_tokens: int | None = 100_000_000
    """Dataset tokens scanned (paper: 100M; embedded: 200k, ~25 CPU-s through all 4 layers)."""
    dataset_top_k: int = 8
    """Windows kept per direction by the scan; each is re-scored alone and the best counts."""
    iters: int = 300
    """EPO iterations T (Table 1: 300; smollm2: 40, its preset says why); all directions run in
    lockstep."""
    population_size: int = 8
    """M (Table 1: 8)."""
    explore_per_pop: int = 32
    """r (Table 1: 32)."""
    topk: int = 512
    """k (Table 1: 512)."""
    calibration_slices: int = 1024
    """12-token validation slices for the CE threshold when experiment 01 has not written one."""


PRESETS = {
    "embedded": Config(directions_per_layer=2, mine_tokens=200_000, dtype=fd.fast_dtype("cpu")),
    "paper": Config(model="EleutherAI/pythia-12b-deduped", dtype="float16",
                    dataset="monology/pile-uncopyrighted", layers=(4, 8, 12, 16, 20, 24, 28)),
    # SmolLM2: 4 of its 30 layers at the paper's relative depths (4..28 of 36 ~ 4, 12, 20, 28 of
    # 30), 2 directions each, T = 10: 80 run-iterations beside 04's T = 300 seeds (02's smollm2
    # preset says why); the general corpus scanned.
    "smollm2": Config(model="smollm2-135m", dtype=fd.fast_dtype("cpu"), dataset="general",
                      layers=(4, 12, 20, 28), directions_per_layer=2, mine_tokens=100_000, iters=10),
    "smoke": Config(directions_per_layer=2, random_prompts=32, mine_tokens=3000, dataset_top_k=2,
                    iters=3, population_size=4, explore_per_pop=4, topk=16, calibration_slices=64),
}


def threshold(preset_dir: Path, lm, cfg: Config) -> dict:
    """The in-distribution CE limit: mean + 2 SD of 12-token corpus slices (paper §3). Read from
    experiment 01's thresholds.json when present, else computed here on the validation split."""
    path = preset_dir / "01_fluency_calibration" / "thresholds.json"
    if path.exists():
        t = runs.read_json(path)
        return dict(threshold=t["in_distribution"], corpus_mean=t["mean"], corpus_sd=t["sd"],
                    source=str(path))
    split = "validation" if cfg.dataset in CORPORA else "train"
    table = calibration.fluency_calibration(lm, mining.DataSource(cfg.dataset, split=split), (12,),
                                            n_slices=cfg.calibration_slices, tokens=2_000_000)
    row = table.iloc[0]
    return dict(threshold=calibration.in_distribution_threshold(table, 12),
                corpus_mean=float(row["mean"]), corpus_sd=float(row["sd"]),
                source=f"computed here ({cfg.dataset}:{split})")


def dream_all(lm, features: list[mining.Features], cfg: Config, out: Path) -> list[Path]:
    """One EPO run per direction (seed 0), every unfinished one in lockstep (fluentdream.core.batched)."""
    base = fd.EPOConfig(iters=cfg.iters, population_size=cfg.population_size,
                        explore_per_pop=cfg.explore_per_pop, topk=cfg.topk, seed=0)
    targets = [fd.ResidualDirection(f.site[1], vec, label)
               for f in features for vec, label in zip(f.directions, f.labels)]
    return runs.dream_many(lm, [(t, base) for t in targets], out,
                           desc=f"dream {len(targets)} directions")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--model", help="override the preset's model (a name or local directory)")
    p.add_argument("--directions", type=int, help="override directions per layer")
    p.add_argument("--iters", type=int, help="override EPO iterations")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    overrides = dict(model=args.model, directions_per_layer=args.directions, iters=args.iters)
    cfg = Config(**{**asdict(cfg), **{k: v for k, v in overrides.items() if v}})
    preset_dir = Path(args.results) / args.preset
    out = preset_dir / "07_residual_directions"
    torch.manual_seed(0)

    lm = fd.load_model(cfg.model, dtype=cfg.dtype)
    layers = cfg.layers or tuple(range(1, lm.n_layers + 1))
    features = [mining.random_residual(L, lm.d_model, cfg.directions_per_layer, cfg.seed_stride * L)
                for L in layers]
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", dict(asdict(cfg), preset=args.preset, layers=layers))
    runs.write_json(out / "threshold.json", threshold(preset_dir, lm, cfg))

    # 1. Random-token prompts: the z-score reference and the "random" alignment (§3.5).
    if not (out / "random_baseline.parquet").exists():
        base = calibration.random_prompt_baseline(lm, features, n_prompts=cfg.random_prompts)
        mining.write_parquet(base, out / "random_baseline.parquet")

    # 2. Dataset scan: top windows per direction, re-scored alone.
    if not (out / "mining" / "summary.json").exists():
        t0 = time.perf_counter()
        with tqdm(total=cfg.mine_tokens, desc="scan", unit="tok") as bar, \
                CountBar("re-score the kept windows") as rescored:
            res = mining.mine(lm, mining.DataSource(cfg.dataset), features,
                              mining.MineConfig(top_k=cfg.dataset_top_k, tokens=cfg.mine_tokens),
                              progress=bar.update, rescore_progress=rescored)
        mining.save(res, out / "mining")
        print(f"scanned {res.summary['tokens_scanned']} tokens in {time.perf_counter() - t0:.0f}s")

    # 3. EPO dreams, one per direction.
    dream_all(lm, features, cfg, out / "runs")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
