import os
import signal
import sys
import time

import pytest
from optuna.trial import TrialState

from sweep import config, interrupts, keys, study
from sweep import stores as stores_module
from sweep.tracking import Tracker
from tests.helpers import STUDY, baseline


@pytest.fixture
def reported(monkeypatch):
    """What reaches the unraisable-exception hook in place before `install`."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type))
    return seen


@pytest.fixture
def installed(monkeypatch, reported):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(interrupts, "_requested", None)
    monkeypatch.setattr(interrupts, "_unraisablehook", interrupts._unraisablehook)
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


class RaisesInFinalizer:
    def __del__(self):
        raise ValueError("not a stop")


def test_a_dropped_stop_is_not_reported_and_other_errors_still_are(installed, reported):
    SignalledInFinalizer(signal.SIGINT)  # a traceback on Ctrl-C, before
    assert reported == []
    RaisesInFinalizer()
    assert reported == [ValueError]


def test_a_signal_raises_keyboard_interrupt_where_it_lands(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)


def _stop_as_the_run_starts(*args, **kwargs):
    interrupts._handle(signal.SIGINT, None)


@pytest.mark.parametrize("when", ["dropped between trials", "as its run starts"])
def test_a_stop_before_a_trial_trains_requeues_the_trial(
    installed, tmp_path, synthetic_features, monkeypatch, when
):
    text = STUDY.format(name="s", n_trials=2, sampler="random", rates="0.05",
                        baselines=baseline(0.05))  # fmt: skip
    stores = stores_module.resolve_stores(tmp_path / "home")
    session = study.launch(config.parse_study(text, tmp_path / "s.toml"), stores)
    if when == "dropped between trials":
        monkeypatch.setattr(interrupts, "_requested", signal.SIGINT)
    else:
        monkeypatch.setattr(Tracker, "start_trial", _stop_as_the_run_starts)
    with pytest.raises(KeyboardInterrupt):
        study.run(session, synthetic_features, tmp_path / "ckpt", progress=False)
    stopped, retry = session.study.get_trials()
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs[keys.INTERRUPTED_ATTR]
    # The baseline's retry waits with the baseline's params.
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == stopped.system_attrs["fixed_params"]
