"""`python -m fluentdream.cli ...` runs the `fluentdream` command."""
import sys

from .commands import main

sys.exit(main())
