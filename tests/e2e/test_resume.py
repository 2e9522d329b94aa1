"""Crashes, interrupts and resumes of a sweep on the real data, in subprocesses.

A sweep is stopped at a known point (`tests.pause_flush`: a pause before the
N-th MLflow batch of the process: 1 = the trial's start, 2 = the first
validation, 3 = the second, 4 = the trial's final batch), then resumed;
afterwards both stores must agree that no trial was lost, none ran twice and no
run was left RUNNING.
"""

import collections
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest

from tests.helpers import REPO, run_sweep

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "crash"
n_trials = 1
seed = 5
sampler = "random"
pruner = "none"

[training]
epochs = 4
validation_freq = 2
batch_size = 1000

[space]
depth = { low = 1, high = 2 }
width = { choices = [16, 32] }
embedding_dim = { choices = [16, 32] }
learning_rate = { low = 0.05, high = 0.2, log = true }
"""


def start_launch(tmp_path, home, pause_at, extra="", args=()):
    study_file = tmp_path / "crash.toml"
    study_file.write_text(STUDY + extra)
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pause_flush", str(marker), str(pause_at),
         "launch", str(study_file), "--data-source", "recbole", *args],
        env={**os.environ, "SWEEP_HOME": str(home)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep never reached the pause"
        time.sleep(0.1)
    return proc


def stores(home):
    study = optuna.load_study(
        study_name="crash", storage=f"sqlite:///{home / 'optuna.db'}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("crash").experiment_id],
        "tags.`sweep.role` = 'trial'",
    )
    return study, runs


def check_consistent(home, stopped_trial):
    """The invariants after the resumed sweep has finished."""
    study, runs = stores(home)
    trials = study.trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 1
    # No run left RUNNING; each finished trial has exactly one FINISHED run.
    assert all(r.info.status != "RUNNING" for r in runs)
    finished_runs = collections.Counter(
        r.data.tags["optuna.trial_number"] for r in runs if r.info.status == "FINISHED"
    )
    assert finished_runs == collections.Counter(str(t.number) for t in finished)
    # The stopped trial failed once and ran again, once, under another number
    # with the same params: the study's one finished trial.
    stopped = trials[stopped_trial]
    assert stopped.state.name == "FAIL"
    retries = [
        t for t in trials if t.system_attrs.get("failed_trial") == stopped.number
    ]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.params == stopped.params
    assert retry.state.name == "COMPLETE"
    retry_run = next(
        r for r in runs if r.info.run_id == retry.user_attrs["mlflow_run_id"]
    )
    assert retry_run.data.tags["sweep.retry_of"] == str(stopped.number)
    stopped_run = next(
        r for r in runs if r.info.run_id == stopped.user_attrs["mlflow_run_id"]
    )
    assert stopped_run.info.status in ("KILLED", "FAILED")
    return stopped, retry


@pytest.mark.parametrize(
    "pause_at, resumed_epoch",
    [(2, None), (3, 2), (4, 4)],
    ids=["before-first-validation", "after-one-validation", "during-final-logging"],
)
def test_sigkill_then_resume_loses_nothing(tmp_path, home, pause_at, resumed_epoch):
    proc = start_launch(tmp_path, home, pause_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    study, _ = stores(home)
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    result = run_sweep("resume", "crash", "--data-source", "recbole",
                       env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    stopped, retry = check_consistent(home, 0)
    assert retry.user_attrs.get("resumed_from_epoch") == resumed_epoch
    # The pruner sees one curve: the retry inherits the values reported before.
    for step, value in stopped.intermediate_values.items():
        assert retry.intermediate_values[step] == value


def test_interrupt_stops_cleanly_and_resume_finishes(tmp_path, home):
    # SIGTERM takes the same path (tests/test_interrupts.py checks it raises
    # the same KeyboardInterrupt).
    proc = start_launch(tmp_path, home, 3)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    # Seconds of clean-up, not the rest of the trial (its state says which);
    # generous, as the test workers load the machine.
    assert time.monotonic() - start < 20, "stopping took too long"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "sweep resume crash" in stderr
    study, runs = stores(home)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"]  # failed and re-queued, nothing RUNNING
    assert all(r.info.status != "RUNNING" for r in runs)
    result = run_sweep("resume", "crash", "--data-source", "recbole",
                       env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, retry = check_consistent(home, 0)
    assert retry.user_attrs.get("resumed_from_epoch") == 2


def test_resume_with_another_file_refuses_and_changes_nothing(tmp_path, home):
    # Stopped as its first trial starts: a study with a trial, untrained.
    proc = start_launch(tmp_path, home, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    other = tmp_path / "other.toml"
    other.write_text(STUDY.replace("epochs = 4", "epochs = 6"))
    before = [t.state.name for t in stores(home)[0].trials]
    result = run_sweep("resume", "crash", "--study-file", str(other),
                       env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 1
    assert "[training] epochs: 4 -> 6" in result.stderr
    assert [t.state.name for t in stores(home)[0].trials] == before


# The search's one trial makes MLflow batches 1-4; the first confirmation run's
# are 5 (its start) to 8: 7 is just after its first validation and checkpoint.
CONFIRM = "\n[confirm]\nfinalists = 1\nseeds = 2\n"
AFTER_FIRST_CONFIRM_VALIDATION = 7


@pytest.mark.parametrize(
    "stop", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"]
)
def test_a_stopped_confirmation_resumes_on_two_workers_and_runs_nothing_twice(
    tmp_path, home, stop
):
    proc = start_launch(tmp_path, home, AFTER_FIRST_CONFIRM_VALIDATION, CONFIRM)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=30)
    url = f"sqlite:///{home / 'optuna.db'}"
    companion = optuna.load_study(study_name="crash:confirm", storage=url)
    states = [t.state.name for t in companion.trials]
    if stop == signal.SIGKILL:
        assert states == ["RUNNING", "WAITING"]
    else:
        assert proc.returncode == 130 and "Traceback" not in stderr
        # Failed and re-queued at once; the other seed still queued.
        assert sorted(states) == ["FAIL", "WAITING", "WAITING"]
    stopped_seed = companion.trials[0].user_attrs["sweep.seed"]
    result = run_sweep("resume", "crash", "--workers", "2", "--data-source",
                       "recbole", env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "confirmed champion: trial 0" in result.stdout

    runs = optuna.load_study(study_name="crash:confirm", storage=url).trials
    complete = [t for t in runs if t.state.name == "COMPLETE"]
    # Each seed ran to the end once; the stopped run once more, from its
    # checkpoint, as the same seed.
    assert sorted(t.user_attrs["sweep.seed"] for t in complete) == sorted(
        {t.user_attrs["sweep.seed"] for t in runs}
    )
    assert len(complete) == 2
    retried = [t for t in complete if t.user_attrs["sweep.seed"] == stopped_seed]
    assert retried[0].user_attrs.get("resumed_from_epoch") == 2
    failed = [t for t in runs if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].number == 0
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    logged = client.search_runs(
        [client.get_experiment_by_name("crash").experiment_id],
        "tags.`sweep.role` = 'confirm'",
    )
    assert all(r.info.status != "RUNNING" for r in logged)
    finished = collections.Counter(
        r.info.run_id for r in logged if r.info.status == "FINISHED"
    )
    assert set(finished) == {t.user_attrs["mlflow_run_id"] for t in complete}
    # The search was not run again.
    study = optuna.load_study(study_name="crash", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_confirmation_run_stopped_past_its_retries_runs_again_from_scratch(
    tmp_path, home
):
    # No retry allowed: Ctrl-C fails the run for good, and the resumed stage
    # queues its seed again instead of waiting for a retry that never comes.
    proc = start_launch(tmp_path, home, AFTER_FIRST_CONFIRM_VALIDATION, CONFIRM,
                        ("--max-retries", "0"))  # fmt: skip
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    url = f"sqlite:///{home / 'optuna.db'}"
    companion = optuna.load_study(study_name="crash:confirm", storage=url)
    assert [t.state.name for t in companion.trials] == ["FAIL", "WAITING"]
    stopped = companion.trials[0]
    result = run_sweep("resume", "crash", "--max-retries", "0",
                       "--data-source", "recbole",
                       env={"SWEEP_HOME": str(home)}, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "confirmed champion: trial 0" in result.stdout
    runs = optuna.load_study(study_name="crash:confirm", storage=url).trials
    complete = [t for t in runs if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    seed = stopped.user_attrs["sweep.seed"]
    again = next(t for t in complete if t.user_attrs["sweep.seed"] == seed)
    # A new run, not a retry: from its first epoch, without the stop's marks.
    assert "failed_trial" not in again.system_attrs
    assert "resumed_from_epoch" not in again.user_attrs
    assert "sweep.interrupted" not in again.user_attrs
