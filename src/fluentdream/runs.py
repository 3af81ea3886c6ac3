"""Run directories: one per dream, the source of truth for every reported number (DESIGN §7).

    run_dir = run_dir_for(Path("results"), "embedded", "L1.N5", seed=0)
    save_run(run_dir, hist, front, cfg)   # config.json provenance.json history.npz frontier.json summary.json
    load_run(run_dir) -> (History, dict frontier, dict summary)

Every file is written atomically (temporary file + rename), so a reader never sees half a file.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .config import EPOConfig
from .frontier import Frontier
from .history import History, atomic_write

CE_THRESHOLDS = (4.0, 5.0, 6.0)   # best target under these CE limits goes in the summary


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def run_dir_for(parent: Path, model: str, target: str, seed: int) -> Path:
    return Path(parent) / f"{slug(Path(model).name)}__{slug(target)}__seed{seed}"


def write_json(path: Path, obj) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(data))


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def git_info() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha or None, "git_dirty": dirty if sha else None}


def provenance(cfg: EPOConfig, device: str, **extra) -> dict:
    import torch
    import transformers

    from . import __version__
    return dict(git_info(), fluentdream=__version__, python=sys.version.split()[0],
                torch=torch.__version__, transformers=transformers.__version__,
                platform=platform.platform(), device=device, seed=cfg.seed, **extra)


def summary(hist: History, front: Frontier) -> dict:
    out = dict(iterations=len(hist), best_target=hist.best_target(),
               frontier_points=len(front), seconds_total=float(np.sum(hist.seconds)),
               seconds_per_iteration=float(np.mean(hist.seconds)) if len(hist) else None,
               candidates_scored=int(np.sum(hist.n_scored)),
               interrupted=bool(hist.meta.get("interrupted", False)))
    for limit in CE_THRESHOLDS:
        i = front.best_under(limit)
        out[f"best_target_ce_below_{limit:g}"] = None if i is None else float(front.target[i])
    return out


def save_run(run_dir: Path, hist: History, front: Frontier, cfg: EPOConfig,
             prov: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", dict(cfg.to_dict(), target=hist.meta.get("target"),
                                             model=hist.meta.get("model")))
    prov = prov or provenance(cfg, device=str(hist.meta.get("device", "")), end_time=time.time())
    write_json(run_dir / "provenance.json", prov)
    hist.save(run_dir / "history.npz")
    write_json(run_dir / "frontier.json", front.records())
    write_json(run_dir / "summary.json", summary(hist, front))
    return run_dir


def load_run(run_dir: Path) -> tuple[History, list[dict], dict]:
    run_dir = Path(run_dir)
    hist = History.load(run_dir / "history.npz")
    front = json.loads((run_dir / "frontier.json").read_text())
    summ = json.loads((run_dir / "summary.json").read_text())
    return hist, front, summ


def progress_callback(total: int):
    """A tqdm bar (iteration, best target, iterations per second) as an EPO callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="dream", unit="it", dynamic_ncols=True)

    def callback(report) -> None:
        bar.update(1)
        bar.set_postfix(best=f"{report.best_target:.3f}", refresh=False)
        if report.iteration + 1 >= total:
            bar.close()
    return callback
