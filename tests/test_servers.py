"""Waiting for a restarting server: which errors are waited for, and how long.

The errors are real ones: a PostgreSQL server stopped and started again, a
port where nothing listens, a SQLite file that is not a database.
"""

import http.server
import sqlite3
import threading
import time

import mlflow
import optuna
import pytest
import requests
import sqlalchemy

from sweep import servers, storage
from sweep import stores as stores_module
from tests import postgres
from tests.helpers import assert_one_line_error, run_main, run_sweep, start_sweep


def error_of(call):
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("no error")


def test_transient_and_permanent_errors(postgres_server, tmp_path, monkeypatch):
    nobody = f"postgresql://sweep@127.0.0.1:{postgres.free_port()}/sweep"
    refused = error_of(lambda: sqlalchemy.create_engine(nobody).connect())
    assert servers.is_transient(refused)
    missing = f"postgresql://sweep@127.0.0.1:{postgres_server.port}/no_such_db"
    assert not servers.is_transient(
        error_of(lambda: sqlalchemy.create_engine(missing).connect())
    )
    # MLflow's client, against a port where nothing listens.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = mlflow.MlflowClient(f"http://127.0.0.1:{postgres.free_port()}")
    assert servers.is_transient(error_of(client.search_experiments))
    # A file is never a server to wait for.
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    assert not servers.is_transient(
        error_of(lambda: sqlite3.connect(bad).execute("select * from sqlite_master"))
    )
    assert not servers.is_transient(ValueError("connection refused"))


def test_a_wrong_scheme_or_ssl_setting_is_not_waited_for(postgres_server, monkeypatch):
    # SSL asked of a server without it: a setting to fix, told at once.
    ssl = f"postgresql://sweep@127.0.0.1:{postgres_server.port}/sweep?sslmode=require"
    assert not servers.is_transient(
        error_of(lambda: sqlalchemy.create_engine(ssl).connect())
    )
    # https to a plain-http server.
    plain = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        client = mlflow.MlflowClient(f"https://127.0.0.1:{plain.server_port}")
        assert not servers.is_transient(error_of(client.search_experiments))
    finally:
        plain.shutdown()


def test_an_unknown_host_is_one_line():
    unknown = "postgresql://sweep@nosuchhost.invalid:5432/sweep"
    error = error_of(lambda: sqlalchemy.create_engine(unknown).connect())
    assert servers.one_line(error) == "Name or service not known"


def test_a_call_waits_for_the_server_then_gives_up_at_once(capfd):
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("Connection refused")
        return "ok"

    server = servers.Server("the test server", wait=30)
    assert server.call(flaky) == "ok"
    assert len(calls) == 3
    err = capfd.readouterr().err
    assert err.count("the test server stopped answering") == 1
    assert "the test server is back after" in err

    short = servers.Server("the short server", wait=0.5)
    with pytest.raises(servers.ServerUnavailable) as gone:
        short.call(always_refused)
    assert "the short server has not answered since" in str(gone.value)
    start = time.monotonic()
    with pytest.raises(servers.ServerUnavailable):
        short.call(lambda: "never called")
    assert time.monotonic() - start < 0.1


def always_refused():
    raise requests.exceptions.ConnectionError("Connection refused")


def test_storage_rides_out_a_postgres_restart(postgres_server):
    database = postgres_server
    url = database.create_database("restart")
    opened = stores_module.open_storage(url)
    study = optuna.create_study(study_name="s", storage=opened)
    trial = study.ask()
    opened.record_heartbeat(trial._trial_id)

    database.halt()
    # Down: a beat does not raise (Optuna's heartbeat thread would die).
    opened.record_heartbeat(trial._trial_id)
    back = threading.Timer(3, database.serve)
    back.start()
    try:
        # A write made while the server is down goes through once it is back.
        trial.report(0.5, 1)
    finally:
        back.join()
    assert study.trials[0].intermediate_values == {1: 0.5}
    # Just back: nobody's trial is taken for dead while the beats catch up.
    assert opened._get_stale_trial_ids(study._study_id) == []


def test_durations_and_redacted_urls():
    assert servers.parse_duration("90") == 90
    assert servers.parse_duration("30s") == 30
    assert servers.parse_duration("5m") == 300
    assert servers.parse_duration("2h") == 7200
    for bad in ("5x", "", "-3", "m"):
        with pytest.raises(ValueError):
            servers.parse_duration(bad)
    assert (
        servers.redact("postgresql://worker:s3cret@db:5432/optuna")
        == "postgresql://worker:***@db:5432/optuna"
    )
    assert servers.redact("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
    assert storage.server_name("postgresql://u:p@h/d") == (
        "the Optuna storage postgresql://u:***@h/d"
    )


AWAY = """
[study]
name = "away"
n_trials = 2
seed = 3
sampler = "random"
pruner = "none"

[training]
epochs = 12
validation_freq = 1
batch_size = 100

[space]
depth = { choices = [1] }
width = { choices = [8] }
embedding_dim = { choices = [8] }
learning_rate = { choices = [0.05, 0.1] }
"""


@pytest.mark.slow
def test_a_server_away_past_the_wait_stops_the_worker_and_resume_continues(
    postgres_server, tmp_path, cached_home, synthetic_spec
):
    database = postgres_server
    storage = database.create_database("away")
    path = tmp_path / "away.toml"
    path.write_text(AWAY)
    env = {"SWEEP_HOME": str(cached_home)}
    given = ["--storage", storage, "--data-source", synthetic_spec]
    proc = start_sweep("launch", str(path), *given, "--server-wait", "3s", env=env)
    poll = postgres.StudyPoll(storage, "away")
    try:
        deadline = time.monotonic() + 300
        # A trial that reported a validation (and so saved a checkpoint).
        while not any(
            t.state.name == "RUNNING" and t.intermediate_values for t in poll.trials()
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.1)
        database.halt()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        poll.close()
        if not (database.data / "postmaster.pid").exists():
            database.serve()
    assert proc.returncode == servers.EXIT_CODE, out + err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "sweep launch: error: the Optuna storage postgresql://" in errors[0]
    assert "has not answered since" in errors[0] and "sweep resume" in errors[0]

    resumed = run_sweep("resume", "away", *given, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="away", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1, states
    # The trial the outage stopped was re-queued and continued from its
    # checkpoint; its first run was ended KILLED.
    (retry,) = [t for t in study.trials if "resumed_from_epoch" in t.user_attrs]
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    stopped = next(t for t in study.trials if t.state.name == "FAIL")
    client = mlflow.MlflowClient(f"sqlite:///{cached_home / 'mlflow.db'}")
    assert client.get_run(stopped.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_unreachable_or_refusing_stores_are_named_in_one_line(
    postgres_server, tmp_path, synthetic_spec
):
    path = tmp_path / "away.toml"
    path.write_text(AWAY)
    home = tmp_path / "home"
    env = {"SWEEP_HOME": str(home)}
    nobody = f"http://127.0.0.1:{postgres.free_port()}"
    launched = run_sweep(
        "launch", str(path), "--tracking-uri", nobody, "--server-wait", "1s",
        "--data-source", synthetic_spec, env=env,
    )  # fmt: skip
    assert launched.returncode == servers.EXIT_CODE, launched.stderr
    (error,) = [line for line in launched.stderr.splitlines() if "error:" in line]
    assert error.startswith(f"sweep launch: error: the MLflow tracking server {nobody}")
    assert "has not answered since" in error and "Connection refused" in error
    assert "Traceback" not in launched.stderr
    # Told before anything was built or created.
    assert not (home / "optuna.db").exists() and not (home / "cache").exists()

    down = f"postgresql://sweep:secret@127.0.0.1:{postgres.free_port()}/optuna"
    status = run_sweep("status", "--storage", down, "--server-wait", "1s", env=env)
    assert status.returncode == servers.EXIT_CODE, status.stderr
    (error,) = [line for line in status.stderr.splitlines() if "error:" in line]
    assert "the Optuna storage postgresql://sweep:***@127.0.0.1:" in error
    assert "secret" not in status.stderr and "Traceback" not in status.stderr

    # A database that does not exist is not waited for.
    missing = f"postgresql://sweep@127.0.0.1:{postgres_server.port}/no_such_db"
    status = run_sweep("status", "--storage", missing, env=env)
    assert status.returncode == 1
    assert "stopped answering" not in status.stderr
    (line,) = status.stderr.splitlines()
    assert line.startswith("sweep status: error: cannot open the Optuna storage")
    assert 'database "no_such_db" does not exist' in line


def test_reading_a_database_never_makes_it_an_optuna_storage(postgres_server):
    empty = postgres_server.create_database("not_yet_a_storage")
    result = run_main("status", "--storage", empty)
    assert result.returncode == 0 and "no studies" in result.stdout, result.stderr
    result = run_main("best", "s", "--storage", empty)
    assert_one_line_error(result, "no study 's'", "holds no Optuna storage")
    assert storage.table_names(empty) == []
    # MLflow's database: refused, and left without Optuna's tables.
    mlflow_db = postgres_server.create_database("mlflow_tables")
    mlflow.MlflowClient(mlflow_db).search_experiments()
    before = storage.table_names(mlflow_db)
    assert "experiments" in before
    for args in (["status"], ["trials", "s"], ["launch", "studies/smoke.toml"]):
        result = run_main(*args, "--storage", mlflow_db)
        assert_one_line_error(result, "is not an Optuna storage", "program's tables")
    assert storage.table_names(mlflow_db) == before
