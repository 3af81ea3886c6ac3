"""How the `fluentdream` command sorts what went wrong (commands.main): the user's input or machine
(fd.UserError, a full disk, a path without permission) gets one line, anything else is a bug.

    user_fault(UserError("layer 99 is out of range"))     # "layer 99 is out of range"
    user_fault(KeyError("x"))                             # None: a bug, show the traceback
"""
from __future__ import annotations

import errno

from ..errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NO_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error(e: BaseException, codes: tuple[int, ...]) -> OSError | None:
    """The first OSError with one of `codes` in e's chain (a failed write and the failed clean-up
    after it arrive chained)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in codes:
            return e
        e = e.__cause__ or e.__context__
    return None


def user_fault(e: Exception) -> str | None:
    """One line for an error about the user's input or machine (bad input, a full disk, a path
    without permission); None for anything else, which is a bug."""
    if isinstance(e, UserError):
        return " ".join(str(e).split())
    if (full := os_error(e, DISK_FULL)) is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return f"the disk is full{where}; free space and run the command again"
    if (denied := os_error(e, NO_ACCESS)) is not None:
        return (f"{denied.filename or 'a file'}: {denied.strerror}; choose a path you can write "
                "to, or fix its permissions")
    return None
