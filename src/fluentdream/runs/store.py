"""Run directories: one per dream, the source of truth for every reported number (DESIGN §7).

    saved = open_run(run_dir, run_config(cfg, lm.name, target.name), resume=True)  # checkpoint or None
    save_run(run_dir, hist, front, cfg)                  # a finished run, summary.json last
    hist, frontier_records, summary = load_run("results/my-run")
    records, from_runs = merged_frontier([run_a, run_b])

fluentdream.runs.dream (run_dream, dream_many) writes runs through fluentdream.runs.session.

A run directory holds
  config.json      the EPOConfig, model, target and fluency model (what `resume` must match)
  provenance.json  git SHA and dirty flag, package versions, device, seed, start and end time,
                   W&B run id; earlier sessions of a resumed run under "previous_sessions"
  history.npz      every candidate so far plus the loop state: the checkpoint, rewritten every
                   `checkpoint_every` iterations, on Ctrl-C and at the end
  frontier.json    the final Pareto frontier         } written only when the run is complete,
  summary.json     best targets, frontier quality... } summary.json last: it marks completion
  wandb/           the W&B run's local files (offline runs: `wandb sync RUN_DIR/wandb/offline-run-*`)
  .lock, .owner.json  the one writer's lock and who holds it (lock.py; the record only while held)
A directory with history.npz but no summary.json is an unfinished run: resume it. Every file is
written atomically (temporary file + rename), so a reader never sees half a file, and a run killed
at any instant resumes from its last checkpoint to the same History as an uninterrupted run. One
process writes a run directory at a time; readers (load_run, merged_frontier) hold it against
writers while they read and refuse a run another process is writing.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.config import EPOConfig
from ..core.context import Context
from ..core.frontier import Frontier, frontier_indices, frontier_quality
from ..core.history import History
from ..core.scoring.scorer import Scorer
from ..errors import UserError
from ..files import write_json
from ..provenance import now, provenance
from .files import CHECKPOINT, config_diff, is_complete, load_checkpoint, read_json, save_history
from .lock import reading
from .tracking import CE_THRESHOLDS, FRONTIER_REF


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def run_dir_for(parent: Path, model: str, target: str, seed: int) -> Path:
    return Path(parent) / f"{slug(Path(model).name)}__{slug(target)}__seed{seed}"


def run_config(cfg: EPOConfig, model: str, target: str, fluency_model: str | None = None,
               frontier_ref: tuple[float, float] = FRONTIER_REF,
               checkpoint_every: int | None = None) -> dict:
    """What config.json holds and W&B receives as the run's config."""
    return dict(cfg.to_dict(), model=model, target=target, fluency_model=fluency_model,
                frontier_ref_xentropy=float(frontier_ref[0]),
                frontier_ref_target=float(frontier_ref[1]), checkpoint_every=checkpoint_every)


def summary(hist: History, front: Frontier, frontier_ref: tuple[float, float] = FRONTIER_REF) -> dict:
    """Headline numbers; best-under-CE values are over all candidates, like the W&B metrics."""
    _, f, ce = hist.candidates()
    out = dict(iterations=len(hist), best_target=hist.best_target(),
               frontier_points=len(front), frontier_quality=frontier_quality(front, *frontier_ref),
               frontier_ref_xentropy=frontier_ref[0], frontier_ref_target=frontier_ref[1],
               seconds_total=float(np.sum(hist.seconds)),
               seconds_per_iteration=float(np.mean(hist.seconds)) if len(hist) else None,
               candidates_scored=int(np.sum(hist.n_scored)),
               candidates_looked_up=int(np.sum(hist.n_memo)) if (hist.n_memo >= 0).all() else None,
               interrupted=bool(hist.meta.get("interrupted", False)))
    for limit in CE_THRESHOLDS:
        below = f[ce < limit]
        out[f"best_target_ce_below_{limit:g}"] = float(below.max()) if len(below) else None
    if front.post is not None:   # a pre-activation run: the best post value among its frontier points
        out["best_post"] = float(front.post.max()) if len(front) else None
        for limit in CE_THRESHOLDS:
            below = front.post[front.xentropy < limit]
            out[f"best_post_ce_below_{limit:g}"] = float(below.max()) if len(below) else None
    return out


def with_post(lm, target, front: Frontier, cfg: EPOConfig | None = None) -> Frontier:
    """`front` with each point's post-activation value when `target` reads a pre-activation
    (DESIGN §5: reports always show it); else `front` unchanged. The K points go through the
    model once, scored by `target.post` inside cfg's prefix and suffix: exact for them, while a
    prompt off the frontier that has a higher post value is not looked for (frontier points are
    what reports show)."""
    if target.post is None:
        return front
    if not len(front):
        return replace(front, post=np.zeros(0))
    import torch

    scorer = Scorer(lm, target.post, retokenize=False, context=Context.of(lm, cfg or EPOConfig()))
    f, _ = scorer.score(torch.as_tensor(front.ids).long())
    return replace(front, post=f.double().numpy())


def save_run(run_dir: Path, hist: History, front: Frontier, cfg: EPOConfig,
             prov: dict | None = None, config: dict | None = None,
             frontier_ref: tuple[float, float] = FRONTIER_REF) -> Path:
    """Write a finished run; summary.json goes last because its presence means "complete"."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config or run_config(
        cfg, hist.meta.get("model"), hist.meta.get("target"), hist.meta.get("fluency_model"),
        frontier_ref))
    prov = prov or provenance(cfg, device=str(hist.meta.get("device", "")), end_time=now())
    write_json(run_dir / "provenance.json", prov)
    save_history(hist, run_dir / CHECKPOINT)
    write_json(run_dir / "frontier.json", front.records())
    write_json(run_dir / "summary.json", summary(hist, front, frontier_ref))
    return run_dir


def load_run(run_dir: Path) -> tuple[History, list[dict], dict]:
    """A saved run's History, frontier records and summary, read with writers kept out."""
    run_dir = Path(run_dir)
    with reading([run_dir]) as running:
        _refuse_running(running)
        if not is_complete(run_dir):
            raise UserError(f"{run_dir} is not a complete run (no summary.json); resume it first")
        hist = load_checkpoint(run_dir / CHECKPOINT)
        return hist, read_json(run_dir / "frontier.json"), read_json(run_dir / "summary.json")


def _refuse_running(running: dict[Path, str]) -> None:
    """UserError naming the first run of `running` (lock.reading) another process writes."""
    for d, owner in running.items():
        raise UserError(f"{d} is running: it is being written by {owner}; wait until it is "
                        "saved, or leave it out")


def open_run(run_dir: Path, config: dict, resume: bool) -> History | None:
    """Check that `run_dir` can take this run; return the checkpoint to continue, if any.

    Resuming needs the saved settings, except `iters`, which may grow: a finished run resumed
    with more iterations is extended to what a run of that length gives."""
    run_dir = Path(run_dir)
    complete, ckpt = is_complete(run_dir), run_dir / CHECKPOINT
    if complete and not resume:
        raise UserError(f"{run_dir} already holds a complete run; choose another run directory")
    if not resume and ckpt.exists():
        raise UserError(f"{run_dir} holds an unfinished run; resume it (--resume) or choose "
                        "another run directory")
    if not resume or not (run_dir / "config.json").exists():
        return None
    diff = config_diff(read_json(run_dir / "config.json"), config, ignore=("iters",))
    if diff:
        raise UserError(f"cannot resume {run_dir}: its config differs in {'; '.join(diff)}; "
                        "rerun with the saved settings or choose another run directory")
    if not ckpt.exists():      # stopped before its first checkpoint: nothing to continue
        return None
    saved = load_checkpoint(ckpt)
    if config["iters"] < len(saved) or (complete and config["iters"] == len(saved)):
        raise UserError(f"cannot resume {run_dir} to iters={config['iters']}: it holds "
                        f"{len(saved)} iterations{' and is complete' if complete else ''}; give "
                        f"iters > {len(saved)} to extend it")
    return saved


def merged_frontier(run_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """One frontier over several finished runs: its records (frontier.json format) and the run
    each point came from. Only each run's own frontier points can be on the merged frontier
    (a point beaten at every penalty within its run stays beaten), so no model is loaded.
    The runs are read with writers kept out; one that another process writes raises UserError."""
    run_dirs = [Path(d) for d in run_dirs]
    with reading(run_dirs) as running:
        _refuse_running(running)
        return _merge(run_dirs)


def _merge(run_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    keys = ("model", "fluency_model", "target", "seq_len", "prefix", "suffix")
    records, runs, first = [], [], None
    for d in run_dirs:
        if not is_complete(d):
            raise UserError(f"{d} is not a complete run directory (no summary.json); "
                            "finish it with `fluentdream dream ... --resume`")
        config = read_json(d / "config.json")
        seen = {k: config.get(k) or None for k in keys}   # "" context = none (older runs)
        first = first or (d, seen)
        if seen != first[1]:
            diff = ", ".join(f"{k} {first[1][k]!r} vs {seen[k]!r}" for k in keys
                             if seen[k] != first[1][k])
            raise UserError(f"cannot merge {first[0]} and {d}: different {diff}; "
                            "a frontier compares prompts for one target on one model in one "
                            "context")
        part = read_json(d / "frontier.json")
        records += part
        runs += [d.name] * len(part)
    f = np.array([r["target"] for r in records], dtype=np.float64)
    ce = np.array([r["xentropy"] for r in records], dtype=np.float64)
    idx, lams = frontier_indices(f, ce)
    return [dict(records[i], lam=float(lam)) for i, lam in zip(idx, lams)], [runs[i] for i in idx]
