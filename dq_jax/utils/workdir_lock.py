"""An exclusive lock on a directory for the life of a job (a run or a sweep).

`fcntl.flock` is released by the OS when the holder dies, even by SIGKILL, so a crashed job
never leaves a stale lock behind; the lock file names its holder for the next one to see.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator


class Busy(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextlib.contextmanager
def hold(path: str, busy_message: str) -> Iterator[None]:
    """Holds the lock file `path` while the block runs.

    Raises `Busy(busy_message.format(owner=...))` at once when another process holds it;
    `owner` is what that process wrote (its pid, host and start time)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as f:  # closed on every way out, the Busy raise included
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown process"
            raise Busy(busy_message.format(owner=owner)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
