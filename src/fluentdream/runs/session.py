"""Run directories around one batched EPO loop (DESIGN §7): every run keeps its own directory,
config.json, provenance.json, checkpoints, tracker (W&B run) and exact resume, while all the runs
share one `batched.epo_many` loop, so one forward pass scores every run's children.

    results = run_many(lm, [RunSpec(target, cfg.replace(seed=s), out / f"s{s}", resume=True)
                            for s in range(8)])
    result, = run_many(lm, [RunSpec(target, cfg, run_dir)])        # runs.dream.run_dream

A run's life: open (check the settings, take the directory's lock (lock.py), write config.json
and provenance.json, start its tracker; a resumed run first replays its saved iterations into
the tracker) -> after each of its
iterations (log, and checkpoint every `checkpoint_every`) -> finish (frontier.json, summary.json
written last as the completion mark) or, after Ctrl-C, save the iterations done so far -> release
the lock. A failure before the loop starts removes what the opening wrote, so a retry starts
clean. A run directory another process writes is refused (lock.RunTaken) before anything is
written; a caller that already holds the lock (a sweep's claim) passes it in RunSpec.lock.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.batched import epo_many
from ..core.checks import check_run
from ..core.config import EPOConfig
from ..core.frontier import Frontier, pareto_frontier
from ..core.history import History
from ..core.progress import ProgressBar
from ..errors import UserError
from ..files import write_json
from ..provenance import now, provenance
from ..targets.kinds import Target
from .files import CHECKPOINT, read_json, save_history
from .lock import RunLock
from .store import open_run, run_config, save_run, with_post
from .tracking import FRONTIER_REF, IterationMetrics, NullTracker, Tracker

MakeTracker = Callable[[Path, dict], Tracker]


@dataclass
class RunSpec:
    """One run of a batch: what to dream, with which settings, into which directory."""
    target: Target
    cfg: EPOConfig
    run_dir: Path
    resume: bool = False                 # continue an unfinished run (or extend a finished one)
    checkpoint_every: int | None = None  # default: the restart period, else 30
    make_tracker: MakeTracker | None = None
    frontier_ref: tuple[float, float] = FRONTIER_REF
    extra: dict = field(default_factory=dict)   # more provenance.json entries
    # stop(report) True after an iteration ends the run there, saved as finished with the
    # iterations it made (a time budget, say)
    stop: Callable[[object], bool] | None = None
    # the lock on run_dir when the caller holds it already (it then releases it); else the
    # session takes it and releases it at the end
    lock: RunLock | None = None


@dataclass
class RunResult:
    run_dir: Path
    history: History
    frontier: Frontier | None   # None when interrupted
    complete: bool              # False after Ctrl-C: history.npz holds what was done; resume it


class Session:
    """One run directory from opening to its end; raises UserError before writing anything."""

    def __init__(self, lm, spec: RunSpec, fluency=None):
        check_run(lm, target=spec.target, cfg=spec.cfg)   # bad settings fail before any write
        self.spec, self.run_dir = spec, Path(spec.run_dir)
        every = spec.checkpoint_every
        self.every = (spec.cfg.restart_frequency or 30) if every is None else every
        if not isinstance(self.every, int) or self.every < 1:
            raise UserError(f"checkpoint_every must be a positive integer, got {self.every!r}")
        self.config = run_config(spec.cfg, lm.name, spec.target.name,
                                 fluency.name if fluency else None, spec.frontier_ref, self.every)
        assert spec.lock is None or spec.lock.holds(self.run_dir), "a lock on another directory"
        self.lock, self.own_lock = spec.lock or RunLock.acquire(self.run_dir), spec.lock is None
        self.saved, opened = None, False
        try:
            self.saved = open_run(self.run_dir, self.config, spec.resume)
            opened = True
            self.tracker = self._open(spec.make_tracker)
            self.prov = self._start_provenance(lm)
        except BaseException:
            if opened:
                self._remove_setup()
            self.release()
            raise
        self.metrics = IterationMetrics(*spec.frontier_ref)
        self.done = {"n": 0, "state": None}      # last finished iteration's state, for Ctrl-C
        if self.saved is not None:
            self.saved.meta.pop("interrupted", None)
            self.saved.meta.setdefault("resumed_at", []).append(len(self.saved))
            self.saved.meta.setdefault("config", {})["iters"] = spec.cfg.iters   # an extension
            self.done.update(n=len(self.saved), state=copy.deepcopy(self.saved.state))
            for t in range(len(self.saved)):
                self.tracker.log(self.metrics(self.saved, t), step=t)

    def _open(self, make_tracker: MakeTracker | None) -> Tracker:
        """Write config.json and start the tracker. A finished run being extended is unfinished
        again until it ends, so its summary.json (the completion mark) goes first."""
        if self.saved is not None:
            for name in ("summary.json", "frontier.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        write_json(self.run_dir / "config.json", self.config)
        return make_tracker(self.run_dir, self.config) if make_tracker else NullTracker()

    def _start_provenance(self, lm) -> dict:
        earlier = []
        if self.saved is not None and (self.run_dir / "provenance.json").exists():
            old = read_json(self.run_dir / "provenance.json")
            earlier = old.pop("previous_sessions", []) + [old]
        prov = provenance(self.spec.cfg, device=str(lm.device), start_time=now(), end_time=None,
                          dtype=str(lm.dtype).removeprefix("torch."), model_source=lm.source,
                          wandb_run_id=self.tracker.run_id,
                          wandb_mode=getattr(self.tracker, "mode", None),
                          resumed_from_iteration=len(self.saved) if self.saved is not None else None,
                          host=self.lock.owner["host"], pid=self.lock.owner["pid"],
                          previous_sessions=earlier, **self.spec.extra)
        write_json(self.run_dir / "provenance.json", prov)
        return prov

    def after_iteration(self, report) -> None:
        """Log iteration t; checkpoint after every `every`-th (the last one saves in finish)."""
        hist, t = report.history, report.iteration
        self.done.update(n=t + 1, state=copy.deepcopy(hist.state))  # the loop mutates its state
        self.tracker.log(self.metrics(hist, t), step=t)
        if (t + 1) % self.every == 0 and t + 1 < self.spec.cfg.iters:
            save_history(hist, self.run_dir / CHECKPOINT)

    def abort(self) -> None:
        """The loop failed: end the tracker; remove the setup if nothing was checkpointed."""
        self.tracker.finish(exit_code=1)
        self._remove_setup()

    def _remove_setup(self) -> None:
        """Remove config.json and provenance.json when nothing was checkpointed, so a retry
        starts clean (releasing the lock then removes the directory if the lock made it)."""
        d = self.run_dir
        if self.saved is not None or (d / CHECKPOINT).exists() or not d.is_dir():
            return
        for name in ("config.json", "provenance.json"):
            (d / name).unlink(missing_ok=True)

    def release(self) -> None:
        """Release the directory's lock if this session took it."""
        if self.own_lock:
            self.lock.release()

    def finish(self, lm, hist: History) -> RunResult:
        """Save the finished run (or, after Ctrl-C, the iterations done) and end the tracker."""
        if hist.meta.get("interrupted"):
            return self._save_interrupted(hist)
        spec = self.spec
        front = with_post(lm, spec.target, pareto_frontier([hist], lm.tokenizer), spec.cfg)
        save_run(self.run_dir, hist, front, spec.cfg, dict(self.prov, end_time=now()),
                 self.config, spec.frontier_ref)
        self.tracker.log_frontier(front.records(), hist)
        self.tracker.log_file(self.run_dir / CHECKPOINT, "history")
        self.tracker.finish()
        return RunResult(self.run_dir, hist, front, True)

    def _save_interrupted(self, hist: History) -> RunResult:
        """Ctrl-C may land mid-iteration, so save the History up to the last finished iteration
        with that iteration's state (not the loop's half-updated one)."""
        partial = hist.truncated(self.done["n"])
        partial.state = self.done["state"]
        if partial.state is not None:
            save_history(partial, self.run_dir / CHECKPOINT)
        write_json(self.run_dir / "provenance.json", dict(self.prov, end_time=now(),
                                                          interrupted=True))
        self.tracker.finish(exit_code=130)
        return RunResult(self.run_dir, partial, None, False)


def run_many(lm, specs: list[RunSpec], *, fluency=None, progress: bool = False,
             desc: str = "dream") -> list[RunResult]:
    """Open every run, run them all in one batched loop, save each; RunResults in spec order.
    Runs of one call share seq_len, retokenize, prefix and suffix (one Scorer serves them).
    Every lock a session took is released at the end, whatever happened."""
    sessions: list[Session] = []
    try:
        try:
            for spec in specs:
                sessions.append(Session(lm, spec, fluency))
            hists = _loop(lm, sessions, fluency, progress, desc)
        except BaseException:
            for s in sessions:
                s.abort()
            raise
        return [s.finish(lm, hist) for s, hist in zip(sessions, hists)]
    finally:
        for s in sessions:
            s.release()


def _loop(lm, sessions: list[Session], fluency, progress: bool, desc: str) -> list[History]:
    """The batched EPO loop over the opened sessions, with a progress bar if asked."""
    bar = None
    if progress:
        done = sum(len(s.saved) for s in sessions if s.saved is not None)
        bar = ProgressBar(sum(s.spec.cfg.iters for s in sessions), done, desc)

    def each(i: int, report) -> bool:
        sessions[i].after_iteration(report)
        if bar is not None:
            bar(report)
        return bool(sessions[i].spec.stop is not None and sessions[i].spec.stop(report))
    try:
        return epo_many(lm, [(s.spec.target, s.spec.cfg) for s in sessions], fluency=fluency,
                        callback=each, resume=[s.saved for s in sessions])
    finally:
        if bar is not None:
            bar.close()
