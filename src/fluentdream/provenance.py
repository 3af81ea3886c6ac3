"""What made a result: this package's version, the git commit of its source, the versions of the
packages it ran on, the machine and the time. Run directories (provenance.json), mining summaries
and benchmark reports record it, so every number can be traced to the code that made it.

    provenance(cfg, device="cpu", start_time=now())   # {"git_sha": ..., "packages": {...}, ...}
    git_info()                                        # {"git_sha": "2b0f352...", "git_dirty": False}

Shared by every part of the package; imports nothing of fluentdream.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

__version__ = "0.1.0"
PACKAGES = ("numpy", "torch", "transformers", "tokenizers", "datasets", "wandb", "ray")


def now() -> str:
    """The time in UTC, to the second, as provenance records it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# What `make figures` itself writes into tracked files (the results tables it splices): a change
# there is an output, not a change of the code, so it does not make the tree dirty.
PIPELINE_OUTPUTS = ("README.md", "RESULTS.md")


def git_info(root: Path | None = None) -> dict:
    """The commit this source tree (or `root`) is at and whether it has uncommitted changes
    (None outside git), leaving out PIPELINE_OUTPUTS."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ".",
                                     *(f":(exclude){f}" for f in PIPELINE_OUTPUTS)], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha or None, "git_dirty": dirty if sha else None}


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(cfg, device: str, **extra) -> dict:
    """What made a run: this code (version, git commit and dirty flag), Python, the versions of
    PACKAGES, the platform, the device and cfg.seed, plus `extra` (times, W&B ids, ...)."""
    return dict(git_info(), fluentdream=__version__, python=sys.version.split()[0],
                packages={p: package_version(p) for p in PACKAGES}, platform=platform.platform(),
                device=device, seed=cfg.seed, **extra)
