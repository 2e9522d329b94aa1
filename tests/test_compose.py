"""docker-compose.yml, checked for structure (no Docker engine runs here).

tests/test_compose_stack.py runs the services' commands themselves.
"""

import re

import yaml

from tests.helpers import REPO

BIND = "${SWEEP_BIND:-127.0.0.1}"


def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def command(service):
    return " ".join(service["command"])


def test_services_and_their_sources():
    services = compose()["services"]
    assert {"postgres", "mlflow", "mlflow-init", "worker"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("mlflow", "mlflow-init", "worker", "optuna-dashboard"):
        assert services[name]["build"] == "."
    assert (REPO / "Dockerfile").is_file()


def test_optuna_and_mlflow_keep_separate_databases():
    services = compose()["services"]
    init = (REPO / "compose" / "postgres-init.sh").read_text()
    mount = "./compose/postgres-init.sh:/docker-entrypoint-initdb.d/postgres-init.sh:ro"
    assert mount in services["postgres"]["volumes"]
    for database in ("optuna", "mlflow", "mlflow_auth"):
        assert f"CREATE DATABASE {database} " in init
    # Both keep an `alembic_version` table: one database each.
    assert "postgresql://postgres:5432/optuna" in command(services["worker"])
    assert "postgresql://postgres:5432/optuna" in command(services["optuna-dashboard"])
    assert "--backend-store-uri postgresql://postgres:5432/mlflow " in (
        command(services["mlflow"]) + " "
    )
    ini = (REPO / "compose" / "mlflow-auth.ini").read_text()
    assert "database_uri = postgresql://postgres:5432/mlflow_auth" in ini


def test_postgres_asks_for_scram_passwords():
    env = compose()["services"]["postgres"]["environment"]
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert env["POSTGRES_INITDB_ARGS"] == "--auth-host=scram-sha-256"


def test_mlflow_runs_the_basic_auth_app():
    mlflow = compose()["services"]["mlflow"]
    text = command(mlflow)
    assert "mlflow server --app-name basic-auth" in text
    assert "--port 5000" in text and "--serve-artifacts" in text
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/compose/mlflow-auth.ini"
    assert "./compose/mlflow-auth.ini:/compose/mlflow-auth.ini:ro" in mlflow["volumes"]
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow["healthcheck"]
    ini = (REPO / "compose" / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in ini
    assert "mlflow[auth]" in (REPO / "pyproject.toml").read_text()


def test_worker_joins_the_study_with_its_own_credentials():
    services = compose()["services"]
    worker = services["worker"]
    text = command(worker)
    assert "sweep launch --join" in text
    assert "--tracking-uri http://mlflow:5000" in text
    env = worker["environment"]
    # PostgreSQL's role and password reach libpq through its own variables.
    assert "--storage postgresql://postgres:5432/optuna" in text
    assert env["PGUSER"] == "${WORKER_DB_USER:?set in .env}"
    assert env["PGPASSWORD"] == "${WORKER_DB_PASSWORD:?set in .env}"
    assert env["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_WORKER_USERNAME:?set in .env}"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_WORKER_PASSWORD:?set in .env}"
    # The MLflow user exists before any worker starts.
    assert worker["depends_on"]["mlflow-init"] == {
        "condition": "service_completed_successfully"
    }
    assert "mlflow_worker_user.py" in command(services["mlflow-init"])
    # Scalable: no fixed name or host port that two replicas would fight over.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["volumes"]


def test_ports_bind_to_loopback_unless_sweep_bind_says_otherwise():
    services = compose()["services"]
    assert f"{BIND}:5432:5432" in services["postgres"]["ports"]
    assert f"{BIND}:5000:5000" in services["mlflow"]["ports"]
    # No sign-in of its own: loopback only, whatever SWEEP_BIND says.
    assert services["optuna-dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith((BIND, "127.0.0.1:")), f"{name} publishes {port}"


def test_credentials_come_from_the_env_file_only():
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text and "env_file" not in text
    example = (REPO / ".env.example").read_text()
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if re.search("PASSWORD|USER|SECRET", key) or key.startswith("PG"):
                # Interpolated from .env, and compose stops if .env lacks it.
                variable = re.fullmatch(r"\$\{(\w+):\?set in \.env\}", value)
                assert variable, f"{name}: {key}={value}"
                assert f"\n{variable[1]}=" in example, variable[1]
    for secret in ("POSTGRES_PASSWORD", "WORKER_DB_PASSWORD", "MLFLOW_DB_PASSWORD",
                   "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WORKER_PASSWORD",
                   "MLFLOW_SECRET_KEY"):  # fmt: skip
        assert f"\n{secret}=change-me" in example, secret
    # The auth store's URL names no user (no `user:password@`).
    assert "@" not in (REPO / "compose" / "mlflow-auth.ini").read_text()
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_postgres_data_persists_in_a_volume():
    spec = compose()
    assert (
        "postgres-data:/var/lib/postgresql/data"
        in spec["services"]["postgres"]["volumes"]
    )
    assert "postgres-data" in spec["volumes"]
