"""docker-compose.yml's own commands, run as local processes on real servers.

tests/stack.py runs each service as its container would, with the container
network and volumes mapped onto this machine.
"""

import base64
import collections
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
from mlflow.server import get_app_client

from sweep import tracking
from sweep.errors import SweepError
from sweep.keys import BEST_ARTIFACT, RUN_ID_ATTR
from sweep.tracking import Tracker
from tests import postgres
from tests.helpers import run_sweep, share_cache, skip_without_postgres
from tests.stack import start_stack

pytestmark = pytest.mark.slow

N_TRIALS = 4
SEEDS = 2

# One architecture, so every trial runs the same compiled step; only the
# learning rate varies.
STUDY = f"""
[study]
name = "stack"
n_trials = {N_TRIALS}
seed = 3
sampler = "random"
pruner = "none"

[training]
epochs = 6
validation_freq = 1
batch_size = 100

[space]
depth = {{ choices = [1] }}
width = {{ choices = [8] }}
embedding_dim = {{ choices = [8] }}
learning_rate = {{ choices = [0.05, 0.1, 0.2] }}

[confirm]
finalists = 1
seeds = {SEEDS}
"""


def get(url: str, auth: tuple[str, str] | None = None, host: str | None = None):
    """(status, body) of a GET, with basic auth and a Host header if given."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack's servers, as shipped (`start_stack`)."""
    skip_without_postgres()
    # mlflow-init runs once per `docker compose up`: the second run finds the
    # user and sets its password again.
    started = start_stack(tmp_path_factory.mktemp("stack"), init_runs=2)
    try:
        yield started
    finally:
        started.stop()


def test_databases_are_apart_and_password_protected(stack):
    port, e = stack.local.postgres_port, stack.dotenv

    def connect(user, password, database):
        return psycopg.connect(
            host="127.0.0.1", port=port, user=user, password=password,
            dbname=database, connect_timeout=10,
        )  # fmt: skip

    with connect(e["WORKER_DB_USER"], e["WORKER_DB_PASSWORD"], "optuna"):
        pass
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        connect(e["WORKER_DB_USER"], "not-the-password", "optuna")
    # MLflow's users (password hashes) are out of the workers' reach.
    for database in ("mlflow", "mlflow_auth"):
        with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
            connect(e["WORKER_DB_USER"], e["WORKER_DB_PASSWORD"], database)
    with connect(e["MLFLOW_DB_USER"], e["MLFLOW_DB_PASSWORD"], "mlflow") as conn:
        tables = {r[0] for r in conn.execute("select tablename from pg_tables")}
    assert "alembic_version" in tables and "runs" in tables


def test_mlflow_refuses_requests_without_a_user(stack):
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(search)[0] == 401
    worker = (
        stack.dotenv["MLFLOW_WORKER_USERNAME"],
        stack.dotenv["MLFLOW_WORKER_PASSWORD"],
    )
    assert get(search, (worker[0], "not-the-password"))[0] == 401
    assert get(search, worker)[0] == 200
    # The workers' containers reach the server by its service name.
    assert get(search, worker, host="mlflow:5000")[0] == 200
    assert get(search, worker, host="evil.example:5000")[0] == 403
    # Only the admin manages users.
    users = f"{stack.mlflow_url}/api/2.0/mlflow/users/get?username=admin"
    assert get(users, worker)[0] == 403


def test_another_user_reads_the_experiment_and_is_refused_a_change_in_one_line(
    stack, monkeypatch
):
    """Workers of one user share the experiment; a second user (the stack's
    default READ) joins it without writing, and a change it may not make is
    one line, not a traceback."""
    e = stack.dotenv
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", e["MLFLOW_ADMIN_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", e["MLFLOW_ADMIN_PASSWORD"])
    admin = get_app_client("basic-auth", tracking_uri=stack.mlflow_url)
    admin.create_user("reader", "reader-password")
    for key, value in stack.worker_mlflow_env.items():
        monkeypatch.setenv(key, value)
    owned = Tracker(stack.mlflow_url).experiment("shared", ["depth"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password")
    reader = Tracker(stack.mlflow_url)
    assert reader.experiment("shared", ["depth"]) == owned
    monkeypatch.setattr(tracking, "PERMISSION_LAG_SECONDS", 1)
    with pytest.raises(SweepError, match="refuses this user writes to experiment"):
        reader.experiment("shared", ["depth", "width"])
    # Its runs likewise: one line, not MLflow's 403 traceback.
    with pytest.raises(SweepError, match="refuses this user writes to experiment"):
        reader.start_study_run(owned, "shared", {})


def in_flight(poll: postgres.StudyPoll) -> set[int]:
    """The numbers of the study's RUNNING trials."""
    return {t.number for t in poll.trials() if t.state.name == "RUNNING"}


def wait_for(condition, what: str, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"a worker ended before {what}: {out}{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_two_workers_share_the_study_exactly_across_server_restarts(
    stack, tmp_path, monkeypatch, synthetic_folder, synthetic_home
):
    """Two workers, as compose starts them; PostgreSQL is restarted while a
    trial is in flight, then the MLflow server while a later one is."""
    path = tmp_path / "stack.toml"
    path.write_text(STUDY)
    procs = []
    for i in range(2):
        # Each worker's own /data volume; the data a container would fetch is
        # the synthetic copy (found through SWEEP_MOVIELENS_DIR), its features
        # already cached.
        argv, env = stack.local.process(
            "worker", stack.dotenv, SWEEP_STUDY_FILE=str(path),
            SWEEP_MOVIELENS_DIR=str(synthetic_folder),
        )  # fmt: skip
        home = share_cache(tmp_path / f"worker{i}", synthetic_home / "cache")
        env["SWEEP_HOME"] = str(home)
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    polled = postgres.StudyPoll(stack.worker_storage, "stack")
    try:
        wait_for(lambda: in_flight(polled), "a trial", procs)
        first = in_flight(polled)
        stack.database.halt()
        time.sleep(3)
        stack.database.serve()
        wait_for(lambda: in_flight(polled) - first, "a next trial",
                 procs)  # fmt: skip
        stack.mlflow.stop()
        time.sleep(3)
        stack.mlflow.start()
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        polled.close()
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
        # Not a traceback, and no dead thread (Optuna's heartbeat).
        assert "Traceback" not in err and "Exception in thread" not in err, err
        # MLflow's own "View run ... at" lines, two per run, stay quiet; the
        # sweep's one line per trial remains.
        assert "View run" not in out + err and "View experiment" not in out + err
        assert len(re.findall(r"^trial +\d+ ", out, re.MULTILINE)) >= 1, out
    logs = "".join(err for _, err in outputs)
    # The outages reached the workers, which waited them out: without these
    # lines the restarts fell between two calls and tested nothing.
    assert re.search(r"the Optuna storage \S+ stopped answering", logs), logs
    assert re.search(r"the Optuna storage \S+ is back after", logs), logs
    assert re.search(r"the MLflow tracking server \S+ is back after", logs), logs

    study = optuna.load_study(study_name="stack", storage=stack.worker_storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == N_TRIALS
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    # No trial failed by an outage (a surplus trial, dropped before training
    # when another worker reached the target first, is the only failure).
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("sweep.surplus") for t in failed), failed
    pids = {t.user_attrs["sweep.worker"]["pid"] for t in finished}
    assert len(pids) == 2, "both workers should have run trials"

    for key, value in stack.worker_mlflow_env.items():
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(stack.mlflow_url)
    runs = client.search_runs(
        [client.get_experiment_by_name("stack").experiment_id],
        "tags.`sweep.role` = 'trial'",
    )
    per_trial = collections.Counter(
        r.data.tags["optuna.trial_number"] for r in runs if r.info.status == "FINISHED"
    )
    # No trial evaluated twice: one FINISHED run per finished trial, no more,
    # and none left RUNNING.
    assert per_trial == collections.Counter(str(t.number) for t in finished)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # Every epoch of every trial reached MLflow, once.
    for trial in finished:
        losses = client.get_metric_history(trial.user_attrs[RUN_ID_ATTR], "loss")
        assert sorted(m.step for m in losses) == list(range(1, 7)), trial.number
    # The server stores the artifacts in its volume and serves them back.
    run_id = next(t for t in finished if t.state.name == "COMPLETE").user_attrs[
        RUN_ID_ATTR
    ]
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    fetched = Path(client.download_artifacts(run_id, BEST_ARTIFACT, str(tmp_path)))
    assert any(fetched.iterdir())
    assert list(stack.artifacts.rglob(f"{run_id}/artifacts/{BEST_ARTIFACT}"))

    # Both workers went on to the confirmation stage, which ran each seed once.
    companion = optuna.load_study(
        study_name="stack:confirm", storage=stack.worker_storage
    )
    confirmed = [t for t in companion.trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs["sweep.seed"] for t in confirmed}) == SEEDS
    assert len(confirmed) == SEEDS
    # A run is dropped (a seed both workers queued) or, if an outage cut it
    # short, failed and retried under another number; none is lost.
    retried = {t.system_attrs.get("failed_trial") for t in companion.trials}
    for trial in companion.trials:
        if trial.state.name != "COMPLETE":
            assert trial.user_attrs.get("sweep.surplus") or trial.number in retried, (
                trial.number,
                trial.state.name,
                trial.user_attrs,
            )
    confirm_runs = client.search_runs(
        [client.get_experiment_by_name("stack").experiment_id],
        "tags.`sweep.role` = 'confirm' and attributes.status = 'FINISHED'",
    )
    assert sorted(r.info.run_id for r in confirm_runs) == sorted(
        t.user_attrs[RUN_ID_ATTR] for t in confirmed
    )

    # What a user on another machine runs against the stack.
    status = run_sweep("status", "stack", "--storage", stack.worker_storage)
    assert status.returncode == 0, status.stderr
    assert f"stack: {N_TRIALS} of {N_TRIALS} finished" in status.stdout
    assert "confirmed champion: trial" in status.stdout
    ui = run_sweep("ui", "--tracking-uri", stack.mlflow_url,
                   env=stack.worker_mlflow_env)  # fmt: skip
    assert ui.returncode == 0, ui.stderr
    assert f"study stack: {stack.mlflow_url}/#/experiments/" in ui.stdout


def test_warm_start_and_delete_on_the_stack(
    stack, tmp_path, monkeypatch, synthetic_folder, synthetic_home
):
    """A study warm-started from another, then `sweep delete`, against
    PostgreSQL and the MLflow server; the deleted name launches again."""
    path = tmp_path / "gone.toml"
    text = STUDY.split("[confirm]")[0].replace('name = "stack"', 'name = "gone"')
    path.write_text(text.replace(f"n_trials = {N_TRIALS}", "n_trials = 1"))
    home = share_cache(tmp_path / "home", synthetic_home / "cache")
    env = {**stack.worker_mlflow_env, "SWEEP_HOME": str(home)}
    stores = ["--storage", stack.worker_storage, "--tracking-uri", stack.mlflow_url]
    data = ["--data-source", f"grouplens:{synthetic_folder}"]
    launched = run_sweep("launch", str(path), *stores, *data, env=env)
    assert launched.returncode == 0, launched.stderr
    for key, value in stack.worker_mlflow_env.items():
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(stack.mlflow_url)
    experiment_id = client.get_experiment_by_name("gone").experiment_id
    run_ids = [r.info.run_id for r in client.search_runs([experiment_id])]
    assert len(run_ids) == 2
    assert any(list(stack.artifacts.rglob(f"{r}/artifacts/*")) for r in run_ids)

    # A second study starts from the first one's finished trial.
    warm = tmp_path / "warm.toml"
    warm.write_text(path.read_text().replace('name = "gone"', 'name = "warm"'))
    started = run_sweep("launch", str(warm), "--warm-start", "gone", *stores, *data,
                        env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "warm start: 1 finished trials imported from 'gone' (1)" in started.stdout
    source = optuna.load_study(study_name="gone", storage=stack.worker_storage)
    trials = optuna.load_study(study_name="warm", storage=stack.worker_storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["sweep.imported_from"] == {"study": "gone", "trial": 0}
    assert trials[0].user_attrs[RUN_ID_ATTR] == source.trials[0].user_attrs[RUN_ID_ATTR]
    assert trials[0].value == source.trials[0].value

    # An export registers a version, which a logged model (with its files)
    # backs on the server.
    exported = run_sweep("export", "gone", "--out", str(tmp_path / "export"),
                         *stores, *data, env=env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert list(client.search_logged_models([experiment_id]))
    assert list(stack.artifacts.rglob(f"{experiment_id}/models/*/artifacts/*"))

    deleted = run_sweep("delete", "gone", "--yes", "--models", *stores, env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert not list(client.search_logged_models([experiment_id]))
    assert not list(stack.artifacts.rglob(f"{experiment_id}/models/*/artifacts/*"))
    assert "gone" not in optuna.get_all_study_names(stack.worker_storage)
    assert client.get_experiment_by_name("gone") is None
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    for run_id in run_ids:
        assert not list(stack.artifacts.rglob(f"{run_id}/artifacts/*")), run_id
    assert "gone" not in run_sweep("status", "--storage", stack.worker_storage).stdout
    again = run_sweep("launch", str(path), *stores, *data, env=env)
    assert again.returncode == 0, again.stderr
    for name in ("gone", "warm"):
        assert run_sweep("delete", name, "--yes", *stores, env=env).returncode == 0
    left = set(optuna.get_all_study_names(stack.worker_storage))
    assert left.isdisjoint({"gone", "warm"}), left
