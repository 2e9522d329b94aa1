import sqlite3

import pytest
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from sweep.keys import STATE_TAG
from sweep.report import PLOT_BUDGET, PLOT_INTERVAL_SECONDS, StudyReport
from sweep.tracking import RetryingClient, Tracker


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


def _trial_run(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    experiment = tracker.experiment("s", [])
    parent = tracker.start_study_run(experiment, "s", {})
    run = tracker.start_trial(experiment, parent, "s", 0, {"depth": 1})
    return tracker, run


def test_asynchronous_batches_are_all_written_before_the_run_ends(tmp_path):
    tracker, run = _trial_run(tmp_path)
    for epoch in range(1, 6):
        run.log_metric("val_loss", 1.0 / epoch, epoch)
        run.flush(wait=False)
    run.finish("COMPLETE")
    client = tracker.client
    history = client.get_metric_history(run.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED"
    assert info.data.tags[STATE_TAG] == "COMPLETE"
    assert info.data.params == {"depth": "1"}


def test_a_failed_asynchronous_batch_is_not_lost_silently(tmp_path):
    tracker, run = _trial_run(tmp_path)
    # MLflow refuses to change a logged param: the whole batch fails, in
    # MLflow's logging thread, and again when finish sends it once more.
    run.params = [Param("depth", "2")]
    run.log_metric("val_loss", 0.5, 1)
    run.flush(wait=False)
    with pytest.raises(MlflowException, match="depth"):
        run.finish("COMPLETE")


def test_batches_merged_into_a_failed_write_are_all_sent_again(tmp_path):
    tracker, run = _trial_run(tmp_path)
    # The same param twice: each batch alone is fine, but MLflow merges queued
    # batches of a run into one write, which refuses a key given twice, and
    # reports the failure on the first batch only.
    run.params = [Param("depth", "1")]
    run.log_metric("val_loss", 0.5, 1)
    run.flush(wait=False)
    run.finish("COMPLETE")
    history = tracker.client.get_metric_history(run.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_plots_are_drawn_less_often_when_drawing_is_slow():
    report = StudyReport(None, "run", "study.toml", "recbole")
    assert report.plot_interval() == PLOT_INTERVAL_SECONDS
    report._plot_seconds = 6.0
    assert report.plot_interval() == pytest.approx(6.0 / PLOT_BUDGET)
    assert report.plot_interval() * PLOT_BUDGET == pytest.approx(6.0)


def test_background_uploads_are_all_made_before_the_run_ends(tmp_path):
    tracker, run = _trial_run(tmp_path)
    checkpoint = tmp_path / "trial-0.npz"
    for epoch in range(3):
        checkpoint.write_bytes(bytes([epoch]) * 1000)
        run.log_artifact(checkpoint, "checkpoint", wait=False)
    run.finish("COMPLETE")
    assert tracker.client.get_run(run.run_id).info.status == "FINISHED"
    local = tracker.download_checkpoint(run.run_id, "checkpoint", tmp_path / "got")
    assert local.read_bytes() == bytes([2]) * 1000  # the last state of the file


def test_a_failed_background_upload_is_made_again_at_the_end(tmp_path):
    tracker, run = _trial_run(tmp_path)
    checkpoint = tmp_path / "trial-0.npz"
    run.log_artifact(checkpoint, "checkpoint", wait=False)  # no such file yet
    checkpoint.write_bytes(b"weights")
    run.finish("COMPLETE")
    local = tracker.download_checkpoint(run.run_id, "checkpoint", tmp_path / "got")
    assert local.read_bytes() == b"weights"


def test_an_upload_that_keeps_failing_is_raised_at_the_end(tmp_path):
    _, run = _trial_run(tmp_path)
    run.log_artifact(tmp_path / "missing.npz", "checkpoint", wait=False)
    with pytest.raises(OSError):
        run.finish("COMPLETE")


def test_a_folder_uploaded_in_the_background_is_all_there_when_the_run_ends(
    tmp_path,
):
    tracker, run = _trial_run(tmp_path)
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "model.weights.h5").write_bytes(b"w")
    (folder / "info.json").write_text("{}")
    run.log_artifacts(folder, "best", wait=False)
    run.finish("COMPLETE")
    names = {f.path for f in tracker.client.list_artifacts(run.run_id, "best")}
    assert names == {"best/model.weights.h5", "best/info.json"}


def test_a_queued_batch_does_not_end_an_outage(tmp_path, capfd):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from sweep import servers

    server = servers.Server("the MLflow tracking server under test", wait=60)
    client = RetryingClient(MlflowClient(f"sqlite:///{tmp_path / 'm.db'}"), server)
    run = client.create_run(client.create_experiment("e")).info.run_id
    server.failed(ConnectionError("connection refused"))
    # Queued for MLflow's logging thread: no answer from the server yet.
    metric = Metric("loss", 1.0, 0, 1)
    client.log_batch(run, metrics=[metric], synchronous=False).wait()
    assert server.unsettled(0)
    assert "is back" not in capfd.readouterr().err
    # A call that went through ends it.
    client.log_batch(run, metrics=[metric])
    assert not server.unsettled(0)
    assert "is back after" in capfd.readouterr().err
