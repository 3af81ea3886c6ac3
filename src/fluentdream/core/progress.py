"""Progress bars for long work: on by default in a terminal or a notebook, off elsewhere.

    hist = fd.epo(lm, target, cfg)                  # a bar when stderr is a terminal or in Jupyter
    hist = fd.epo(lm, target, cfg, progress=False)  # silent

The bar goes to stderr through tqdm, never to stdout, so piped output and logs stay clean.
"""
from __future__ import annotations

import sys


def interactive() -> bool:
    """True when a person is likely watching: stderr is a terminal, or a notebook kernel runs."""
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


class ProgressBar:
    """A tqdm bar on stderr: iteration, best target, iterations per second."""

    def __init__(self, total: int, initial: int = 0, desc: str = "dream"):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)

    def __call__(self, report) -> None:
        self.bar.set_postfix(best=f"{report.best_target:.3f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class CountBar:
    """A tqdm bar for a `progress(done, total)` callback, e.g. mining.mine's re-scoring of kept
    windows, whose total is known only once the scan ends; the bar appears at the first call."""

    def __init__(self, desc: str, unit: str = "window"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "CountBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
