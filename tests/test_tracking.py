import sqlite3

import pytest

from sweep.tracking import RetryingClient


class Flaky:
    """A client whose call fails with a lock `failures` times, then works."""

    def __init__(
        self, failures, message="(sqlite3.OperationalError) database is locked"
    ):
        self.failures = failures
        self.message = message
        self.calls = 0
        self.tracking_uri = "sqlite:///x.db"

    def log_batch(self, run_id):
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError(self.message)
        return run_id


def test_locked_store_is_retried_then_succeeds(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    flaky = Flaky(failures=3)
    assert RetryingClient(flaky).log_batch("r1") == "r1"
    assert flaky.calls == 4
    assert RetryingClient(flaky).tracking_uri == "sqlite:///x.db"


def test_retries_are_bounded(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    flaky = Flaky(failures=100)
    with pytest.raises(sqlite3.OperationalError):
        RetryingClient(flaky).log_batch("r1")
    assert flaky.calls == RetryingClient.ATTEMPTS


def test_other_errors_are_not_retried():
    flaky = Flaky(failures=1, message="no such table: runs")
    with pytest.raises(sqlite3.OperationalError):
        RetryingClient(flaky).log_batch("r1")
    assert flaky.calls == 1
