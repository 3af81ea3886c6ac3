"""Trackers mirror a run to W&B; the run directory stays the source of truth (DESIGN §7).

    tracker = start_tracker("auto", run_dir, config, project="fluentdream")  # or NullTracker()
    metrics = IterationMetrics(ref_xentropy=6.0, ref_target=0.0)
    tracker.log(metrics(hist, t), step=t)          # after every iteration t = 0, 1, 2, ...
    tracker.log_frontier(front.records(), hist)    # the frontier as a table (iteration found)
    tracker.log_file(run_dir / "history.npz", "history")
    tracker.finish()

Metric namespace (one W&B history record per EPO iteration, step = iteration index):
  epo/slot{i}/target, epo/slot{i}/xentropy   prompt held by population slot i after the iteration
  epo/mean_length                            mean length in tokens of the slots' prompts (it moves
                                             only with the insert and delete operators)
  epo/best_target                            best target of any candidate so far
  epo/best_target_ce_below_{4,5,6}           ... among candidates with CE below 4, 5, 6 nats
  epo/frontier_quality                       hypervolume of every non-dominated candidate so far
                                             (the Pareto staircase; never falls; reference point in
                                             the config: frontier_ref_xentropy, frontier_ref_target)
  epo/frontier_points                        number of points on the displayed frontier so far
                                             (the lambda-sweep winners, paper §2)
  epo/restart_lambda                         lambda_r, only at iterations with a restart
  perf/seconds_per_iteration, perf/candidates_per_second
At the end, the run summary's `frontier` is the Pareto frontier as a table: text, target, post
(the post-activation value, for a pre-activation target only), xentropy, perplexity, and the
iteration whose pool first held the prompt.

An experiment's summary run (analysis/wandb_summary.py) gets `log_summary`: its tables as
wandb.Table under tables/, its figures as wandb.Image under figures/ (HTML pages as wandb.Html
under html/), and its numbers in the run summary.

`wandb` is imported only when a W&B tracker starts. Every W&B call is guarded: if W&B fails
(unreachable, quota, a bug), a warning is logged, W&B is dropped for the rest of the run, and the
local run carries on.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core.frontier import frontier_indices, frontier_quality, staircase_indices
from ..core.history import History
from ..core.ragged import lengths, pad
from ..errors import UserError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
CE_THRESHOLDS = (4.0, 5.0, 6.0)
FRONTIER_REF = (6.0, 0.0)  # (CE, target): CE < 6 is in-distribution (paper §3, Fig 5a)


class Tracker(Protocol):
    run_id: str | None

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_frontier(self, records: list[dict], history: History) -> None: ...
    def log_file(self, path: Path, kind: str) -> None: ...
    def log_summary(self, tables: dict, figures: list[Path], summary: dict) -> bool | None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Tracks nothing, so no loop branches on whether W&B is on."""
    run_id = None
    mode = "disabled"

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_frontier(self, records: list[dict], history: History) -> None:
        pass

    def log_file(self, path: Path, kind: str) -> None:
        pass

    def log_summary(self, tables: dict, figures: list[Path], summary: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def _guarded(method):
    """Run a W&B call; on any failure, log it once and stop talking to W&B."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - W&B must never take the local run down
            log.warning("W&B %s failed (%s: %s); continuing without W&B, the run directory is "
                        "complete", method.__name__, type(e).__name__, e)
            self.run = None
    return wrapper


class WandbTracker:
    """A wandb run whose files live in `run_dir/wandb` (offline runs: `wandb sync` them later)."""

    def __init__(self, run):
        self.run = run
        self.run_id = run.id
        self.mode = "offline" if run.settings._offline else "online"

    @_guarded
    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    @_guarded
    def log_frontier(self, records: list[dict], history: History) -> None:
        """frontier.json's records (Frontier.records()) as a table, with the iteration each
        point was found in, read from the run's History."""
        import wandb
        cols = ["text", "target", "post", "xentropy", "perplexity"]
        cols = [c for c in cols if c != "post" or (records and "post" in records[0])]
        found = first_iterations(history, [r["ids"] for r in records])
        self.run.summary["frontier"] = wandb.Table(
            columns=cols + ["iteration"],
            data=[[r[c] for c in cols] + [int(t)] for r, t in zip(records, found)])

    @_guarded
    def log_summary(self, tables: dict, figures: list[Path], summary: dict) -> bool | None:
        """One experiment's results as step 0: each DataFrame in `tables` as tables/<name>, each
        image file in `figures` as figures/<stem> and each .html page as html/<stem> (dots in the
        stem as underscores); `summary` (JSON values) into the run summary. True when logged;
        None when W&B failed (warned)."""
        import wandb
        media = {f"tables/{name}": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))
                 for name, df in tables.items()}   # NaN -> null: W&B writes NaN as bare JSON
        for path in map(Path, figures):
            stem = path.stem.replace(".", "_")   # W&B flattens nested keys with dots
            if path.suffix == ".html":
                media[f"html/{stem}"] = wandb.Html(path.read_text())
            else:
                media[f"figures/{stem}"] = wandb.Image(str(path))
        self.run.log(media, step=0)
        self.run.summary.update(summary)
        return True

    @_guarded
    def log_file(self, path: Path, kind: str) -> None:
        import wandb
        art = wandb.Artifact(f"{kind}-{self.run_id}", type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    @_guarded
    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
        self.run = None


def logged_in() -> bool:
    """True when a W&B API key is configured (environment or netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
        return bool(read_netrc_auth(host=host))
    except Exception:  # noqa: BLE001 - an internal wandb API; fall back to reading netrc here
        import netrc
        try:
            return netrc.netrc().authenticators(host.split("://")[-1].split("/")[0]) is not None
        except (OSError, netrc.NetrcParseError):
            return False


def resolve_mode(mode: str) -> str:
    """auto -> WANDB_MODE if set, else online when logged in, else offline."""
    if mode not in MODES:
        raise UserError(f"wandb mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if logged_in() else "offline"


def start_tracker(mode: str, run_dir: Path, config: dict, *, project: str = "fluentdream",
                  group: str | None = None, name: str | None = None) -> Tracker:
    """A WandbTracker writing under run_dir, or a NullTracker when disabled or W&B fails to start.

    An online start that fails falls back to offline, then to no tracking."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return NullTracker()
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed (pip install wandb); not tracking")
        return NullTracker()
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            run = wandb.init(project=project, group=group, name=name or Path(run_dir).name,
                             dir=str(run_dir), config=config, mode=attempt, reinit="create_new",
                             settings=wandb.Settings(console="off", silent=True))
            return WandbTracker(run)
        except Exception as e:  # noqa: BLE001 - W&B must never take the local run down
            log.warning("W&B %s start failed (%s: %s)", attempt, type(e).__name__, e)
    return NullTracker()


def first_iterations(history: History, prompts) -> np.ndarray:
    """K prompts (token lists of any length) -> (K,) for each, the first iteration whose pool
    held it (its parents or children), by comparing it with every recorded candidate."""
    pool = history.ids                                        # (T, P, W), -1 after a prompt
    out = np.zeros(len(prompts), dtype=int)
    for k, row in enumerate(prompts):
        row = pad([list(row)], pool.shape[-1])[0].astype(pool.dtype)
        seen = (pool == row).all(-1).any(-1)                                     # (T,)
        assert seen.any(), "a frontier prompt that no iteration scored"
        out[k] = int(seen.argmax())
    return out


class IterationMetrics:
    """The per-iteration metrics above, from a History, incremental: each call merges only
    iteration t's pool into the running bests and frontier, so a 300-iteration run costs 300
    small merges, not 300 frontier rebuilds. Call with t = 0, 1, 2, ... in order."""

    def __init__(self, ref_xentropy: float = FRONTIER_REF[0], ref_target: float = FRONTIER_REF[1],
                 thresholds: tuple[float, ...] = CE_THRESHOLDS):
        self.ref = (float(ref_xentropy), float(ref_target))
        self.thresholds = thresholds
        self.next = 0
        self.best = -math.inf
        self.best_below = {c: -math.inf for c in thresholds}
        self.stair_f = np.zeros(0)    # (S,) the Pareto staircase so far: only a staircase point
        self.stair_ce = np.zeros(0)   # (S,) can be on a later staircase or hull (frontier.py)

    def __call__(self, hist, t: int) -> dict[str, float]:
        assert t == self.next, f"iteration {t} given, {self.next} expected"
        self.next += 1
        f, ce = hist.target[t], hist.xentropy[t]                       # (P,), (P,)
        ok = hist.valid[t]                                             # what the run reports
        f, ce = f[ok].astype(np.float64), ce[ok].astype(np.float64)
        out: dict[str, float] = {}
        for i, (fi, ci) in enumerate(zip(*hist.slot_scores(t))):
            out[f"epo/slot{i}/target"], out[f"epo/slot{i}/xentropy"] = float(fi), float(ci)
        out["epo/mean_length"] = float(lengths(hist.ids[t][hist.kept[t]]).mean())
        if len(f):
            self.best = max(self.best, float(f.max()))
        out["epo/best_target"] = self.best
        for c in self.thresholds:
            below = f[ce < c]
            if len(below):
                self.best_below[c] = max(self.best_below[c], float(below.max()))
            out[f"epo/best_target_ce_below_{c:g}"] = self.best_below[c]
        pts_f, pts_ce = np.append(self.stair_f, f), np.append(self.stair_ce, ce)
        keep = staircase_indices(pts_f, pts_ce)
        self.stair_f, self.stair_ce = pts_f[keep], pts_ce[keep]
        out["epo/frontier_quality"] = frontier_quality((self.stair_f, self.stair_ce), *self.ref)
        out["epo/frontier_points"] = float(len(frontier_indices(self.stair_f, self.stair_ce)[0]))
        if not np.isnan(hist.restart_lambda[t]):
            out["epo/restart_lambda"] = hist.restart_lambda[t]
        seconds = hist.seconds[t]
        out["perf/seconds_per_iteration"] = seconds
        out["perf/candidates_per_second"] = hist.n_scored[t] / seconds if seconds > 0 else math.nan
        return {k: v for k, v in out.items() if math.isfinite(v)}   # W&B charts skip the gaps
