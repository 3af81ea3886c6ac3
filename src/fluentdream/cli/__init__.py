"""The `fluentdream` command (DESIGN §3): dream, frontier, sweep, mine and report.

  commands  the parser, `dream`, `frontier`, `sweep` and main()
  settings  the EPO settings flags of dream and sweep, on top of a preset
  mine      the `mine` command
  report    the `report` command
  errors    which failures are the user's (one line) and which are bugs (a traceback)

The top layer. Imports: runs, report, data, core, targets, models and the shared modules; nothing
imports cli.
"""
from .commands import build_parser, main
from .settings import config_from_args, operators_arg

__all__ = ["build_parser", "config_from_args", "main", "operators_arg"]
