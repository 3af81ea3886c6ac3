"""Sweeps: many dreams (target x seed x config overrides) on one model, in-process or on Ray.

    jobs = make_jobs(["L1.N5", "L1.N6"], seeds=range(4), overrides=[{"iters": 50}])
    results = run_jobs("embedded", jobs, Path("results/sweep"), EPOConfig(), executor="ray",
                       workers=2, wandb="offline")
    [r.status for r in results]        # "done", "skipped" (already complete) or "failed"

Each job writes its own run directory under `out` (runs.py). A complete one (summary.json) is
skipped, an unfinished one is resumed from its checkpoint, so re-running a sweep finishes it. A job
that raises is recorded in RUN_DIR/error.json and the others go on. All W&B runs of a sweep share
one group. With Ray, each worker is an actor that loads the model once and runs jobs one after
another; `out` must be a filesystem every worker sees (one machine, or a shared mount), and
fluentdream must be installed on every node. `ray` is imported only for executor="ray".
"""
from __future__ import annotations

import functools
import itertools
import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import EPOConfig
from .runs import is_complete, read_json, run_dream, run_dir_for, slug, write_json

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


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
    status: str                   # "done", "skipped", "failed" or "interrupted"
    error: str | None = None
    summary: dict | None = None


def make_jobs(targets, seeds, overrides=({},)) -> list[Job]:
    """Every combination of target, seed and override dict."""
    return [Job(t, int(s), dict(o)) for t, s, o in itertools.product(targets, seeds, overrides)]


def parse_seeds(text: str) -> list[int]:
    """ "0-3" -> [0, 1, 2, 3]; "0,5,7" -> [0, 5, 7]; ranges and lists mix."""
    seeds = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ValueError(f"seeds must look like 0-3 or 0,5,7, got {text!r}") from None
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


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


def run_job(lm, job: Job, s: Settings) -> JobResult:
    """One dream into its run directory; any exception becomes a failed JobResult + error.json."""
    from .targets import parse_target
    from .tracking import start_tracker

    run_dir = job.run_dir(s.out, s.model)
    if is_complete(run_dir):
        return JobResult(job, run_dir, "skipped", summary=read_json(run_dir / "summary.json"))
    (run_dir / "error.json").unlink(missing_ok=True)
    try:
        cfg = s.base.replace(seed=job.seed, **job.overrides)
        target = parse_target(job.target, lm)
        tracker = functools.partial(start_tracker, s.wandb, project=s.project, group=s.group)
        result = run_dream(lm, target, cfg, run_dir, resume=True, make_tracker=tracker,
                           checkpoint_every=s.checkpoint_every, sweep_group=s.group)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the sweep
        return _failed(job, s, f"{type(e).__name__}: {e}", traceback.format_exc())
    if not result.complete:
        return JobResult(job, run_dir, "interrupted")
    return JobResult(job, run_dir, "done", summary=read_json(run_dir / "summary.json"))


class Worker:
    """Holds one loaded model and runs jobs on it (a Ray actor, or the local executor)."""

    def __init__(self, model: str, device: str | None, dtype: str | None):
        from .models import load_model
        self.lm = load_model(model, device=device, dtype=dtype)

    def run(self, job: Job, s: Settings) -> JobResult:
        return run_job(self.lm, job, s)


class SweepProgress:
    """A tqdm bar over jobs, with counts of done, running, failed and skipped."""

    def __init__(self, total: int, show: bool):
        from tqdm.auto import tqdm
        self.counts = dict(done=0, running=0, failed=0, skipped=0)
        self.bar = tqdm(total=total, desc="sweep", unit="job", disable=not show, dynamic_ncols=True)

    def started(self, n: int = 1) -> None:
        self.counts["running"] += n
        self.bar.set_postfix(self.counts)

    def finished(self, r: JobResult, was_running: bool = True) -> None:
        self.counts["running"] -= int(was_running)
        if r.status in self.counts:
            self.counts[r.status] += 1
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_jobs(model: str, jobs: list[Job], out: Path, base: EPOConfig | None = None, *,
             executor: str = "local", ray_address: str | None = None, workers: int = 1,
             gpus_per_worker: float = 0.0, wandb: str = "disabled", project: str = "fluentdream",
             group: str | None = None, checkpoint_every: int | None = None,
             progress: bool = False) -> list[JobResult]:
    """Run every job; returns one JobResult per job, in order. `group` (the W&B group) defaults
    to the name of `out`, so a re-run of the sweep lands in the same group."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    s = Settings(model, out, base or EPOConfig(), wandb, project,
                 group or slug(out.resolve().name), checkpoint_every)
    results: dict[int, JobResult] = {}
    todo = []
    bar = SweepProgress(len(jobs), progress)
    for i, job in enumerate(jobs):
        run_dir = job.run_dir(out, model)
        if is_complete(run_dir):
            results[i] = JobResult(job, run_dir, "skipped",
                                   summary=read_json(run_dir / "summary.json"))
            bar.finished(results[i], was_running=False)
        else:
            todo.append(i)
    try:
        if todo and executor == "local":
            _run_local(jobs, todo, s, results, bar)
        elif todo:
            _run_ray(jobs, todo, s, results, bar, ray_address, workers, gpus_per_worker)
    finally:
        bar.close()
    return [results[i] for i in sorted(results)]


def _run_local(jobs, todo, s: Settings, results, bar: SweepProgress) -> None:
    worker = Worker(s.model, s.base.device, s.base.dtype)
    for i in todo:
        bar.started()
        results[i] = worker.run(jobs[i], s)
        bar.finished(results[i])
        if results[i].status == "interrupted":
            raise KeyboardInterrupt


def _run_ray(jobs, todo, s: Settings, results, bar: SweepProgress, address: str | None,
             workers: int, gpus: float) -> None:
    """Keep every actor busy with one job at a time, so the bar knows what is running. A job
    whose actor dies (out of memory, node lost) is failed and that actor retired."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(Worker)
    actors = [actor_cls.remote(s.model, s.base.device, s.base.dtype)
              for _ in range(min(workers, len(todo)))]
    queue, running = list(todo), {}     # running: ObjectRef -> (actor, job index)
    try:
        while queue or running:
            busy = {a for a, _ in running.values()}
            for actor in [a for a in actors if a not in busy][:len(queue)]:
                i = queue.pop(0)
                running[actor.run.remote(jobs[i], s)] = (actor, i)
                bar.started()
            if not running:     # every actor died
                for i in queue:
                    results[i] = _failed(jobs[i], s, "no Ray worker left")
                    bar.finished(results[i], was_running=False)
                break
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, i = running.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayError as e:
                results[i] = _failed(jobs[i], s, f"{type(e).__name__}: {e}")
                if isinstance(e, ray.exceptions.RayActorError):
                    actors.remove(actor)
            bar.finished(results[i])
    finally:
        for actor in actors:
            ray.kill(actor)


def _failed(job: Job, s: Settings, error: str, tb: str | None = None) -> JobResult:
    """Record a failed job in RUN_DIR/error.json (removed when the job is next attempted)."""
    run_dir = job.run_dir(s.out, s.model)
    write_json(run_dir / "error.json", dict(error=error, traceback=tb, job=job.__dict__,
                                            time=datetime.now(timezone.utc).isoformat()))
    log.warning("job %s failed: %s", run_dir.name, error)
    return JobResult(job, run_dir, "failed", error=error)
