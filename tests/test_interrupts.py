import os
import signal
import time

import pytest

from sweep import interrupts


@pytest.fixture
def installed(monkeypatch):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(interrupts, "_requested", None)
    interrupts.install()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class SignalledInFinalizer:
    """Receives a signal while Python runs its `__del__` (which drops errors)."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        time.sleep(0.2)  # the handler runs here; its KeyboardInterrupt is dropped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_dropped_in_a_finalizer_is_raised_at_the_next_check(
    installed, signum
):
    interrupts.check()  # nothing asked yet
    SignalledInFinalizer(signum)  # collected at once: KeyboardInterrupt dropped
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        interrupts.check()


def test_a_signal_raises_keyboard_interrupt_where_it_lands(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
