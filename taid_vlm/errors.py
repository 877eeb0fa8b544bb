"""The project's one notion of "the user's mistake", and how any failure becomes one line.

Every layer raises its own subclass of ``UserError`` (``DataError``, ``ConfigError``,
``EvalError``, ``RunError``) with a message that says what is wrong, where, and how to fix it.
The CLI prints such errors as a single ``taid-vlm <command>: error: ...`` line and exits 2.
A few operating-system failures are the user's to fix too (a full disk, a read-only folder, a
missing file): ``user_message`` words them the same way. Anything else is a bug of ours and
keeps its traceback behind ``--debug``.

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """A mistake in the input (flags, config, data, paths, models); the message names the fix."""


class RunError(UserError):
    """A run that cannot start or go on as asked (occupied output, resume mismatch, disk full)."""


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free space there or point --output at a larger disk",
    errno.EDQUOT: "disk quota exceeded; free space or point --output elsewhere",
    errno.EROFS: "the file system is read-only; choose a writable --output",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOTDIR: "a path component is a file, not a folder; check the path",
    errno.EISDIR: "expected a file but found a folder; check the path",
}


def user_message(error: BaseException) -> str | None:
    """The one-line message for a failure the user can fix, or None for an internal error."""
    if isinstance(error, UserError):
        return " ".join(str(error).split())
    if isinstance(error, OSError) and error.errno in _OS_HINTS:
        where = f" ({error.filename})" if error.filename else ""
        return f"{_OS_HINTS[error.errno]}{where}"
    return None


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class Stopped(Exception):
    """A run that stopped on request (SIGTERM, SIGUSR1) after saving where it was.

    The CLI prints the message (when there is one: only the main process has one) as one line and
    exits with ``exit_code``, 143 as for a process ended by SIGTERM.
    """

    exit_code = 143
