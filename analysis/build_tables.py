"""Saved runs -> tidy tables: every analysis module's `tables(preset_dir)` written as CSV.

    python -m analysis.build_tables --preset embedded      # results/embedded/tables/*.csv

Figures read only these CSVs (paper_figures/), so they never need a model or a live service.
A module whose experiments have not run yet contributes nothing rather than failing.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from fluentdream.history import atomic_write

MODULES = ("fluency", "frontiers", "seeds", "dataset", "residual")


def build(preset_dir: Path) -> dict[str, Path]:
    out_dir = preset_dir / "tables"
    written = {}
    for name in MODULES:
        module = importlib.import_module(f"analysis.{name}")
        for table, df in module.tables(preset_dir).items():
            path = out_dir / f"{table}.csv"
            atomic_write(path, lambda fh, df=df: fh.write(df.to_csv(index=False).encode()))
            written[table] = path
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
