"""What a report reads: run directories found under the paths given, each read whole or left
out with one line naming it, and grouped into one page per target (DESIGN §7).

    dirs = find_runs([Path("results/embedded")])     # run directories, searched recursively
    groups, left_out = collect(dirs)                  # one Group (page) per target; [(dir, why)]

A run directory holds config.json naming its target and a history.npz or summary.json. One that
another process is writing, an unfinished one, a damaged one and one from a schema this version
does not read are left out with their reason, never read half-way: the runs are held against
writers (runs.lock.reading) while they are read. A path given that does not exist, or that holds
no run at all, is the user's error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.history import History
from ..errors import UserError
from ..core.frontier import frontier_indices
from ..runs import CHECKPOINT, is_complete, load_checkpoint, read_json
from ..runs.lock import OWNER, reading
from ..runs.tracking import FRONTIER_REF, IterationMetrics

# What one frontier compares: runs that differ in any of these get pages of their own
# (runs.merged_frontier refuses to merge them).
GROUP_KEYS = ("model", "fluency_model", "target", "seq_len", "prefix", "suffix")
MAX_PROGRESS_POINTS = 400   # per run; longer runs are thinned (the last iteration always kept)


@dataclass
class Run:
    """A finished run as a page needs it. The History itself is not kept (a page shows its
    candidates' values and its progress), so many long runs fit in memory."""
    dir: Path
    config: dict
    provenance: dict
    summary: dict
    frontier: list[dict]
    values: np.ndarray             # (N,) float32 target of every reported candidate
    xentropy: np.ndarray           # (N,) float32 their CE
    progress: dict[str, list]      # iteration, seconds (cumulative), best, quality

    label: str = ""                # the run's name on its page (unique there)


@dataclass
class Group:
    """The runs of one page: one target on one model in one context."""
    runs: list[Run]
    merged: list[dict] = field(default_factory=list)   # merged frontier records, each with "run"

    @property
    def config(self) -> dict:
        return self.runs[0].config


def is_run_dir(d: Path) -> bool:
    """config.json beside a run's own files. Experiment folders hold a config.json too (and
    06's names a target), but never a history, a summary or a writer's record."""
    return (d / "config.json").is_file() and any(
        (d / name).exists() for name in (CHECKPOINT, "summary.json", OWNER))


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths` and under them (a run's own subfolders, such as wandb/,
    are not searched), in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist; give run directories or folders holding them")
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; give run directories or folders "
                            "holding them")
        here = _walk(path)
        if not here:
            raise UserError(f"{path} holds no fluentdream run (a folder with config.json and "
                            "history.npz or summary.json)")
        found += here
    return sorted(dict.fromkeys(found))


def _walk(path: Path) -> list[Path]:
    if is_run_dir(path):
        return [path]
    out = []
    for root, dirs, _ in os.walk(path):
        dirs.sort()
        for name in list(dirs):
            if is_run_dir(Path(root, name)):
                out.append(Path(root, name))
                dirs.remove(name)          # a run's own folders hold no runs
    return out


def collect(dirs: list[Path]) -> tuple[list["Group"], list[tuple[Path, str]]]:
    """The pages' runs, grouped by target with their merged frontiers, and the runs left out
    with the reason why. Every run is held against writers while it is read, so nothing is
    read half-way."""
    runs, left_out = [], []
    with reading(dirs) as running:
        for d in dirs:
            if d in running:
                left_out.append((d, f"being written by {running[d]}; report it once it is saved"))
            elif not is_complete(d):
                left_out.append((d, "unfinished (no summary.json); finish it with `fluentdream "
                                    "dream ... --resume`"))
            else:
                try:
                    runs.append(_read(d))
                except UserError as e:
                    left_out.append((d, str(e)))
        return by_target(runs), left_out


def _read(d: Path) -> Run:
    config, summary = read_json(d / "config.json"), read_json(d / "summary.json")
    frontier = read_json(d / "frontier.json")
    missing = [k for k in ("model", "target", "seq_len") if k not in config]
    if missing or not isinstance(frontier, list) or any(
            not {"target", "xentropy", "text", "ids"} <= set(r) for r in frontier):
        what = f"config.json lacks {', '.join(missing)}" if missing else \
            "frontier.json's points lack target, xentropy, text or ids"
        raise UserError(f"not a run this version reads ({what}): made by another version?")
    prov = read_json(d / "provenance.json") if (d / "provenance.json").exists() else {}
    hist = load_checkpoint(d / CHECKPOINT)
    _, f, ce = hist.candidates()
    ref = (config.get("frontier_ref_xentropy", FRONTIER_REF[0]),
           config.get("frontier_ref_target", FRONTIER_REF[1]))
    return Run(d, config, prov, summary, frontier, f.astype(np.float32), ce.astype(np.float32),
               progress(hist, ref))


def progress(hist: History, ref: tuple[float, float]) -> dict[str, list]:
    """Best activation and frontier quality after each iteration (runs.tracking's W&B metrics),
    against the iteration and the seconds since the start; at most MAX_PROGRESS_POINTS."""
    metrics = IterationMetrics(*ref)
    rows = [metrics(hist, t) for t in range(len(hist))]
    seconds = np.cumsum(hist.seconds)
    keep = np.unique(np.r_[np.linspace(0, len(hist) - 1, min(len(hist), MAX_PROGRESS_POINTS))
                           .round().astype(int), len(hist) - 1]) if len(hist) else []
    return dict(iteration=[int(t) + 1 for t in keep], seconds=[float(seconds[t]) for t in keep],
                best=[rows[t].get("epo/best_target") for t in keep],
                quality=[rows[t].get("epo/frontier_quality") for t in keep])


def by_target(runs: list[Run]) -> list[Group]:
    """Runs grouped by GROUP_KEYS, each labelled and with its group's merged frontier: the
    frontier of all its runs' frontier points (runs.merged_frontier's rule: a point beaten at
    every penalty within its run stays beaten)."""
    groups: dict[tuple, Group] = {}
    for run in sorted(runs, key=lambda r: r.dir):
        key = tuple(str(run.config.get(k) or "") for k in GROUP_KEYS)
        groups.setdefault(key, Group([])).runs.append(run)
    out = sorted(groups.values(), key=lambda g: (g.config["model"], g.config["target"]))
    for g in out:
        _label(g.runs)
        points = [dict(p, run=r.label) for r in g.runs for p in r.frontier]
        idx, lams = frontier_indices(np.array([p["target"] for p in points], dtype=np.float64),
                                     np.array([p["xentropy"] for p in points], dtype=np.float64))
        g.merged = [dict(points[i], lam=float(lam)) for i, lam in zip(idx, lams)]
    return out


def _label(runs: list[Run]) -> None:
    """Each run's folder name, with as many parent folders as it takes to tell runs of one
    page apart (04_seed_variance/embedded__L1.N5__seed0 beside 05_dream_vs_dataset/...)."""
    depth = 1
    while True:
        labels = ["/".join(r.dir.parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels) or depth >= max(len(r.dir.parts) for r in runs):
            break
        depth += 1
    for r, label in zip(runs, labels):
        r.label = label
