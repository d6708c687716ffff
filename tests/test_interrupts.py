"""The stop-request handler on its own: what Ctrl-C and SIGTERM do before training, during
it, and after the block. Each case runs in a child process, where a signal that is not
handled, or an exit at once, cannot take the test worker with it. (tests/test_training.py
sends SIGTERM to a real train.py and resumes it; tests/test_user_errors.py stops one while
it compiles.)"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csre_jax.training.interrupts import Stopped

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import os, signal, sys, time
from csre_jax.training.interrupts import StopRequests
case, signum = sys.argv[1], signal.Signals[sys.argv[2]]
before = signal.getsignal(signum)
removed = lambda: print("before_training_exit ran", flush=True)
with StopRequests("python train.py --workdir=runs/x", before_training_exit=removed) as stop:
    if case != "preparing":
        stop.begin_training()
    os.kill(os.getpid(), signum)
    time.sleep(0.5)  # the main thread waits in a call: the watcher thread acts meanwhile
    if case == "twice":
        os.kill(os.getpid(), signal.SIGINT)
    if case != "once":
        time.sleep(10)
    print(stop.received, flush=True)
print("restored" if signal.getsignal(signum) is before else "not restored")
"""


def _child(case: str, signum: signal.Signals) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, case, signum.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.perf_counter() - start


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_in_training_the_first_signal_is_recorded_not_acted_on(signum):
    result, _ = _child("once", signum)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [signum.name, "restored"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_before_training_a_signal_ends_the_process_at_once_with_one_line(signum):
    result, seconds = _child("preparing", signum)
    assert result.returncode == 128 + signum.value, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{signum.name}: stopped before training began; nothing to save"
    ]
    assert result.stdout == "before_training_exit ran\n"
    assert seconds < 8  # not after the 10 s the main thread sleeps


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_in_training_ends_at_once_with_the_resume_command(signum):
    result, seconds = _child("twice", signum)
    assert result.returncode == 130, result.stderr
    again = "again" if signum == signal.SIGINT else "after SIGTERM"
    assert result.stderr.strip().splitlines() == [
        f"SIGINT {again}: stopped at once, without a new checkpoint; resume from the last "
        "one with the same command: python train.py --workdir=runs/x"
    ]
    assert result.stdout == ""  # neither the first-signal path nor the removal ran
    assert seconds < 8


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_the_exit_status_is_128_plus_the_signal(name, status):
    stopped = Stopped(name, "resume with: python train.py ...")
    assert stopped.exit_code == status and str(stopped) == "resume with: python train.py ..."
