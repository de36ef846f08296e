"""The file lock the store and the log writers share: ``flock`` with a bounded wait."""

from __future__ import annotations

import errno
import fcntl
import time

from ..errors import StoreLocked

__all__ = ["wait_for_flock"]


def wait_for_flock(fd: int, *, timeout: float, poll: float, held: str) -> None:
    """Take an exclusive ``flock`` on ``fd`` (across threads and processes; closing ``fd``
    releases it), retrying every ``poll`` seconds; :class:`StoreLocked` with the message
    ``held`` after ``timeout`` seconds. Other failures are raised as the ``OSError`` they are."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() > deadline:
                raise StoreLocked(held) from None
            time.sleep(poll)
