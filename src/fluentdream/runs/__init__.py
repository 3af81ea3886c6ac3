"""Runs: a dream with a directory, a lock, a tracker and resume; sweeps of many (DESIGN §7).

    result = run_dream(lm, target, cfg, Path("results/x"), resume=True)
    hist, frontier_records, summary = load_run("results/x")

  store        what a run directory holds: config, provenance, summary; save, load, merge
  session      run directories around one batched EPO loop (open, checkpoint, finish)
  dream        run_dream and dream_many: one run, or many in lockstep shared between processes;
               shard_seeds splits an experiment's seeds between processes
  files        a run directory's files: JSON, the checkpoint, config comparison
  lock         one writer per run directory
  tracking     W&B (or nothing) mirroring every iteration
  jobs         one sweep's jobs in one process
  distributed  sweeps in-process or on Ray

Imports: data, core, targets, models and the shared modules; never cli. The names below are what
experiments and analysis use.
"""
from ..files import write_json
from ..provenance import PACKAGES, git_info, provenance
from .dream import dream_many, run_dream, shard_seeds
from .files import (CHECKPOINT, config_diff, is_complete, load_checkpoint, read_json,
                    same_complete_run, save_history)
from .session import MakeTracker, RunResult, RunSpec, run_many
from .store import (load_run, merged_frontier, open_run, run_config, run_dir_for, save_run, slug,
                    summary, with_post)
from .tracking import CE_THRESHOLDS, FRONTIER_REF, Tracker

__all__ = ["CHECKPOINT", "config_diff", "is_complete", "load_checkpoint", "read_json",
           "same_complete_run", "save_history", "write_json", "MakeTracker", "RunResult",
           "RunSpec", "run_many", "PACKAGES", "dream_many", "git_info", "load_run",
           "merged_frontier", "open_run", "provenance", "run_config", "run_dir_for", "run_dream",
           "shard_seeds", "save_run", "slug", "summary", "with_post", "CE_THRESHOLDS",
           "FRONTIER_REF", "Tracker"]
