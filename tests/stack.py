"""docker-compose.yml's services as local processes on this machine.

No Docker engine runs here, so each service runs as its container would: its
entrypoint and command through `/bin/sh -c`, with the environment compose
gives it (interpolated from `.env.example`, as from a copied `.env`). The only
rewrites map the container network and volumes onto this machine: `postgres`
and `mlflow` become loopback ports, a volume's path a temporary folder (a file
mounted from the repository, a copy of it with the same mapping).

Used by tests/test_compose_stack.py and benchmarks/server_restarts.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests import postgres
from tests.helpers import REPO, wait_for_health


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
