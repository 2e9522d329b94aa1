"""docker-compose.yml's own commands, run as local processes on real servers.

No Docker engine runs here, so each service runs as its container would: its
entrypoint and command through `/bin/sh -c`, with the environment compose
gives it (interpolated from `.env.example`, as from a copied `.env`). The only
rewrites map the container network and volumes onto this machine: `postgres`
and `mlflow` become loopback ports, a volume's path a temporary folder (a file
mounted from the repository, a copy of it with the same mapping).
"""

import base64
import collections
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import psycopg
import pytest
import yaml

from sweep.keys import BEST_ARTIFACT, RUN_ID_ATTR
from tests import postgres, synthetic
from tests.conftest import REPO, skip_without_postgres, wait_for_health
from tests.test_cli import run_sweep

N_TRIALS = 4

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
"""


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    """`.env.example`'s settings, as `docker compose` reads a `.env`."""
    pairs = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's own substitution: `${VAR}`, `${VAR:-default}`, `${VAR:?error}`.

    `$$` is a literal `$`, left for the container's shell to expand.
    """

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1, 2, 3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise AssertionError(f"compose needs {name} from .env: {arg}")
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\$|\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)


def image_env() -> dict[str, str]:
    """The `ENV` settings the Dockerfile bakes into the image."""
    found = re.findall(r"^ENV (\w+)=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    return dict(found)


@dataclass
class Local:
    """Where the stack's container names, ports and volumes are on this machine."""

    postgres_port: int
    mlflow_port: int
    tmp: Path

    def rewrite(self, text: str) -> str:
        text = text.replace("postgres:5432", f"127.0.0.1:{self.postgres_port}")
        text = text.replace(
            "http://mlflow:5000", f"http://127.0.0.1:{self.mlflow_port}"
        )
        text = text.replace("--port 5000", f"--port {self.mlflow_port}")
        # A container listens on all its interfaces; a test process on loopback.
        return text.replace("--host 0.0.0.0", "--host 127.0.0.1")

    def volumes(self, service: str, spec: dict) -> dict[str, str]:
        """Each of a service's volume paths -> a folder or file here."""
        paths = {}
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                copy = self.tmp / service / Path(source).name
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_text(self.rewrite((REPO / source).read_text()))
                paths[target] = str(copy)
            else:
                folder = self.tmp / service / source
                folder.mkdir(parents=True, exist_ok=True)
                paths[target] = str(folder)
        return paths

    def process(self, service: str, dotenv: dict[str, str], **extra: str):
        """The argv and environment a service's container would run with."""
        spec = compose()["services"][service]
        paths = self.volumes(service, spec)

        def mapped(text: str) -> str:
            text = self.rewrite(interpolate(str(text), dotenv))
            for target, local in paths.items():
                text = re.sub(rf"(?<![\w/]){re.escape(target)}(?![\w.-])", local, text)
            return text

        argv = [mapped(a) for a in spec.get("entrypoint", []) + spec.get("command", [])]
        env = {k: mapped(v) for k, v in spec.get("environment", {}).items()}
        if "build" in spec:
            env = {**{k: mapped(v) for k, v in image_env().items()}, **env}
        return argv, {**host_env(), **env, **extra}


def host_env() -> dict[str, str]:
    """This machine's environment, less what would leak into a container.

    The image's programs (`sweep`, `mlflow`, `python`) and PostgreSQL's client
    come first on PATH.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "PG", "SWEEP_STORAGE"))
    }
    tools = [os.path.dirname(sys.executable), str(postgres.binaries())]
    env["PATH"] = os.pathsep.join([*tools, env.get("PATH", "")])
    return env


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


class MlflowService:
    """The mlflow service's command as a local process, that can be restarted."""

    def __init__(self, local: Local, dotenv: dict[str, str], log: Path):
        self.argv, self.env = local.process("mlflow", dotenv)
        self.url = f"http://127.0.0.1:{local.mlflow_port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as output:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=output,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_for_health(self.url, self.proc, self.log, seconds=180)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@dataclass
class Stack:
    local: Local
    dotenv: dict[str, str]
    mlflow_url: str
    artifacts: Path
    database: postgres.Server
    mlflow: MlflowService

    def stop(self) -> None:
        """Stops the MLflow server and PostgreSQL (removing its cluster)."""
        self.mlflow.stop()
        self.database.stop()

    @property
    def worker_storage(self) -> str:
        e = self.dotenv
        return (
            f"postgresql://{e['WORKER_DB_USER']}:{e['WORKER_DB_PASSWORD']}"
            f"@127.0.0.1:{self.local.postgres_port}/optuna"
        )

    @property
    def worker_mlflow_env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_USERNAME": self.dotenv["MLFLOW_WORKER_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": self.dotenv["MLFLOW_WORKER_PASSWORD"],
        }


def run_service(local: Local, name: str, dotenv: dict[str, str], **extra: str):
    argv, env = local.process(name, dotenv, **extra)
    result = subprocess.run(argv, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    return result


def start_stack(tmp: Path, init_runs: int = 1) -> Stack:
    """PostgreSQL, its init script, the MLflow server and mlflow-init, as shipped.

    Call `Stack.stop` when done (also after a failure: what started is stopped).
    """
    dotenv = env_example()
    settings = {
        k: interpolate(v, dotenv)
        for k, v in compose()["services"]["postgres"]["environment"].items()
    }
    # The cluster the postgres image makes from its settings.
    assert settings["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    server = postgres.Server(settings["POSTGRES_USER"], settings["POSTGRES_PASSWORD"])
    local = Local(server.port, postgres.free_port(), tmp)
    service = MlflowService(local, dotenv, tmp / "mlflow.log")
    artifacts = Path(re.search(r"--artifacts-destination (\S+)", service.argv[-1])[1])
    stack = Stack(local, dotenv, service.url, artifacts, server, service)
    try:
        server.start()
        # The image runs its init scripts with psql against its temporary
        # server, PGPASSWORD set to the superuser's; that server is here.
        _, env = local.process("postgres", dotenv, PGHOST="127.0.0.1",
                               PGPORT=str(server.port),
                               PGPASSWORD=settings["POSTGRES_PASSWORD"])  # fmt: skip
        paths = local.volumes("postgres", compose()["services"]["postgres"])
        (script,) = (v for k, v in paths.items() if "docker-entrypoint-initdb.d" in k)
        init = subprocess.run(["/bin/sh", script], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert init.returncode == 0, init.stderr
        service.start()
        for _ in range(init_runs):
            run_service(local, "mlflow-init", dotenv)
    except BaseException:
        stack.stop()
        raise
    return stack


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
    stack, tmp_path, monkeypatch
):
    """Two workers, as compose starts them; PostgreSQL is restarted while a
    trial is in flight, then the MLflow server while a later one is."""
    data = synthetic.write_grouplens(tmp_path / "ml")
    path = tmp_path / "stack.toml"
    path.write_text(STUDY)
    procs = []
    for i in range(2):
        # Each worker's own /data volume; the data a container would fetch is
        # the synthetic copy (found through SWEEP_MOVIELENS_DIR).
        argv, env = stack.local.process(
            "worker", stack.dotenv, SWEEP_STUDY_FILE=str(path),
            SWEEP_MOVIELENS_DIR=str(data),
        )  # fmt: skip
        env["SWEEP_HOME"] = str(tmp_path / f"worker{i}")
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

    # What a user on another machine runs against the stack.
    status = run_sweep("status", "stack", "--storage", stack.worker_storage)
    assert status.returncode == 0, status.stderr
    assert f"stack: {N_TRIALS} of {N_TRIALS} finished" in status.stdout
    ui = run_sweep("ui", "--tracking-uri", stack.mlflow_url,
                   env=stack.worker_mlflow_env)  # fmt: skip
    assert ui.returncode == 0, ui.stderr
    assert f"study stack: {stack.mlflow_url}/#/experiments/" in ui.stdout
