"""The `fluentdream` command (DESIGN §3): dream, frontier, sweep and mine.

  commands  the parser, `dream`, `frontier`, `sweep` and main()
  mine      the `mine` command
  errors    which failures are the user's (one line) and which are bugs (a traceback)

The top layer: may import every other part of fluentdream; nothing imports it.
"""
from .commands import main

__all__ = ["main"]
