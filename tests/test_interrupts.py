"""The stop-request handler on its own: what Ctrl-C and SIGTERM do inside and after it.
(tests/test_training.py sends SIGTERM to a real train.py and resumes it.)"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from csre_jax.training.interrupts import Stopped, StopRequests

REPO = Path(__file__).resolve().parents[1]


# Sent in a child process: a signal the handler misses kills the child (or, for SIGINT,
# raises there), where in pytest's own process it would kill the test worker.
_SEND_TO_ITSELF = """
import os, signal, sys
from csre_jax.training.interrupts import StopRequests
signum = signal.Signals[sys.argv[1]]
before = signal.getsignal(signum)
with StopRequests() as stop:
    os.kill(os.getpid(), signum)
    first = stop.received
    os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
    print(first, stop.received, flush=True)
print("restored" if signal.getsignal(signum) is before else "not restored")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_is_recorded_not_raised(signum):
    result = subprocess.run(
        [sys.executable, "-c", _SEND_TO_ITSELF, signum.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    killed_by = signal.Signals(-result.returncode).name if result.returncode < 0 else None
    assert killed_by is None, f"{killed_by} was not handled: it killed the process"
    assert result.returncode == 0, result.stderr
    received, _, restored = result.stdout.strip().partition("\n")
    assert received == f"{signum.name} {signum.name}", f"{signum.name} was not handled"
    assert restored == "restored"


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    with StopRequests() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_the_exit_status_is_128_plus_the_signal(name, status):
    stopped = Stopped(name, "resume with: python train.py ...")
    assert stopped.exit_code == status and str(stopped) == "resume with: python train.py ..."
