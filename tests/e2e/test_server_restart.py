"""Workers ride out restarts of the PostgreSQL and MLflow servers (real ones).

Two workers share a study on PostgreSQL with runs on an MLflow server (itself
on PostgreSQL, as the compose stack runs it). The database is restarted in the
middle of a trial, then the MLflow server: the sweep must end as if nothing
happened. A server that stays away longer than `--server-wait` stops the worker
like Ctrl-C, and `sweep resume` continues the trial from its checkpoint.
"""

import collections
import time

import mlflow
import optuna
import pytest

from tests import postgres
from tests.e2e.conftest import share_real_data
from tests.mlflow_server import MlflowServer
from tests.test_cli import run_sweep, start_sweep

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "{name}"
n_trials = {n_trials}
seed = 11
sampler = "random"
pruner = "none"

[training]
epochs = 8
validation_freq = 1
batch_size = 1000

[space]
depth = {{ low = 1, high = 2 }}
width = {{ choices = [16, 32] }}
embedding_dim = {{ choices = [16, 32] }}
learning_rate = {{ low = 0.05, high = 0.2, log = true }}
"""


@pytest.fixture
def stack(tmp_path):
    """A PostgreSQL server holding the study and the MLflow server's runs."""
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    database = postgres.Server()
    server = None
    try:
        storage = database.start()
        server = MlflowServer(database.create_database("mlflow"), tmp_path / "art")
        server.start()
        yield database, storage, server
    finally:
        if server is not None:
            server.stop()
        database.stop()


def write_study(tmp_path, name, n_trials):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n_trials=n_trials))
    return path


def wait_for(condition, what, procs=(), timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"a worker ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def training_trials(storage, name):
    """Numbers of the RUNNING trials that have reported a validation."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not created yet
        return set()
    return {
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "RUNNING" and t.intermediate_values
    }


def test_workers_ride_out_a_database_and_a_tracking_server_restart(
    tmp_path, real_home, real_features, stack
):
    database, storage, server = stack
    path = write_study(tmp_path, "restart", n_trials=6)
    procs = [
        start_sweep(
            "launch",
            "--join",
            str(path),
            "--storage",
            storage,
            "--tracking-uri",
            server.url,
            "--data-source",
            "recbole",
            "--server-wait",
            "2m",
            env={"SWEEP_HOME": str(share_real_data(tmp_path / f"h{i}", real_home))},
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        wait_for(lambda: training_trials(storage, "restart"), "a trial", procs)
        first = training_trials(storage, "restart")
        database.halt()
        time.sleep(5)
        database.serve()
        # The MLflow server mid-trial too: one that started after the database
        # came back (and so had to reach it again).
        wait_for(
            lambda: training_trials(storage, "restart") - first, "a next trial", procs
        )
        server.stop()
        time.sleep(3)
        server.start()
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
        assert "Traceback" not in out + err, out + err
    logs = "".join(out + err for out, err in outputs)
    # The outages were seen, and waited for (a test that could not fail
    # otherwise: the restarts might have fallen between two calls).
    assert "the Optuna storage" in logs and "stopped answering" in logs, logs
    assert "the MLflow tracking server" in logs and "is back after" in logs, logs

    study = optuna.load_study(study_name="restart", storage=storage)
    states = collections.Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 6, states
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    # A trial dropped before training because another worker reached the
    # target first is the only failure allowed; none was failed by an outage.
    assert all(t.user_attrs.get("sweep.surplus") for t in failed), failed
    assert not states["RUNNING"] and not states["WAITING"], states
    assert len({t.user_attrs["sweep.worker"]["pid"] for t in study.trials}) == 2
    client = mlflow.MlflowClient(server.url)
    experiment = client.get_experiment_by_name("restart").experiment_id
    runs = client.search_runs([experiment])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = collections.Counter(
        r.data.tags["optuna.trial_number"]
        for r in runs
        if r.data.tags.get("sweep.role") == "trial" and r.info.status == "FINISHED"
    )
    assert finished == collections.Counter(
        str(t.number) for t in study.trials if t.state.name == "COMPLETE"
    )
    # Every epoch of every trial reached MLflow once.
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            history = client.get_metric_history(
                trial.user_attrs["mlflow_run_id"], "loss"
            )
            assert sorted(m.step for m in history) == list(range(1, 9)), trial.number


def test_a_server_away_past_the_wait_stops_the_worker_and_resume_continues(
    tmp_path, real_home, real_features, stack
):
    database, storage, server = stack
    path = write_study(tmp_path, "away", n_trials=2)
    home = share_real_data(tmp_path / "home", real_home)
    env = {"SWEEP_HOME": str(home)}
    stores = ["--storage", storage, "--tracking-uri", server.url]
    proc = start_sweep(
        "launch", str(path), *stores, "--data-source", "recbole",
        "--server-wait", "3s", env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: training_trials(storage, "away"), "a trial", [proc])
        database.halt()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if not database.data.joinpath("postmaster.pid").exists():
            database.serve()
    assert proc.returncode == 75, out + err
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "the Optuna storage postgresql://" in errors[0]
    assert "has not answered since" in errors[0] and "sweep resume" in errors[0]

    resumed = run_sweep("resume", "away", *stores, "--data-source", "recbole", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="away", storage=storage)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 2
    retried = [t for t in study.trials if "resumed_from_epoch" in t.user_attrs]
    assert len(retried) == 1 and retried[0].user_attrs["resumed_from_epoch"] >= 1
    first = next(t for t in study.trials if t.state.name == "FAIL")
    client = mlflow.MlflowClient(server.url)
    assert client.get_run(first.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert not [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("away").experiment_id]
        )
        if r.info.status == "RUNNING"
    ]
