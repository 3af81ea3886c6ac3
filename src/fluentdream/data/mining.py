"""Max-activating dataset examples for every feature of a site at once (DESIGN §8; paper §3.3-3.5).

    from fluentdream import mining
    src = mining.DataSource("embedded")          # or a local file/directory, or a hub name
    feats = [mining.neurons(1), mining.random_residual(2, lm.d_model, n=50, seed=0)]
    feats += [mining.sae_latents(load_sae("embedded-L2"))]   # every latent of an SAE
    res = mining.mine(lm, src, feats, mining.MineConfig(top_k=64, tokens=10**6))
    mining.save(res, "results/mining/run")       # examples.parquet + summary.json

The paper compares dreams with the top 64 max-activating examples of 500M Pile tokens. It does not
say how the examples' cross-entropy was measured; we re-score each example *alone*, as the
`window`-token prompt ending at its max token (LOG.md), so dataset examples and dreams sit on the
same (activation, CE) axes.

Scan: each document is tokenized (no BOS) and cut into `context`-token windows that overlap by
`window - 1` tokens. Only positions >= `window - 1` of a window are eligible, so every document
position from `window - 1` on is eligible in exactly one window, always with at least `window - 1`
tokens of context, and one example per (document, position) comes for free. Per feature, a
window's activation is its max over eligible positions. The running top-k per feature is exact and
deterministic: ordered by (activation desc, doc_id asc, position asc), so Ray shards merge to the
single-process result.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .corpus import DataSource, context_windows, documents  # noqa: F401 (mining.DataSource)
from ..errors import UserError
from .features import (Features, TopK, neurons, place_key,  # noqa: F401 (mining.neurons etc.)
                       random_residual, sae_latents)
from ..core.scoring.forward import xentropy
from ..core.scoring.hooks import AllCaptured, capture, stop_after
from ..core.tokens import decode, retokenizes
from ..files import atomic_write, write_json
from ..provenance import __version__, git_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MineConfig:
    top_k: int = 64
    """Examples kept per feature (paper §3.3: the top 64)."""
    context: int = 128
    """Tokens per context window of the scan."""
    window: int = 12
    """Tokens of the re-scored example ending at its max token (paper: 12-token prompts)."""
    batch_size: int = 32
    """Context windows per forward pass."""
    tokens: int | None = None
    """Stop after this many dataset tokens (paper: 500M for neurons, 100M for residuals); None = all."""

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value}")
        if self.window < 2:
            raise UserError(f"window must be >= 2 tokens (cross-entropy needs two), got {self.window}")
        if self.context < self.window:
            raise UserError(f"context ({self.context}) must be >= window ({self.window})")


@dataclass
class ScanStats:
    tokens: int = 0          # dataset tokens read (summed over shards)
    documents: int = 0
    windows: int = 0         # context windows run through the model
    batches: int = 0
    forward_tokens: int = 0  # batch rows x length, padding included

    def add(self, other: "ScanStats") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def _shape(n: int, cfg: MineConfig) -> tuple[int, int]:
    """(rows, length) of the batch a window of n tokens goes to: n rounded up to a multiple of
    context/8 (at least 8), with rows * length ~ batch_size * context. A window's numbers then
    depend on itself alone (fixed shapes) and short documents are not padded to the context."""
    step = max(8, cfg.context // 8)
    length = min(cfg.context, -(-max(n, cfg.window) // step) * step)
    return max(1, cfg.batch_size * cfg.context // length), length


def _run_batch(lm, rows, features, tops, shape: tuple[int, int], window: int) -> None:
    """Forward one (B, L) batch and push every feature's window maxima; padding is -inf."""
    (B, L), dev = shape, lm.device
    ids = torch.zeros(B, L, dtype=torch.long)
    eligible = torch.zeros(B, L, dtype=torch.bool)
    doc, start = torch.full((B,), -1, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    for i, (d, s, toks) in enumerate(rows):
        ids[i, :len(toks)] = torch.tensor(toks)
        eligible[i, window - 1:len(toks)] = True
        doc[i], start[i] = d, s
    ids, eligible, doc, start = ids.to(dev), eligible.to(dev), doc.to(dev), start.to(dev)

    sites = tuple(f.site for f in features)
    with torch.inference_mode(), capture(lm, sites) as acts, stop_after(lm, sites):
        try:
            lm.model(input_ids=ids, use_cache=False)
        except AllCaptured:
            pass
        for i, f in enumerate(features):
            v = f.values(acts).masked_fill(~eligible[..., None], -torch.inf)    # (B, L, F)
            best, arg = v.max(dim=1)                                             # (B, F)
            tops[i].push(best, arg, doc, start, ids)


def scan(lm, source: DataSource, features: Sequence[Features], cfg: MineConfig,
         shard: int = 0, n_shards: int = 1,
         progress: Callable[[int], None] | None = None) -> tuple[list[TopK], ScanStats]:
    """Stream the dataset once; this shard takes documents with doc_id % n_shards == shard.
    progress(n) is called with the dataset tokens of each finished document of this shard."""
    tops = [TopK.empty(f.size(lm), cfg.top_k, cfg.window, lm.device) for f in features]
    stats, pending = ScanStats(), {}

    def flush(shape):
        rows = pending.pop(shape)
        _run_batch(lm, rows, features, tops, shape, cfg.window)
        stats.batches, stats.windows = stats.batches + 1, stats.windows + len(rows)
        stats.forward_tokens += shape[0] * shape[1]
    for doc_id, ids in documents(source, lm.tokenizer, cfg.tokens):
        if doc_id % n_shards != shard:
            continue
        for start, toks in context_windows(ids, cfg.context, cfg.window):
            shape = _shape(len(toks), cfg)
            pending.setdefault(shape, []).append((doc_id, start, toks))
            if len(pending[shape]) == shape[0]:
                flush(shape)
        stats.tokens, stats.documents = stats.tokens + len(ids), stats.documents + 1
        if progress is not None:
            progress(len(ids))
    for shape in sorted(pending):
        flush(shape)
    return [t.to("cpu") for t in tops], stats


def _window_scores(lm, features, windows: torch.Tensor, rows: int):
    """(U, w) windows, each alone -> per batch (start, [(b, F) last-position values], ce (b,))."""
    for a in range(0, len(windows), rows):
        chunk = windows[a:a + rows]
        ids = torch.zeros(rows, windows.shape[1], dtype=torch.long)   # fixed shape, as in the scan
        ids[:len(chunk)] = chunk
        ids = ids.to(lm.device)
        with torch.inference_mode(), capture(lm, tuple(f.site for f in features)) as acts:
            logits = lm.model(input_ids=ids, use_cache=False).logits
            vals = [f.values(acts)[:len(chunk), -1].cpu() for f in features]
            ce = xentropy(logits, ids)[:len(chunk)].cpu()
        yield a, vals, ce


def rescore(lm, features: Sequence[Features], tops: Sequence[TopK], cfg: MineConfig,
            progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per kept example, its window re-scored alone: target at the last position and CE.
    Each distinct window runs once; progress(done, total) counts windows."""
    parts = []
    for f, t in zip(features, tops):
        keep, feature, rank = t.kept()
        parts.append(dict(feature=feature, rank=rank, activation=t.values.reshape(-1)[keep],
                          doc=t.doc.reshape(-1)[keep], pos=t.pos.reshape(-1)[keep],
                          windows=t.windows.reshape(-1, cfg.window)[keep]))
    keys = torch.cat([place_key(p["doc"], p["pos"]) for p in parts])
    uniq, inverse = np.unique(keys.numpy(), return_inverse=True)
    windows = torch.zeros(len(uniq), cfg.window, dtype=torch.long)
    windows[torch.from_numpy(inverse)] = torch.cat([p["windows"] for p in parts])
    u_parts = np.split(inverse, np.cumsum([len(p["doc"]) for p in parts])[:-1])
    act = [np.empty(len(u)) for u in u_parts]
    ce_u = np.empty(len(uniq))
    rows = max(1, cfg.batch_size * cfg.context // cfg.window)
    for a, vals, ce in _window_scores(lm, features, windows, rows):
        ce_u[a:a + len(ce)] = ce.numpy()
        if progress is not None:
            progress(a + len(ce), len(uniq))
        for i, (p, u) in enumerate(zip(parts, u_parts)):
            sel = np.flatnonzero((u >= a) & (u < a + len(ce)))
            act[i][sel] = vals[i][u[sel] - a, p["feature"][sel]].numpy()
    texts = np.array(decode(lm.tokenizer, windows), dtype=object)
    retok = retokenizes(lm.tokenizer, windows)
    frames = []
    for f, p, u, a in zip(features, parts, u_parts, act):
        names = np.array(f.names(lm), dtype=object)
        frames.append(pd.DataFrame(dict(
            site=f.site[0], layer=f.site[1], feature=p["feature"].numpy(),
            target=names[p["feature"].numpy()], rank=p["rank"].numpy(),
            activation=p["activation"].numpy(), doc_id=p["doc"].numpy(), position=p["pos"].numpy(),
            window_ids=list(windows[u].numpy()), window_text=texts[u], window_activation=a,
            window_xentropy=ce_u[u], window_retokenizes=retok[u])))
    return pd.concat(frames, ignore_index=True)


class _Counter:
    """A Ray actor the shards report their tokens to, for the driver's progress bar."""
    def __init__(self):
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def total(self) -> int:
        return self.n


def _scan_shard(spec, source, features, cfg, shard, n_shards, counter):
    """One Ray task: reload the model and scan documents with doc_id % n_shards == shard."""
    from ..models.load import load_model

    name, device, dtype = spec
    lm = load_model(name, device=device, dtype=dtype)
    pending = [0]

    def report(n):  # batch the actor calls: one per 64k tokens
        pending[0] += n
        if pending[0] >= 1 << 16:
            counter.add.remote(pending[0])
            pending[0] = 0
    return scan(lm, source, features, cfg, shard, n_shards, report)


def scan_ray(lm, source: DataSource, features: Sequence[Features], cfg: MineConfig, workers: int,
             progress: Callable[[int], None] | None = None) -> tuple[list[TopK], ScanStats]:
    """Shard documents over `workers` Ray tasks (doc_id % workers) and merge their top-k; the
    total order makes the merge exactly the single-process result. Joins the cluster at
    RAY_ADDRESS or an initialized Ray, else starts a local one. One GPU per task on CUDA."""
    import ray

    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    counter = ray.remote(_Counter).remote()
    task = ray.remote(num_cpus=1, num_gpus=1 if lm.device.type == "cuda" else 0)(_scan_shard)
    spec = (lm.name, lm.device.type, str(lm.dtype).removeprefix("torch."))
    refs = [task.remote(spec, source, features, cfg, i, workers, counter) for i in range(workers)]
    pending, shown = list(refs), 0
    while pending:
        _, pending = ray.wait(pending, timeout=1.0)
        if progress is not None:
            total = ray.get(counter.total.remote())
            progress(total - shown)
            shown = total
    tops = [TopK.empty(f.size(lm), cfg.top_k, cfg.window) for f in features]
    stats = ScanStats()
    for shard_tops, shard_stats in ray.get(refs):
        for top, other in zip(tops, shard_tops):
            top.merge(other)
        stats.add(shard_stats)
    if progress is not None:
        progress(stats.tokens - shown)
    return tops, stats


@dataclass
class MineResult:
    examples: pd.DataFrame
    summary: dict = field(default_factory=dict)


def mine(lm, source: DataSource, features: Sequence[Features], cfg: MineConfig = MineConfig(),
         executor: str = "local", workers: int = 2,
         progress: Callable[[int], None] | None = None,
         rescore_progress: Callable[[int, int], None] | None = None) -> MineResult:
    """Top-k dataset examples of every feature, re-scored alone (module docstring).

    executor "ray" shards documents over `workers` Ray tasks (each reloads the model by `lm.name`);
    the merged result is exactly the local one. progress(tokens) follows the scan,
    rescore_progress(done, total) the re-scoring of the kept windows.
    """
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor {executor!r}; allowed: local, ray")
    if not features:
        raise UserError("nothing to mine: give at least one layer of neurons or residual directions")
    for f in features:
        f.validate(lm)
    max_pos = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    if max_pos is not None and cfg.context > max_pos:
        raise UserError(f"context {cfg.context} exceeds the model's {max_pos} positions")
    source.open()   # fail on a bad dataset or column before any work
    t0 = time.perf_counter()
    if executor == "local":
        tops, stats = scan(lm, source, features, cfg, progress=progress)
    else:
        tops, stats = scan_ray(lm, source, features, cfg, workers, progress)
    if stats.windows == 0:
        raise UserError(f"dataset {source.dataset!r} gave no document of at least "
                        f"{cfg.window} tokens ({stats.tokens} tokens read); nothing to mine")
    t1 = time.perf_counter()
    log.info("scanned %d tokens in %.1f s; re-scoring the kept windows", stats.tokens, t1 - t0)
    examples = rescore(lm, features, tops, cfg, rescore_progress)
    t2 = time.perf_counter()
    return MineResult(examples, summary(lm, source, features, cfg, stats, executor,
                                        workers if executor == "ray" else 1, t1 - t0, t2 - t1))


def summary(lm, source, features, cfg, stats: ScanStats, executor, workers, scan_s, rescore_s) -> dict:
    import datasets

    return dict(
        model=lm.name, dataset=source.dataset, split=source.split, text_column=source.text_column,
        config=asdict(cfg), tokens_scanned=stats.tokens, documents=stats.documents,
        context_windows=stats.windows, forward_tokens=stats.forward_tokens,
        scan_seconds=scan_s, rescore_seconds=rescore_s, seconds=scan_s + rescore_s,
        tokens_per_second=stats.tokens / scan_s if scan_s > 0 else None,
        sites=[dict(site=f.site[0], layer=f.site[1], features=f.size(lm),
                    labels=list(f.labels) or None, sae=f.sae and f.sae.label) for f in features],
        executor=executor, workers=workers, device=str(lm.device), dtype=str(lm.dtype),
        fluentdream=__version__, torch=torch.__version__, datasets=datasets.__version__, **git_info())


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    atomic_write(path, lambda fh: pq.write_table(table, fh))


def save(result: MineResult, out_dir: str | Path) -> Path:
    """examples.parquet, then summary.json (written last: its presence means complete)."""
    out = Path(out_dir)
    write_parquet(result.examples, out / "examples.parquet")
    write_json(out / "summary.json", result.summary)
    return out
