"""Sweeps: many dreams (target x seed x config overrides) on one model, in-process or on Ray.

    jobs = make_jobs(["L1.N5", "L1.N6"], seeds=range(4), overrides=[{"iters": 50}])
    results = run_jobs("embedded", jobs, Path("results/sweep"), EPOConfig(), executor="ray",
                       workers=2, wandb="offline")
    [r.status for r in results]        # "done", "skipped" (already complete) or "failed"

Each job writes its own run directory under `out` (runs.py). A complete one (summary.json) made
with the same settings is skipped, one made with fewer iterations is extended, an unfinished one
is resumed from its checkpoint, so re-running a sweep finishes it. The local executor runs up to
`batch` jobs in lockstep (session.run_many: one forward pass scores all their children; each
keeps its own run directory, W&B run, checkpoints and exact resume); if a batch fails, its jobs
are run again one by one, so a bad job fails only itself. Before any job runs, every run
directory's saved config.json is compared with the sweep's settings and every target is checked
against the model: a mismatch or a bad target raises fd.UserError and nothing runs. A job that
raises during its run is recorded in RUN_DIR/error.json and the others go on. All W&B runs of a sweep share
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
from .errors import UserError
from .runfiles import config_diff, is_complete, read_json, write_json
from .runs import run_config, run_dream, run_dir_for, slug
from .tracking import FRONTIER_REF

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
        raise UserError(f"seeds must look like 0-3 or 0,5,7, got {text!r}") from None
    if not seeds:
        raise UserError(f"no seeds in {text!r}")
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
    batch: int = 8            # local executor: jobs run in lockstep

    def config(self, job: Job) -> EPOConfig:
        return self.base.replace(seed=job.seed, **job.overrides)

    def expected(self, job: Job, target_name: str | None) -> dict:
        """The config.json this job's run writes (run_dream)."""
        cfg = self.config(job)
        every = (cfg.restart_frequency or 30) if self.checkpoint_every is None else self.checkpoint_every
        return run_config(cfg, self.model, target_name, None, FRONTIER_REF, every)


def _batch_key(cfg: EPOConfig) -> tuple:
    """Settings every run of one batched loop must share (one Scorer serves them)."""
    return (cfg.seq_len, cfg.retokenize, cfg.prefix, cfg.suffix)


def run_batch(lm, jobs: list[Job], s: Settings) -> list[JobResult]:
    """Jobs in one batched loop; if the batch raises, each job again alone (run_job), so one
    bad job fails only itself. Ctrl-C returns every job as far as it got ("interrupted")."""
    from .session import RunSpec, run_many
    from .targets import parse_target
    from .tracking import start_tracker

    if len(jobs) == 1:
        return [run_job(lm, jobs[0], s)]
    tracker = functools.partial(start_tracker, s.wandb, project=s.project, group=s.group)
    try:
        specs = []
        for job in jobs:
            run_dir = job.run_dir(s.out, s.model)
            (run_dir / "error.json").unlink(missing_ok=True)
            specs.append(RunSpec(parse_target(job.target, lm), s.config(job), run_dir, resume=True,
                                 checkpoint_every=s.checkpoint_every, make_tracker=tracker,
                                 extra=dict(sweep_group=s.group, batched=len(jobs))))
        results = run_many(lm, specs)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the others
        log.warning("a batch of %d jobs failed (%s: %s); running them one by one", len(jobs),
                    type(e).__name__, e)
        return [run_job(lm, job, s) for job in jobs]
    return [JobResult(job, r.run_dir, "done", summary=read_json(r.run_dir / "summary.json"))
            if r.complete else JobResult(job, r.run_dir, "interrupted")
            for job, r in zip(jobs, results)]


def run_job(lm, job: Job, s: Settings) -> JobResult:
    """One dream into its run directory (resumed or extended if it holds a run of this job);
    any exception becomes a failed JobResult + error.json."""
    from .targets import parse_target
    from .tracking import start_tracker

    run_dir = job.run_dir(s.out, s.model)
    (run_dir / "error.json").unlink(missing_ok=True)
    try:
        cfg = s.config(job)
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

    def run_batch(self, jobs: list[Job], s: Settings) -> list[JobResult]:
        return run_batch(self.lm, jobs, s)

    def check(self, jobs: list[Job], s: Settings) -> list[str]:
        """What is wrong with each job's target or settings on this model (empty: all fine)."""
        from .epo import check_run
        from .targets import parse_target

        problems = []
        for job in jobs:
            try:
                check_run(self.lm, s.config(job), parse_target(job.target, self.lm))
            except UserError as e:
                problems.append(f"{job.target} (seed {job.seed}): {e}")
        return problems


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
             progress: bool = False, batch: int = 8) -> list[JobResult]:
    """Run every job; returns one JobResult per job, in order. `group` (the W&B group) defaults
    to the name of `out`, so a re-run of the sweep lands in the same group. `batch`: jobs the
    local executor runs in lockstep (1: one after another)."""
    if executor not in EXECUTORS:
        raise UserError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
    out = Path(out)
    s = Settings(model, out, base or EPOConfig(), wandb, project,
                 group or slug(out.resolve().name), checkpoint_every, batch)
    done = finished_runs(jobs, s)
    results = {i: JobResult(jobs[i], jobs[i].run_dir(out, model), "skipped", summary=summary)
               for i, summary in done.items()}
    todo = [i for i in range(len(jobs)) if i not in done]
    bar = SweepProgress(len(jobs), progress)
    for i in done:
        bar.finished(results[i], was_running=False)
    try:
        if todo and executor == "local":
            _run_local(jobs, todo, s, results, bar)
        elif todo:
            _run_ray(jobs, todo, s, results, bar, ray_address, workers, gpus_per_worker)
    finally:
        bar.close()
    return [results[i] for i in sorted(results)]


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


def _check_all(problems: list[str], n: int) -> None:
    if problems:
        raise UserError(f"{len(problems)} of {n} jobs cannot run, so none was started: "
                        f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")


def _run_local(jobs, todo, s: Settings, results, bar: SweepProgress) -> None:
    worker = Worker(s.model, s.base.device, s.base.dtype)
    _check_all(worker.check([jobs[i] for i in todo], s), len(todo))
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(_batch_key(s.config(jobs[i])), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), s.batch):
            chunk = members[start:start + s.batch]
            bar.started(len(chunk))
            for i, r in zip(chunk, worker.run_batch([jobs[i] for i in chunk], s)):
                results[i] = r
                bar.finished(r)
            if any(results[i].status == "interrupted" for i in chunk):
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
        _check_all(ray.get(actors[0].check.remote([jobs[i] for i in todo], s)), len(todo))
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
