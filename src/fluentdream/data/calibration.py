"""Reference distributions that dreams and dataset examples are read against (paper §3, §3.5).

    from fluentdream import calibration, mining
    table = calibration.fluency_calibration(lm, mining.DataSource("embedded", split="validation"))
    calibration.in_distribution_threshold(table, n=12)     # mean + 2 SD of 12-token slice CE
    calibration.save_table(table, "results/calibration", "fluency")   # fluency.csv + fluency.json

    feats = [mining.random_residual(2, lm.d_model, n=50, seed=0)]
    base = calibration.random_prompt_baseline(lm, feats)    # mean, sd per direction
    z = calibration.zscores(examples, base)                 # (value - mean) / sd per row

Fluency (Fig 5a): the paper reports the CE of n-token Pile slices under Pythia-12B (12 tokens:
mean 3.7, SD 1.1) and calls CE below mean + 2 SD "in distribution". We draw a uniform sample (seeded
reservoir) of non-overlapping `max(lengths)`-token slices of the corpus; the n-token slice is each
sample's first n tokens, so one forward gives every n (causal: the first n tokens' losses do not
see the rest). Random-prompt baseline (§3.5): directions are scored on uniformly random drawable
tokens (1024 prompts of 12 tokens in the paper); alignment is a z-score against it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core.scoring.hooks import capture
from ..core.tokens import drawable_tokens
from ..errors import UserError
from ..files import atomic_write
from .corpus import DataSource, documents
from .mining import Features

LENGTHS = tuple(range(2, 33))


def random_prompt_baseline(lm, features: Sequence[Features], n_prompts: int = 1024,
                           n_tokens: int = 12, seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """Mean and SD (over prompts) of every feature at the last position of random-token prompts.

    Returns one row per feature: site, layer, feature, target, mean, sd, max, n_prompts, n_tokens
    (max: the best random prompt, the paper's "random" alignment in Figs 5-6).
    """
    if n_prompts < 2 or n_tokens < 1:
        raise UserError(f"need n_prompts >= 2 and n_tokens >= 1, got {n_prompts}, {n_tokens}")
    for f in features:
        f.validate(lm)
    pool = drawable_tokens(lm).nonzero().squeeze(1)                       # (A,)
    g = torch.Generator().manual_seed(seed)
    ids = pool[torch.randint(len(pool), (n_prompts, n_tokens), generator=g)]  # (N, n)
    values = [[] for _ in features]
    for a in range(0, n_prompts, batch_size):
        with torch.inference_mode(), capture(lm, tuple(f.site for f in features)) as acts:
            lm.model(input_ids=ids[a:a + batch_size].to(lm.device), use_cache=False)
            for out, f in zip(values, features):
                out.append(f.values(acts)[:, -1].cpu())                   # (b, F)
    frames = []
    for out, f in zip(values, features):
        v = torch.cat(out).double()                                       # (N, F)
        frames.append(pd.DataFrame(dict(
            site=f.site[0], layer=f.site[1], feature=np.arange(v.shape[1]), target=f.names(lm),
            mean=v.mean(0).numpy(), sd=v.std(0).numpy(), max=v.max(0).values.numpy(),
            n_prompts=n_prompts, n_tokens=n_tokens)))
    return pd.concat(frames, ignore_index=True)


def zscores(table: pd.DataFrame, baseline: pd.DataFrame, column: str = "window_activation",
            ) -> pd.Series:
    """(table[column] - mean) / sd, matching rows to the baseline by their `target` name."""
    stats = baseline.set_index("target")
    missing = set(table["target"]) - set(stats.index)
    if missing:
        raise UserError(f"{len(missing)} targets have no baseline, e.g. {sorted(missing)[0]!r}")
    mean = table["target"].map(stats["mean"])
    sd = table["target"].map(stats["sd"])
    return ((table[column] - mean) / sd).rename(f"{column}_z")


def _sample_slices(source: DataSource, tokenizer, length: int, n_slices: int, seed: int,
                   tokens: int | None) -> torch.Tensor:
    """Uniform sample (reservoir) of non-overlapping `length`-token slices -> (S, length)."""
    rng, reservoir, seen = random.Random(seed), [], 0
    for _, ids in documents(source, tokenizer, tokens):
        for start in range(0, len(ids) - length + 1, length):
            piece = ids[start:start + length]
            if len(reservoir) < n_slices:
                reservoir.append(piece)
            elif (j := rng.randrange(seen + 1)) < n_slices:
                reservoir[j] = piece
            seen += 1
    if not reservoir:
        raise UserError(f"dataset {source.dataset!r} has no document of {length} tokens")
    return torch.tensor(reservoir)


def fluency_calibration(lm, source: DataSource, lengths: Sequence[int] = LENGTHS,
                        n_slices: int = 2048, seed: int = 0, tokens: int | None = None,
                        batch_size: int = 256,
                        progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Self-CE of n-token corpus slices (paper Fig 5a) -> rows n, mean, sd, count (no BOS).
    progress(done, total) counts the slices scored."""
    lengths = sorted(set(lengths))
    if not lengths or lengths[0] < 2:
        raise UserError(f"slice lengths must be >= 2 tokens, got {lengths}")
    slices = _sample_slices(source, lm.tokenizer, lengths[-1], n_slices, seed, tokens)  # (S, Lmax)
    losses = []
    for a in range(0, len(slices), batch_size):
        ids = slices[a:a + batch_size].to(lm.device)
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, use_cache=False).logits.float()  # (b, Lmax, V)
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        losses.append(ce.cpu().double())                                      # (b, Lmax - 1)
        if progress is not None:
            progress(a + len(ids), len(slices))
    losses = torch.cat(losses)
    rows = []
    for n in lengths:
        ce_n = losses[:, :n - 1].mean(1)       # = xentropy of the n-token slice alone
        rows.append(dict(n=n, mean=ce_n.mean().item(), sd=ce_n.std().item(), count=len(ce_n)))
    table = pd.DataFrame(rows)
    table.attrs.update(model=lm.name, dataset=source.dataset, split=source.split,
                       n_slices=len(slices), seed=seed)
    return table


def in_distribution_threshold(table: pd.DataFrame, n: int = 12, sds: float = 2.0) -> float:
    """CE below which an n-token prompt counts as in distribution: mean + 2 SD (paper §3: 5.9)."""
    row = table[table["n"] == n]
    if row.empty:
        raise UserError(f"the calibration table has no slice length {n}; it has "
                        f"{sorted(table['n'].tolist())}")
    return float(row["mean"].iloc[0] + sds * row["sd"].iloc[0])


def save_table(table: pd.DataFrame, out_dir: str | Path, name: str) -> Path:
    """Write NAME.csv and NAME.json (rows plus table.attrs as meta) atomically into out_dir."""
    out = Path(out_dir)
    csv = table.to_csv(index=False).encode()
    atomic_write(out / f"{name}.csv", lambda fh: fh.write(csv))
    doc = json.dumps(dict(meta=table.attrs, rows=table.to_dict(orient="records")), indent=2,
                     default=str).encode()
    atomic_write(out / f"{name}.json", lambda fh: fh.write(doc))
    return out / f"{name}.json"


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by save_table (the .json, with its meta in attrs)."""
    doc = json.loads(Path(path).read_text())
    table = pd.DataFrame(doc["rows"])
    table.attrs.update(doc.get("meta", {}))
    return table
