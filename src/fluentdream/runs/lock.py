"""One writer per run directory (DESIGN §7): an OS advisory lock on RUN_DIR/.lock, held from
before the first write until the run is saved or abandoned, and a reader's lock that keeps
writers out while a saved run is read.

    with RunLock.acquire(run_dir) as lock:      # fd.UserError (RunTaken) naming the holder
        ...                                     # write the run
    other_writer(run_dir)     # "pid 4242 on host x since 20:14 (fluentdream dream ...)" or None
    with reading([a, b]) as running:            # {dir: holder} of the runs being written; the
        ...                                     # others cannot start being written meanwhile

The lock is flock(2): the kernel drops it when its process dies, kill -9 included, so a dead
holder never blocks anyone and there is nothing stale to clean up. A writer holds it exclusively
(LOCK_EX) and records who it is in RUN_DIR/.owner.json (host, pid, start, command), which only
the refusal message reads. A reader holds it shared (LOCK_SH) while it reads a saved run; a
writer that finds only readers waits for them (they read one run for moments), one that finds
a writer is refused at once. The lock file is made inside the directory, which the writer
creates first if it is missing: an abandoned claim removes both again, and a writer checks that
the file it locked is still the one at that path (else another writer removed it: try again).

Within one process a table of held directories answers first: a second claim of a directory
this process writes is refused without opening the file again. That matters on NFS, where the
client emulates flock with POSIX locks, which do not exclude each other within one process and
all drop when any descriptor of the file closes. A forked child forgets its parent's locks (it
closes its copies), so it neither keeps them alive after the parent dies nor releases them.
docs/runs.md says where the lock holds and where it does not.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UserError
from ..files import atomic_write

log = logging.getLogger(__name__)

LOCK = ".lock"
OWNER = ".owner.json"
WAIT_NOTICE = 1.0        # seconds a writer waits for readers before it says so
POLL = 0.5               # seconds between looks at runs that other processes write


class RunTaken(UserError):
    """Another process (or another part of this one) is writing the run directory, or this
    process is reading it (`verb` "read")."""

    def __init__(self, run_dir: Path, owner: str, verb: str = "written"):
        super().__init__(f"{run_dir} is being {verb} by {owner}; wait for it or choose another "
                         "--run-dir")
        self.run_dir, self.owner = Path(run_dir), owner


@dataclass
class _Held:
    """A directory this process holds: as its writer (owner set) or as `readers` readers."""
    fd: int | None
    owner: dict | None = None
    readers: int = 0


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: close the copies of the parent's lock files, so the locks live and
    die with the parent alone."""
    global _guard
    _guard = threading.Lock()
    for entry in _held.values():
        if entry.fd is not None:
            with suppress(OSError):
                os.close(entry.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir)


def command_line() -> str:
    """This process's command line, as an owner record names it."""
    argv = list(sys.argv) or ["python"]
    return " ".join([Path(argv[0]).name or "python", *argv[1:]])


def describe(owner: dict | None) -> str:
    """'pid 4242 on host x since 20:14 (fluentdream dream ...)' from an owner record."""
    if not owner:
        return "another process"
    start = datetime.fromisoformat(owner["start"]).astimezone()
    since = start.strftime("%H:%M" if start.date() == datetime.now().date() else "%Y-%m-%d %H:%M")
    ours = owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()
    who = "this process" if ours else f"pid {owner.get('pid')} on host {owner.get('host')}"
    command = " ".join(str(owner.get("command", "")).split())
    command = command if len(command) <= 80 else command[:79] + "…"
    return f"{who} since {since}" + (f" ({command})" if command else "")


def _record(run_dir: Path) -> str:
    """The holder named by RUN_DIR/.owner.json (written just after the lock is taken)."""
    try:
        return describe(json.loads((Path(run_dir) / OWNER).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _no_locks(run_dir: Path, e: OSError) -> UserError:
    return UserError(f"cannot lock {run_dir / LOCK} ({e.strerror}): its filesystem does not "
                     "support file locks (NFS without a lock manager?); write runs to a local "
                     "disk or a mount with working flock (docs/runs.md)")


def _writer_holds(path: Path) -> bool:
    """Whether a writer holds the lock file at `path` (a shared lock is refused only then)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:          # no locks on this filesystem: then no writer holds any either
        return False
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock_exclusive(run_dir: Path) -> int:
    """Open RUN_DIR/.lock (making the directory if needed) and take it exclusively; raise
    RunTaken if a writer holds it. Readers only delay it."""
    path, waited, delay = run_dir / LOCK, 0.0, 0.01
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{run_dir} is a file, not a directory; choose another "
                            "--run-dir") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:   # an abandoned claim removed the directory just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if _writer_holds(path):
                raise RunTaken(run_dir, _record(run_dir)) from None
            if waited < WAIT_NOTICE <= waited + delay:
                log.warning("waiting for readers of %s to finish before writing it", run_dir)
            time.sleep(delay)
            waited, delay = waited + delay, min(2 * delay, POLL)
            continue
        except OSError as e:
            os.close(fd)
            raise _no_locks(run_dir, e) from None
        if _same_file(fd, path):
            return fd
        os.close(fd)                # the file was removed after we opened it: take the new one


class RunLock:
    """The right to write one run directory, from acquire() to release() (or the end of the
    process). A context manager."""

    def __init__(self, run_dir: Path, fd: int, owner: dict, created: bool):
        self.run_dir, self.owner, self._fd, self._created = run_dir, owner, fd, created
        self._key = _key(run_dir)

    @classmethod
    def acquire(cls, run_dir: Path, command: str | None = None) -> RunLock:
        """Take the directory (creating it), or raise RunTaken naming its writer. `command`:
        what the owner record says is running (default: this process's command line)."""
        run_dir = Path(run_dir)
        owner = dict(host=socket.gethostname(), pid=os.getpid(), command=command or command_line(),
                     start=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        key = _key(run_dir)
        with _guard:
            if (entry := _held.get(key)) is not None:
                if entry.owner is None:
                    raise RunTaken(run_dir, "this process", verb="read")
                raise RunTaken(run_dir, describe(entry.owner))
            _held[key] = _Held(None, owner)      # reserved while the file lock is taken
        try:
            created = not run_dir.exists()
            fd = _lock_exclusive(run_dir)
        except BaseException:
            with _guard:
                _held.pop(key, None)
            raise
        lock = cls(run_dir, fd, owner, created)
        with _guard:
            _held[key].fd = fd
        try:
            data = json.dumps(owner, indent=2).encode() + b"\n"
            atomic_write(run_dir / OWNER, lambda fh: fh.write(data))
        except BaseException:
            lock.release()
            raise
        return lock

    def holds(self, run_dir: Path) -> bool:
        return self._fd is not None and _key(run_dir) == self._key

    def release(self) -> None:
        """Give the directory up. A claim that wrote nothing else leaves nothing behind: the
        lock file goes, and the directory too if acquire made it."""
        if self._fd is None:
            return
        try:
            with suppress(OSError):
                (self.run_dir / OWNER).unlink(missing_ok=True)
                if set(os.listdir(self.run_dir)) <= {LOCK}:
                    (self.run_dir / LOCK).unlink()
                    if self._created:
                        self.run_dir.rmdir()
        finally:
            with _guard:
                _held.pop(self._key, None)
            with suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)   # also for a child that kept a copy
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(run_dir: Path, command: str | None = None) -> RunLock | str:
    """The directory's lock, or the line naming the process writing it (sweeps skip the job)."""
    try:
        return RunLock.acquire(run_dir, command)
    except RunTaken as e:
        return e.owner


def other_writer(run_dir: Path) -> str | None:
    """The line naming the process that writes `run_dir`, if one other than this process does;
    None when nobody does (or this process itself)."""
    with _guard:
        if _key(run_dir) in _held:
            return None
    return _record(run_dir) if _writer_holds(Path(run_dir) / LOCK) else None


def wait_free(run_dirs: list[Path], poll: float = POLL) -> list[Path]:
    """Block until no other process writes at least one of `run_dirs`; return those."""
    while True:
        free = [d for d in run_dirs if other_writer(d) is None]
        if free:
            return free
        time.sleep(poll)


def _open_for_reading(run_dir: Path) -> int | None:
    """RUN_DIR/.lock opened to read, made if a saved run lacks one (made before locks existed);
    None where there is nothing to lock or it cannot be made (a read-only copy)."""
    path = run_dir / LOCK
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        pass
    if not (run_dir / "summary.json").exists():
        return None
    try:
        return os.open(path, flags | os.O_CREAT, 0o666)
    except OSError:
        return None


def _share(run_dir: Path, held: list[str]) -> str | None:
    """Hold `run_dir` as a reader (appending its key to `held`), or return its writer."""
    key = _key(run_dir)
    with _guard:
        if (entry := _held.get(key)) is not None:
            if entry.owner is not None:   # this process writes it: its own reads are its affair
                return None
            entry.readers += 1
            held.append(key)
            return None
        fd = _open_for_reading(run_dir)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return _record(run_dir)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return None       # no locks here: no writer can hold one either
            raise
        _held[key] = _Held(fd, readers=1)
        held.append(key)
        return None


def _unshare(key: str) -> None:
    with _guard:
        entry = _held[key]
        entry.readers -= 1
        if entry.readers == 0:
            del _held[key]
            os.close(entry.fd)


@contextmanager
def reading(run_dirs: Iterable[Path]) -> Iterator[dict[Path, str]]:
    """Hold each run directory against writers while the block reads it; yields {dir: the
    line naming its writer} for those another process is writing now, which the block must not
    read."""
    running, held = {}, []
    try:
        for d in map(Path, run_dirs):
            if (owner := _share(d, held)) is not None:
                running[d] = owner
        yield running
    finally:
        for key in held:
            _unshare(key)
