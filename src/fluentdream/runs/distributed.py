"""Sweeps: many dreams (target x seed x config overrides) on one model, in-process or on Ray.

    jobs = make_jobs(["L1.N5", "L1.N6"], seeds=range(4), overrides=[{"iters": 50}])
    results = run_jobs("embedded", jobs, Path("results/sweep"), EPOConfig(), executor="ray",
                       workers=2, wandb="offline")
    [r.status for r in results]        # "done", "skipped" (already complete), "taken" (done by
                                       # another process) or "failed"

Each job writes its own run directory under `out` (fluentdream.runs.store). A complete one (summary.json) made
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

Several sweeps may share `out` (other terminals, machines, Ray clusters): a job is claimed by
taking its run directory's lock (lock.py) before anything is written there, so a job another
process holds is skipped ("taken"); once a sweep has nothing left to claim it waits for those
jobs, and runs any that their process left unfinished (it died: resumed from the checkpoint).
Every job is then computed once, and every sweep ends with every job complete.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from ..core.config import EPOConfig
from ..errors import UserError
# Job, JobResult and Settings live in jobs.py (one process's side); users import them from here.
from .jobs import (Job, JobResult, Settings, Worker, batch_key,  # noqa: F401
                   finished_runs, record_failure)
from .lock import command_line, wait_free
from .store import slug

EXECUTORS = ("local", "ray")


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


class SweepProgress:
    """A tqdm bar over jobs, with counts of done, running, taken (held by other processes now),
    failed and skipped."""

    def __init__(self, total: int, show: bool):
        from tqdm.auto import tqdm
        self.counts = dict(done=0, running=0, taken=0, failed=0, skipped=0)
        self.bar = tqdm(total=total, desc="sweep", unit="job", disable=not show, dynamic_ncols=True)

    def started(self, n: int = 1) -> None:
        self.counts["running"] += n
        self.bar.set_postfix(self.counts)

    def moved(self, was: str, now: str | None = None) -> None:
        """A job left one count (for another, or to be started again)."""
        self.counts[was] -= 1
        if now is not None:
            self.counts[now] += 1
        self.bar.set_postfix(self.counts)

    def finished(self, r: JobResult, was: str | None = "running") -> None:
        if was is not None:
            self.counts[was] -= 1
        if r.status in self.counts and r.status != "taken":
            self.counts[r.status] += 1
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_jobs(model: str, jobs: list[Job], out: Path, base: EPOConfig | None = None, *,
             executor: str = "local", ray_address: str | None = None, workers: int = 1,
             gpus_per_worker: float = 0.0, wandb: str = "disabled", project: str = "fluentdream",
             group: str | None = None, checkpoint_every: int | None = None,
             progress: bool = False, batch: int = 8,
             command: str | None = None) -> list[JobResult]:
    """Run every job; returns one JobResult per job, in order. `group` (the W&B group) defaults
    to the name of `out`, so a re-run of the sweep lands in the same group. `batch`: jobs the
    local executor runs in lockstep (1: one after another). `command`: what the jobs' owner
    records name while they run (default: this process's command line)."""
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
                 group or slug(out.resolve().name), checkpoint_every, batch, command or command_line())
    done = finished_runs(jobs, s)
    results = {i: JobResult(jobs[i], jobs[i].run_dir(out, model), "skipped", summary=summary)
               for i, summary in done.items()}
    todo = [i for i in range(len(jobs)) if i not in done]
    bar = SweepProgress(len(jobs), progress)
    for i in done:
        bar.finished(results[i], was=None)
    try:
        if todo and executor == "local":
            _run_local(jobs, todo, s, results, bar)
        elif todo:
            _run_ray(jobs, todo, s, results, bar, ray_address, workers, gpus_per_worker)
    finally:
        bar.close()
    return [results[i] for i in sorted(results)]


def _check_all(problems: list[str], n: int) -> None:
    if problems:
        raise UserError(f"{len(problems)} of {n} jobs cannot run, so none was started: "
                        f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")


def _record(i: int, r: JobResult, results: dict, waiting: dict, bar: SweepProgress) -> None:
    """A job's result from a worker: final, or "taken" (then it waits for its holder)."""
    if r.status == "taken":
        waiting[i] = r
        bar.moved("running", "taken")
    else:
        results[i] = r
        bar.finished(r)


def _settle(jobs: list[Job], s: Settings, waiting: dict[int, JobResult], results: dict,
            bar: SweepProgress) -> list[int]:
    """Wait until a job another process held is free again: a saved one is final ("taken",
    with its summary); an unfinished one (its process died or was stopped) is returned, to
    run here."""
    free = set(wait_free([jobs[i].run_dir(s.out, s.model) for i in waiting]))
    again = []
    for i in [i for i in waiting if jobs[i].run_dir(s.out, s.model) in free]:
        r = waiting.pop(i)
        summary = finished_runs([jobs[i]], s).get(0)
        if summary is None:
            bar.moved("taken")
            again.append(i)
        else:
            results[i] = JobResult(r.job, r.run_dir, "taken", summary=summary,
                                   taken_by=r.taken_by)
            bar.finished(results[i], was="taken")
    return again


def _run_local(jobs, todo, s: Settings, results, bar: SweepProgress) -> None:
    worker = Worker(s.model, s.base.device, s.base.dtype)
    _check_all(worker.check([jobs[i] for i in todo], s), len(todo))
    queue, waiting = list(todo), {}
    while queue or waiting:
        groups: dict[tuple, list[int]] = {}
        for i in queue:
            groups.setdefault(batch_key(s.config(jobs[i])), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), s.batch):
                chunk = members[start:start + s.batch]
                bar.started(len(chunk))
                for i, r in zip(chunk, worker.run_batch([jobs[i] for i in chunk], s)):
                    _record(i, r, results, waiting, bar)
                if any(results[i].status == "interrupted" for i in chunk if i in results):
                    raise KeyboardInterrupt
        queue = _settle(jobs, s, waiting, results, bar) if waiting else []


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
    queue, running, waiting = list(todo), {}, {}   # running: ObjectRef -> (actor, job index)
    try:
        _check_all(ray.get(actors[0].check.remote([jobs[i] for i in todo], s)), len(todo))
        while queue or running or waiting:
            busy = {a for a, _ in running.values()}
            for actor in [a for a in actors if a not in busy][:len(queue)]:
                i = queue.pop(0)
                running[actor.run.remote(jobs[i], s)] = (actor, i)
                bar.started()
            if not running and queue:     # every actor died
                for i in queue:
                    bar.started()
                    _record(i, record_failure(jobs[i], s, "no Ray worker left"), results,
                            waiting, bar)
                queue = []
            if not running:
                queue += _settle(jobs, s, waiting, results, bar) if waiting else []
                continue
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, i = running.pop(ref)
            try:
                r = ray.get(ref)
            except ray.exceptions.RayError as e:
                r = record_failure(jobs[i], s, f"{type(e).__name__}: {e}")
                if isinstance(e, ray.exceptions.RayActorError):
                    actors.remove(actor)
            _record(i, r, results, waiting, bar)
    finally:
        for actor in actors:
            ray.kill(actor)
