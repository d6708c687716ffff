"""The stop-request handler on its own: what Ctrl-C and SIGTERM do inside and after it.
(tests/test_training.py sends SIGTERM to a real train.py and resumes it.)"""

import os
import signal

import pytest

from csre_jax.training.interrupts import Stopped, StopRequests


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_is_recorded_not_raised(signum):
    before = signal.getsignal(signum)
    with StopRequests() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signum)
        assert stop.received == signum.name
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
        assert stop.received == signum.name
    assert signal.getsignal(signum) is before


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
