"""SIGTERM and Ctrl-C as a request to stop at the next safe point, instead of a kill.

A training loop checks the request between steps (and saves a checkpoint); a sweep also passes
each signal on to the job it is running, which then does the same.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Remembers the first SIGTERM/SIGINT; forwards every one to `child` while it runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __call__(self, signum, _frame=None) -> None:
        self.signum = self.signum or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Handlers in place for the block (Python allows them in the main thread only; elsewhere
        the block runs with the default handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
