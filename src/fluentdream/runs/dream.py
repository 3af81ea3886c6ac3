"""Dreams with run directories: one (`run_dream`), or many in lockstep shared between processes
(`dream_many`), each a session of fluentdream.runs.session.

    result = run_dream(lm, target, cfg, Path("results/x"), resume=True)
    dirs = dream_many(lm, [(target, cfg.replace(seed=s)) for s in range(8)], Path("results/seeds"))
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

from ..core.batched import IterationReport
from ..core.config import EPOConfig
from .files import same_complete_run
from .lock import RunLock, claim, wait_free
from .session import MakeTracker, RunResult, RunSpec, run_many
from .store import run_config, run_dir_for
from .tracking import FRONTIER_REF, Tracker, start_tracker

log = logging.getLogger(__name__)


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


def shard_seeds(seeds: int, shard: str) -> list[int]:
    """Seeds of shard 'k/K' of range(seeds): k, k + K, ... ('0/1': all). Processes given the
    K shards split one experiment's seeds between them: on 2 cores two 1-thread processes score
    more candidates than one 2-thread process (LOG.md, 2026-12-02). ValueError names a bad shard."""
    try:
        k, K = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be k/K with integers 0 <= k < K, got {shard!r}") from None
    if not 0 <= k < K:
        raise ValueError(f"--shard must be k/K with integers 0 <= k < K, got {shard!r}")
    return list(range(seeds))[k::K]


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
