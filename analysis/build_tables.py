"""Saved runs -> tidy tables: every analysis module's `tables(preset_dir)` written as CSV.

    python -m analysis.build_tables --preset embedded      # results/embedded/tables/*.csv

Figures read only these CSVs (paper_figures/), so they never need a model or a live service.
Then results/<preset>/numbers.json: every number the README quotes, with interval, test and runs
(analysis/numbers.py has the schema); `python -m analysis.readme_table` turns it into the table.
A module whose experiments have not run yet contributes nothing rather than failing.

Only saved runs are read, and none of them can start being rewritten while the tables are built
(fluentdream.runs.lock.reading holds them against writers); a run another process is writing is
listed as running (a warning) and left out until it is saved.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

from fluentdream.files import atomic_write
from fluentdream.runs.lock import LOCK, reading
from fluentdream.runs import CHECKPOINT

from . import numbers

log = logging.getLogger(__name__)
MODULES = ("fluency", "frontiers", "seeds", "dataset", "residual", "sae_latents", "operators",
           "units")


def _write_csv(path: Path, df) -> None:
    atomic_write(path, lambda fh: fh.write(df.to_csv(index=False).encode()))


def run_dirs(preset_dir: Path) -> list[Path]:
    """Every run directory of the preset, saved or being written (a lock file or a checkpoint)."""
    return sorted({p.parent for name in (LOCK, CHECKPOINT) for p in preset_dir.glob(f"**/{name}")})


def build(preset_dir: Path) -> dict[str, Path]:
    """Every table as CSV, then numbers.json (and tables/numbers.csv) computed from them, with
    the preset's runs held against writers throughout."""
    with reading(run_dirs(preset_dir)) as running:
        for d, owner in running.items():
            log.warning("running: %s (being written by %s); left out until it is saved", d, owner)
        return _build(preset_dir)


def _build(preset_dir: Path) -> dict[str, Path]:
    out_dir = preset_dir / "tables"
    written, frames = {}, {}
    for name in MODULES:
        module = importlib.import_module(f"analysis.{name}")
        for table, df in module.tables(preset_dir).items():
            _write_csv(out_dir / f"{table}.csv", df)
            written[table], frames[table] = out_dir / f"{table}.csv", df
    found = numbers.build(frames)
    if found:
        doc = json.dumps(numbers.document(found, preset_dir.name), indent=2, allow_nan=False) + "\n"
        atomic_write(preset_dir / "numbers.json", lambda fh: fh.write(doc.encode()))
        _write_csv(out_dir / "numbers.csv", numbers.flat(found))
        written["numbers"] = out_dir / "numbers.csv"
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="results root")
    p.add_argument("--preset", default="embedded", help="embedded | paper | smoke")
    args = p.parse_args(argv)
    written = build(Path(args.results) / args.preset)
    print(f"{len(written)} tables in {Path(args.results) / args.preset / 'tables'}: "
          + ", ".join(sorted(written)))


if __name__ == "__main__":
    main()
