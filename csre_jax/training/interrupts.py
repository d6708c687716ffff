"""Ctrl-C and SIGTERM (what SLURM and preemptible TPU VMs send) as a request to stop cleanly.

Inside `StopRequests()`, a signal is acted on by a watcher thread, woken by the signal
itself, so it is heard while the main thread is inside a long call (loading, building,
XLA compilation):
- before training has begun there is nothing to save: the process ends at once with one
  line (after `before_training_exit`, e.g. removing a run folder it created);
- once training has begun (`begin_training`), the first signal only records itself: the
  training loop finishes its step, writes a checkpoint and exits with a short message;
- a second signal ends the process at once with one line that says how to resume from the
  last checkpoint, for a user who will not wait.
"""

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType


class StopRequests:
    """Context manager: while active, `.received` names the first stop signal that arrived
    after `begin_training` (or is None)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, resume_command: str = "", before_training_exit: Callable[[], None] | None = None
    ):
        self.received: str | None = None
        self._resume_command = resume_command
        self._before_training_exit = before_training_exit
        self._training = False
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    def begin_training(self) -> None:
        """From now on the first signal asks for a checkpoint instead of ending the process."""
        self._training = True

    @staticmethod
    def _handle(signum: int, frame: FrameType | None) -> None:
        """The Python-level handler only replaces the default action (KeyboardInterrupt,
        termination); the watcher thread, woken through the wakeup fd, decides."""

    def _watch(self, reader: socket.socket) -> None:
        try:
            while signums := reader.recv(64):
                for signum in signums:
                    self._act(signal.Signals(signum).name)
        except OSError:  # the socket closed on leaving the block
            return

    def _act(self, name: str) -> None:
        if self._training and self.received is None:
            self.received = name
            return
        if self._training:
            again = "again" if name == self.received else f"after {self.received}"
            message = (
                f"{name} {again}: stopped at once, without a new checkpoint; resume from the "
                f"last one with the same command: {self._resume_command}"
            )
        else:
            message = f"{name}: stopped before training began; nothing to save"
            if self._before_training_exit is not None:
                self._before_training_exit()
        sys.stdout.flush()
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
        os._exit(128 + signal.Signals[name].value)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():  # handlers live there
            return self
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        threading.Thread(target=self._watch, args=(reader,), daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._sockets is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            reader, writer = self._sockets
            reader.shutdown(socket.SHUT_RDWR)  # ends the watcher's recv
            writer.close()
            reader.close()


class Stopped(Exception):  # noqa: N818 (a stop on request is not an error)
    """Training stopped on a signal after writing a checkpoint; str() says how to resume."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value
