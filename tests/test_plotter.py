"""The report's plotter: a low-priority child process drawing into the parent run."""

import os
import signal
import subprocess
import sys
import time

import optuna

from sweep.plotter import Plotter
from sweep.report import PLOT_INTERVAL_SECONDS, StudyReport
from sweep.tracking import Tracker


def finished_study(tmp_path):
    """A small finished study and the MLflow parent run its report goes to."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    for number in range(4):
        trial = study.ask()
        trial.suggest_float("learning_rate", 0.01, 0.5, log=True)
        trial.suggest_int("depth", 1, 3)
        for epoch in (1, 2):
            trial.report(0.1 * epoch + 0.01 * number, epoch)
        study.tell(trial, 0.2 + 0.01 * number)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    experiment = tracker.experiment("p", [])
    run_id = tracker.start_study_run(experiment, "p", {})
    return url, tracker, run_id


def report_files(tracker, run_id):
    return {
        f.path
        for folder in (None, "report", "report/optuna")
        for f in tracker.client.list_artifacts(run_id, folder)
    }


def test_a_requested_drawing_reaches_the_parent_run(tmp_path):
    url, tracker, run_id = finished_study(tmp_path)
    plotter = Plotter(url, "p", tracker.tracking_uri, run_id, tmp_path)
    assert plotter.request()
    plotter.stop()  # lets the drawing finish
    files = report_files(tracker, run_id)
    assert "trials.csv" in files
    assert "report/top100_accuracy_vs_epoch.png" in files
    assert "report/optuna/optimization_history.html" in files
    assert "report/optuna/intermediate_values.png" in files


def test_the_worker_asks_for_plots_once_the_last_are_a_minute_old(tmp_path):
    url, tracker, run_id = finished_study(tmp_path)
    study = optuna.load_study(study_name="p", storage=url)
    last = study.trials[-1]
    # Right after the start: trials.csv from the worker, no drawing asked for.
    plotter = Plotter(url, "p", tracker.tracking_uri, run_id, tmp_path)
    StudyReport(tracker, run_id, "p.toml", "recbole", plotter)(study, last)
    plotter.stop()  # a drawing asked for would be finished now
    assert report_files(tracker, run_id) == {"trials.csv"}
    # A minute later the plotter draws them.
    plotter = Plotter(url, "p", tracker.tracking_uri, run_id, tmp_path)
    report = StudyReport(tracker, run_id, "p.toml", "recbole", plotter)
    report._plotted_at -= PLOT_INTERVAL_SECONDS
    report(study, last)
    plotter.stop()
    assert "report/optuna/optimization_history.html" in report_files(tracker, run_id)


def test_the_child_is_niced_and_leaves_when_its_worker_dies(tmp_path):
    url, tracker, run_id = finished_study(tmp_path)
    # A worker that starts a plotter and is killed without stopping it.
    worker = subprocess.Popen(
        [sys.executable, "-c",
         "import pathlib, sys, time; from sweep.plotter import Plotter; "
         "p = Plotter(*sys.argv[1:5], pathlib.Path(sys.argv[5])); "
         "print(p._process.pid, flush=True); time.sleep(600)",
         url, "p", tracker.tracking_uri, run_id, str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    child = int(worker.stdout.readline())
    # The child lowers its own priority first thing (on a busy machine it may
    # take a moment to get there).
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, child) == 19, seconds=30)
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        with open(f"/proc/{child}/stat") as stat:
            if stat.read().split()[2] == "Z":  # exited, not yet reaped
                break
        time.sleep(0.2)
    else:
        assert not os.path.exists(f"/proc/{child}"), "the plotter outlived its worker"


def test_a_dead_plotter_is_reported_so_the_worker_draws_itself(tmp_path):
    url, tracker, run_id = finished_study(tmp_path)
    plotter = Plotter(url, "p", tracker.tracking_uri, run_id, tmp_path)
    plotter.stop(wait=False)
    assert not plotter.request()


def test_a_stuck_plotter_never_blocks_its_worker(tmp_path):
    url, tracker, run_id = finished_study(tmp_path)
    plotter = Plotter(url, "p", tracker.tracking_uri, run_id, tmp_path)
    child = plotter._process.pid
    os.kill(child, signal.SIGSTOP)  # stuck: reads nothing while requests pile up
    try:
        start = time.monotonic()
        # Far more requests than the pipe holds (64 KiB of 5-byte lines).
        assert all(plotter.request() for _ in range(20_000))
        assert time.monotonic() - start < 10
    finally:
        os.kill(child, signal.SIGCONT)
        plotter.stop(wait=False)
    assert plotter._process.poll() is not None


def test_one_plotter_per_study_draws_and_another_takes_over(tmp_path):
    url, tracker, first_run = finished_study(tmp_path)
    # A second worker's plotter; its own run shows whether it draws.
    second_run = tracker.start_study_run(tracker.experiment("p", []), "p2", {})
    # The study's checkpoint folder, not yet created: the lock goes there, so
    # that deleting the study leaves no file of it behind.
    folder = tmp_path / "checkpoints" / "p"
    first = Plotter(url, "p", tracker.tracking_uri, first_run, folder)
    assert first.request()
    wait_for(lambda: "trials.csv" in report_files(tracker, first_run))
    assert (folder / "plotter.lock").is_file()
    second = Plotter(url, "p", tracker.tracking_uri, second_run, folder)
    try:
        assert second.request()
        # It would have drawn by now (the first one drew within the wait above).
        time.sleep(8)
        assert report_files(tracker, second_run) == set()
        first.stop()
        assert second.request()
        wait_for(lambda: "trials.csv" in report_files(tracker, second_run))
    finally:
        first.stop(wait=False)
        second.stop(wait=False)


def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.2)
