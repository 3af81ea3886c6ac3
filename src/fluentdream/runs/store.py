"""Run directories: one per dream, the source of truth for every reported number (DESIGN §7).

    result = run_dream(lm, target, cfg, Path("results/my-run"), resume=True,
                       make_tracker=lambda run_dir, config: start_tracker("auto", run_dir, config))
    hist, frontier_records, summary = load_run("results/my-run")

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

import functools
import logging
import platform
import re
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..core.config import EPOConfig
from ..errors import UserError
from ..core.frontier import Frontier, frontier_indices, frontier_quality
from ..core.history import History
from .lock import RunLock, claim, reading, wait_free
# The run files' helpers live in runfiles.py; experiments and analysis import them from here.
from .files import (CHECKPOINT, config_diff, is_complete, load_checkpoint,  # noqa: F401
                       read_json, same_complete_run, save_history, write_json)
from .session import MakeTracker, RunResult, RunSpec, run_many
from .tracking import CE_THRESHOLDS, FRONTIER_REF, Tracker

if TYPE_CHECKING:
    from ..core.epo import IterationReport

log = logging.getLogger(__name__)
PACKAGES = ("numpy", "torch", "transformers", "tokenizers", "datasets", "wandb", "ray")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def run_dir_for(parent: Path, model: str, target: str, seed: int) -> Path:
    return Path(parent) / f"{slug(Path(model).name)}__{slug(target)}__seed{seed}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_info() -> dict:
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha or None, "git_dirty": dirty if sha else None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(cfg: EPOConfig, device: str, **extra) -> dict:
    from .. import __version__
    return dict(git_info(), fluentdream=__version__, python=sys.version.split()[0],
                packages={p: _version(p) for p in PACKAGES}, platform=platform.platform(),
                device=device, seed=cfg.seed, **extra)


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

    from ..core.scoring.scorer import Scorer   # the model stack, only for the runs that need it
    from ..core.context import Context
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
    prov = prov or provenance(cfg, device=str(hist.meta.get("device", "")), end_time=_now())
    write_json(run_dir / "provenance.json", prov)
    save_history(hist, run_dir / CHECKPOINT)
    write_json(run_dir / "frontier.json", front.records())
    write_json(run_dir / "summary.json", summary(hist, front, frontier_ref))
    return run_dir


def dream_many(lm, jobs: list, parent: Path, desc: str = "dream", *, wandb: str = "disabled",
               project: str = "fluentdream", group: str | None = None,
               stop: Callable[[Path, IterationReport], bool] | None = None) -> list[Path]:
    """Run every (target, cfg) job whose run directory under `parent` is unfinished, in lockstep
    (session.run_many: one forward pass scores every run's children), and save each run. Each
    run keeps its own run directory, W&B run (mode `wandb`, in `group`), checkpoints and exact
    resume: an unfinished run is continued from its checkpoint. stop(run_dir, report) returning
    True ends that run there (a time budget, say); it is saved as finished with the iterations
    it made.

    Processes that share `parent` share its jobs (lock.py): each runs the jobs no other process
    holds ("taken by ..." in the log), then waits for the others' to be saved, and takes over
    any left unfinished (its process died: resumed from the checkpoint). So every job is
    computed once however many processes run the same jobs.

    Returns all the jobs' run directories, finished ones included (sweeps resume, STYLE §7);
    after Ctrl-C, as soon as the runs of this process are saved.
    """
    from .tracking import start_tracker

    def tracker(d: Path, config: dict) -> Tracker:
        return start_tracker(wandb, d, config, project=project, group=group)

    dirs = [run_dir_for(parent, lm.name, target.name, cfg.seed) for target, cfg in jobs]
    configs = [run_config(cfg, lm.name, target.name) for target, cfg in jobs]
    pending = [i for i in range(len(jobs)) if not same_complete_run(dirs[i], configs[i])]
    told: set[int] = set()
    while pending:
        claimed = _claim_jobs(dirs, configs, pending, told)
        if not claimed:
            log.warning("waiting for %d runs that other processes are writing in %s",
                        len(pending), parent)
            wait_free([dirs[i] for i in pending])
        else:
            specs = [RunSpec(jobs[i][0], jobs[i][1], dirs[i], resume=True, make_tracker=tracker,
                             extra=dict(batched=len(claimed)), lock=lock,
                             stop=None if stop is None else functools.partial(stop, dirs[i]))
                     for i, lock in claimed.items()]
            try:
                results = run_many(lm, specs, progress=True, desc=desc)
            finally:
                for lock in claimed.values():
                    lock.release()
            if not all(r.complete for r in results):      # Ctrl-C: saved; a rerun resumes
                return dirs
        pending = [i for i in pending if not same_complete_run(dirs[i], configs[i])]
    return dirs


def _claim_jobs(dirs: list[Path], configs: list[dict], pending: list[int],
                told: set[int]) -> dict[int, RunLock]:
    """{job index: its lock} for the pending jobs no other process holds and none has saved
    meanwhile; the taken ones are logged once (their index joins `told`)."""
    claimed: dict[int, RunLock] = {}
    try:
        for i in pending:
            lock = claim(dirs[i])
            if isinstance(lock, str):
                if i not in told:
                    log.warning("%s: taken by %s; left to it", dirs[i], lock)
                    told.add(i)
            elif same_complete_run(dirs[i], configs[i]):
                lock.release()
            else:
                claimed[i] = lock
    except BaseException:
        for lock in claimed.values():
            lock.release()
        raise
    return claimed


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


def run_dream(lm, target, cfg: EPOConfig, run_dir: Path, *, fluency=None, resume: bool = False,
              checkpoint_every: int | None = None, make_tracker: MakeTracker | None = None,
              frontier_ref: tuple[float, float] = FRONTIER_REF, progress: bool = False,
              lock: RunLock | None = None, **provenance_extra) -> RunResult:
    """EPO with a run directory: checkpoints every `checkpoint_every` iterations (default the
    restart period, else 30), resumes an unfinished run when `resume` (or extends a finished one
    to more `cfg.iters`), mirrors every iteration to the tracker (a resumed run replays the saved
    iterations into a new tracker run first), and saves on Ctrl-C. Raises UserError, before
    writing anything, for bad settings or a run_dir holding a finished or a different run; a run
    that fails before its first checkpoint leaves no config.json or provenance.json behind.
    A run_dir another process writes raises lock.RunTaken (a UserError naming it); `lock`: the
    caller's lock on run_dir, if it took it already. One run of session.run_many."""
    spec = RunSpec(target, cfg, Path(run_dir), resume, checkpoint_every, make_tracker,
                   frontier_ref, provenance_extra, lock=lock)
    result, = run_many(lm, [spec], fluency=fluency, progress=progress, desc=target.name)
    return result


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
