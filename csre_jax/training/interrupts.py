"""Ctrl-C and SIGTERM (what SLURM and preemptible TPU VMs send) as a request to stop cleanly.

Inside `StopRequests()`, the first SIGINT or SIGTERM only records itself: the training loop
finishes its step, writes a checkpoint and exits with a short message. A second Ctrl-C
raises KeyboardInterrupt at once, for a user who will not wait.
"""

import signal
import threading
from types import FrameType


class StopRequests:
    """Context manager: while active, `.received` names the first stop signal (or is None)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Stopped(Exception):  # noqa: N818 (a stop on request is not an error)
    """Training stopped on a signal after writing a checkpoint; str() says how to resume."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value
