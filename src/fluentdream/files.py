"""Writing files safely, for every part of the package: a reader never sees half a file, results
get the permissions the umask gives, and an OSError names the file it stopped.

    atomic_write(path, lambda fh: fh.write(data))     # temporary file beside path, then rename
    write_json(run_dir / "summary.json", summary)      # the same, for JSON (numpy values too)
    writable_dir(Path("results/x"))                    # created, or fd.UserError saying why not

Shared by models (the GGUF cache), core (History.save), data (mining, calibration) and runs;
imports nothing of fluentdream but errors.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import UserError


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only swap)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration):
        old = os.umask(0o022)
        os.umask(old)
        return old


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(binary file handle) on a temporary file beside `path`, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are shared, so give it what open() would (0666 & ~umask)
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def naming(path: Path):
    """Give an OSError raised while writing `path` the file name (a failed write() has none), so
    a full disk is reported with the file it stopped."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def write_json(path: Path, obj) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()
    with naming(path):
        atomic_write(path, lambda fh: fh.write(data))


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def writable_dir(path: Path) -> Path:
    """Create `path` (and parents) or raise a UserError saying why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fluentdream-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {str(path)!r} is not writable ({e.strerror}); "
                        "choose a directory you can write to") from None
    return path
