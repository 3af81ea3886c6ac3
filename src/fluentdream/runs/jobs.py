"""One sweep's jobs in one process (distributed.py runs them locally or on Ray): claim a job by
taking its run directory's lock (lock.py), run the claimed ones in lockstep or one by one, record
a failure in RUN_DIR/error.json while the job is still held.

    s = Settings("embedded", Path("results/sweep"), EPOConfig(iters=50), batch=4)
    worker = Worker(s.model, device=None, dtype=None)          # a Ray actor, or the local one
    worker.run_batch([Job("L1.N5", 0), Job("L1.N5", 1)], s)    # -> [JobResult, JobResult]

A job another process holds comes back "taken" (naming that process), one another process saved
meanwhile "skipped"; the caller decides whether to wait for them (distributed.py does).
"""
from __future__ import annotations

import functools
import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import EPOConfig
from ..errors import UserError
from ..files import write_json
from .dream import run_dream
from .files import config_diff, is_complete, read_json
from .lock import RunLock, claim
from .store import run_config, run_dir_for, slug
from .tracking import FRONTIER_REF

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    target: str                                   # a target spec, e.g. "L1.N5"
    seed: int
    overrides: dict = field(default_factory=dict)  # EPOConfig fields that differ from the base

    def run_dir(self, out: Path, model: str) -> Path:
        base = run_dir_for(out, model, self.target, self.seed)
        if not self.overrides:
            return base
        tag = "_".join(f"{k}{v}" for k, v in sorted(self.overrides.items()))
        return base.with_name(f"{base.name}__{slug(tag)}")


@dataclass
class JobResult:
    job: Job
    run_dir: Path
    status: str                   # "done", "skipped", "taken", "failed" or "interrupted"
    error: str | None = None
    summary: dict | None = None
    taken_by: str | None = None   # "taken": the process that held the job (lock.describe)


@dataclass(frozen=True)
class Settings:
    """How every job of a sweep is run and tracked (the same for all jobs)."""
    model: str
    out: Path
    base: EPOConfig
    wandb: str = "disabled"
    project: str = "fluentdream"
    group: str | None = None
    checkpoint_every: int | None = None
    batch: int = 8            # local executor: jobs run in lockstep
    command: str | None = None   # what the jobs' owner records name (the sweep's command line)

    def config(self, job: Job) -> EPOConfig:
        return self.base.replace(seed=job.seed, **job.overrides)

    def expected(self, job: Job, target_name: str | None) -> dict:
        """The config.json this job's run writes (run_dream)."""
        cfg = self.config(job)
        every = (cfg.restart_frequency or 30) if self.checkpoint_every is None else self.checkpoint_every
        return run_config(cfg, self.model, target_name, None, FRONTIER_REF, every)


def batch_key(cfg: EPOConfig) -> tuple:
    """Settings every run of one batched loop must share (one Scorer serves them)."""
    return (cfg.seq_len, cfg.retokenize, cfg.prefix, cfg.suffix)


def finished_runs(jobs: list[Job], s: Settings) -> dict[int, dict]:
    """{job index: summary} of the jobs whose run directory holds a finished run of the same
    settings (nothing to do). Raises UserError, before anything runs, if any job's run directory
    holds a run made with other settings; a finished run with fewer iterations is to be
    extended, not reused."""
    done, stale = {}, []
    for i, job in enumerate(jobs):
        run_dir = job.run_dir(s.out, s.model)
        if not (run_dir / "config.json").exists():
            continue
        saved = read_json(run_dir / "config.json")
        # the directory name is the target's, so only the other settings need comparing
        expected = s.expected(job, saved.get("target"))
        if diff := config_diff(saved, expected, ignore=("iters",)):
            stale.append(f"{run_dir}: {'; '.join(diff)}")
        elif is_complete(run_dir) and saved.get("iters") == expected["iters"]:
            done[i] = read_json(run_dir / "summary.json")
        elif is_complete(run_dir) and saved.get("iters", 0) > expected["iters"]:
            stale.append(f"{run_dir}: iters (saved {saved.get('iters')}, requested "
                         f"{expected['iters']})")
    if stale:
        raise UserError(f"{len(stale)} run directories in {s.out} hold runs made with other "
                        f"settings, e.g. {stale[0]}; nothing was run: use another --out, or the "
                        "settings they were made with")
    return done


def claim_job(job: Job, s: Settings) -> RunLock | JobResult:
    """The lock on the job's run directory, or the job's result when there is nothing to run:
    "taken" (another process holds it) or "skipped" (saved by another process meanwhile)."""
    run_dir = job.run_dir(s.out, s.model)
    lock = claim(run_dir, s.command)
    if isinstance(lock, str):
        return JobResult(job, run_dir, "taken", taken_by=lock)
    try:
        summary = finished_runs([job], s).get(0)
    except BaseException:
        lock.release()
        raise
    if summary is None:
        return lock
    lock.release()
    return JobResult(job, run_dir, "skipped", summary=summary)


def run_batch(lm, jobs: list[Job], s: Settings) -> list[JobResult]:
    """Claim the jobs (claim_job) and run the claimed ones in one batched loop; if the batch
    raises, each again alone (run_job), so one bad job fails only itself. Ctrl-C returns every
    job as far as it got ("interrupted")."""
    claims: list[RunLock | JobResult] = []
    try:
        for job in jobs:
            claims.append(claim_job(job, s))
        mine = [i for i, got in enumerate(claims) if isinstance(got, RunLock)]
        ran = _run_claimed(lm, [jobs[i] for i in mine], s, [claims[i] for i in mine])
        return [dict(zip(mine, ran)).get(i, got) for i, got in enumerate(claims)]
    finally:
        for got in claims:
            if isinstance(got, RunLock):
                got.release()


def _run_claimed(lm, jobs: list[Job], s: Settings, locks: list[RunLock]) -> list[JobResult]:
    """run_batch's loop over jobs whose locks it holds (locks[i] is jobs[i]'s)."""
    from .session import RunSpec, run_many
    from ..targets.kinds import parse_target
    from .tracking import start_tracker

    if len(jobs) <= 1:
        return [run_job(lm, job, s, lock) for job, lock in zip(jobs, locks)]
    tracker = functools.partial(start_tracker, s.wandb, project=s.project, group=s.group)
    try:
        specs = []
        for job, lock in zip(jobs, locks):
            run_dir = job.run_dir(s.out, s.model)
            (run_dir / "error.json").unlink(missing_ok=True)
            specs.append(RunSpec(parse_target(job.target, lm), s.config(job), run_dir, resume=True,
                                 checkpoint_every=s.checkpoint_every, make_tracker=tracker,
                                 extra=dict(sweep_group=s.group, batched=len(jobs)), lock=lock))
        results = run_many(lm, specs)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the others
        log.warning("a batch of %d jobs failed (%s: %s); running them one by one", len(jobs),
                    type(e).__name__, e)
        return [run_job(lm, job, s, lock) for job, lock in zip(jobs, locks)]
    return [JobResult(job, r.run_dir, "done", summary=read_json(r.run_dir / "summary.json"))
            if r.complete else JobResult(job, r.run_dir, "interrupted")
            for job, r in zip(jobs, results)]


def run_job(lm, job: Job, s: Settings, lock: RunLock | None = None) -> JobResult:
    """One dream into its run directory (resumed or extended if it holds a run of this job),
    claimed first unless `lock` holds it already; any exception becomes a failed JobResult +
    error.json (written while the job is still held)."""
    from ..targets.kinds import parse_target
    from .tracking import start_tracker

    if lock is None:
        got = claim_job(job, s)
        if isinstance(got, JobResult):
            return got
        with got:
            return run_job(lm, job, s, got)
    run_dir = job.run_dir(s.out, s.model)
    (run_dir / "error.json").unlink(missing_ok=True)
    try:
        cfg = s.config(job)
        target = parse_target(job.target, lm)
        tracker = functools.partial(start_tracker, s.wandb, project=s.project, group=s.group)
        result = run_dream(lm, target, cfg, run_dir, resume=True, make_tracker=tracker,
                           checkpoint_every=s.checkpoint_every, lock=lock, sweep_group=s.group)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the sweep
        return record_failure(job, s, f"{type(e).__name__}: {e}", traceback.format_exc(), lock)
    if not result.complete:
        return JobResult(job, run_dir, "interrupted")
    return JobResult(job, run_dir, "done", summary=read_json(run_dir / "summary.json"))


class Worker:
    """Holds one loaded model and runs jobs on it (a Ray actor, or the local executor)."""

    def __init__(self, model: str, device: str | None, dtype: str | None):
        from ..models.load import load_model
        self.lm = load_model(model, device=device, dtype=dtype)

    def run(self, job: Job, s: Settings) -> JobResult:
        return run_job(self.lm, job, s)

    def run_batch(self, jobs: list[Job], s: Settings) -> list[JobResult]:
        return run_batch(self.lm, jobs, s)

    def check(self, jobs: list[Job], s: Settings) -> list[str]:
        """What is wrong with each job's target or settings on this model (empty: all fine)."""
        from ..core.checks import check_run
        from ..targets.kinds import parse_target

        problems = []
        for job in jobs:
            try:
                check_run(self.lm, s.config(job), parse_target(job.target, self.lm))
            except UserError as e:
                problems.append(f"{job.target} (seed {job.seed}): {e}")
        return problems


def record_failure(job: Job, s: Settings, error: str, tb: str | None = None,
                   lock: RunLock | None = None) -> JobResult:
    """Record a failed job in RUN_DIR/error.json (removed when the job is next attempted),
    holding the job's lock: `lock`, or a fresh claim (a job whose Ray worker died). A job
    another process has claimed meanwhile is its job now: "taken", nothing written."""
    run_dir = job.run_dir(s.out, s.model)
    got = lock or claim(run_dir, s.command)
    if isinstance(got, str):
        return JobResult(job, run_dir, "taken", taken_by=got)
    try:
        write_json(run_dir / "error.json", dict(error=error, traceback=tb, job=job.__dict__,
                                                time=datetime.now(timezone.utc).isoformat()))
    finally:
        if lock is None:
            got.release()
    log.warning("job %s failed: %s", run_dir.name, error)
    return JobResult(job, run_dir, "failed", error=error)
