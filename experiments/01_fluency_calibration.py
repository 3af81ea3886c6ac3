"""01 — Fluency calibration: cross-entropy of n-token corpus slices (paper §3, Fig 5a).

    python experiments/01_fluency_calibration.py                    # embedded preset, ~10 s
    python experiments/01_fluency_calibration.py --preset paper     # Pythia-12B on the Pile

The paper calls a 12-token prompt "in distribution" when its self cross-entropy is below mean + 2 SD
of 12-token Pile slices (3.7 + 2 * 1.1 = 5.9, rounded to 6), and quotes other CE limits in the same
nats: perplexity 100 (CE 4.61, Table 3) and CE 5 (Fig 2a). On another model and corpus those
numbers mean nothing, so later experiments use *analogs*, by one stated rule:

    analog(c) = mean_12 + z(c) * sd_12,   z(c) = (c - 3.7) / 1.1

i.e. a paper CE limit keeps its z-score under the 12-token slice distribution. So perplexity 100
(z = 0.82; one SD above the mean would be perplexity 121 in the paper) becomes mean + 0.82 SD,
CE 5 (z = 1.18) becomes mean + 1.18 SD, and CE 6 becomes mean + 2.09 SD (the paper's own
in-distribution limit, mean + 2 SD, is written beside it). The paper preset reproduces the
paper's values up to its rounding.

Writes <results>/<preset>/01_fluency_calibration/:
  fluency.csv, fluency.json   rows n, mean, sd, count for n = 2..32 (calibration.save_table)
  thresholds.json             n, mean, sd, in_distribution, perplexity_100, ce_5, ce_6, rule
"""

import argparse
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import fluentdream as fd
from fluentdream.data import calibration
from fluentdream.data.corpus import DataSource
from fluentdream.core.progress import CountBar
from fluentdream.runs import write_json

NAME = "01_fluency_calibration"
PAPER_MEAN_12, PAPER_SD_12 = 3.7, 1.1          # paper §3: 12-token Pile slices, Pythia-12B
PAPER_LIMITS = {"perplexity_100": float(np.log(100.0)), "ce_5": 5.0, "ce_6": 6.0}


@dataclass(frozen=True)
class Config:
    model: str
    """Model scored for fluency ("embedded", a local HF dir, or a hub name)."""
    dataset: str
    """Text the slices come from: "embedded" (data/corpus), "general" (data/general) or a
    `datasets` name / local path."""
    split: str = "validation"
    """Split of `dataset`; held-out text, so the model has not memorized it."""
    lengths: tuple[int, ...] = tuple(range(2, 33))
    """Slice lengths n (Fig 5a's x axis: 2..32 tokens)."""
    n_slices: int = 2048
    """Slices sampled (uniform reservoir of non-overlapping 32-token slices)."""
    tokens: int | None = None
    """Stop reading the dataset after this many tokens (None = all of it)."""
    reference_n: int = 12
    """Slice length the thresholds are read at (the paper's prompt length)."""
    seed: int = 0
    """Seeds the reservoir sample."""
    device: str | None = None
    """Device ("cpu", "cuda"); None = cuda when available."""
    dtype: str | None = None
    """Model dtype; None = the checkpoint's own."""


PRESETS = {
    # The validation split is ~40k tokens: every 32-token slice fits in the reservoir.
    "embedded": Config(model="embedded", dataset="embedded", device="cpu", dtype="float32"),
    # 2048 slices from the first 20M Pile tokens; the paper does not say how many it used.
    "paper": Config(model="EleutherAI/pythia-12b-deduped", dataset="monology/pile-uncopyrighted",
                    split="train", tokens=20_000_000, device="cuda", dtype="float16"),
    # SmolLM2 on the general corpus's validation split (~190k of its tokens; data/README.md):
    # books, reference works, manuals and code, closer to its training data than docstrings.
    "smollm2": Config(model="smollm2-135m", dataset="general", device="cpu", dtype="float32"),
    "smoke": Config(model="embedded", dataset="embedded", lengths=(2, 4, 8, 12, 16),
                    n_slices=64, tokens=4000, device="cpu", dtype="float32"),
}


def paper_limit_analog(paper_ce: float, mean: float, sd: float) -> float:
    """A paper CE limit moved to this model: same z-score under the 12-token slice CE."""
    return mean + (paper_ce - PAPER_MEAN_12) / PAPER_SD_12 * sd


def thresholds(table, n: int) -> dict:
    row = table[table["n"] == n].iloc[0]
    mean, sd = float(row["mean"]), float(row["sd"])
    out = dict(n=n, mean=mean, sd=sd,
               in_distribution=calibration.in_distribution_threshold(table, n=n, sds=2.0))
    out.update({k: paper_limit_analog(c, mean, sd) for k, c in PAPER_LIMITS.items()})
    out["rule"] = (f"paper CE limit c -> mean_{n} + (c - {PAPER_MEAN_12}) / {PAPER_SD_12} * sd_{n}; "
                   "in_distribution = mean + 2 SD (paper §3)")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="embedded")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--dataset", help="override the preset's dataset")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    cfg = replace(cfg, model=args.model or cfg.model, dataset=args.dataset or cfg.dataset)
    out = args.results / args.preset / NAME
    if (out / "thresholds.json").exists():
        print(f"{NAME}: already done, see {out}")
        return out

    # seed
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # load
    t0 = time.perf_counter()
    lm = fd.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    # run: one forward per batch of 32-token slices gives the CE of every prefix length n
    with CountBar("score corpus slices", unit="slice") as bar:
        table = calibration.fluency_calibration(
            lm, DataSource(cfg.dataset, split=cfg.split), lengths=cfg.lengths,
            n_slices=cfg.n_slices, seed=cfg.seed, tokens=cfg.tokens, progress=bar)
    # save: thresholds.json last, it marks completion
    calibration.save_table(table, out, "fluency")
    limits = dict(thresholds(table, cfg.reference_n), model=lm.name, dataset=cfg.dataset,
                  split=cfg.split, n_slices=int(table.attrs["n_slices"]),
                  seconds=time.perf_counter() - t0)
    write_json(out / "thresholds.json", limits)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"in distribution: CE < {limits['in_distribution']:.3f}; perplexity-100 analog "
          f"CE < {limits['perplexity_100']:.3f}; CE-5 analog CE < {limits['ce_5']:.3f}")
    print(f"{NAME}: results in {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:      # a user error: one line, no traceback
        sys.exit(f"{NAME}: error: {e}")
