"""docker-compose.yml, checked for structure (no Docker engine runs here)."""

import yaml

from tests.conftest import REPO


def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_their_sources():
    services = compose()["services"]
    assert {"postgres", "mlflow", "worker"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("mlflow", "worker"):
        assert services[name]["build"] == "."
    assert (REPO / "Dockerfile").is_file()


def test_worker_joins_the_study_on_the_shared_stores():
    worker = compose()["services"]["worker"]
    command = " ".join(worker["command"])
    assert "sweep launch --join" in command
    assert "--storage postgresql://" in command and "@postgres:5432/" in command
    assert "--tracking-uri http://mlflow:5000" in command
    # Scalable: no fixed name or host port that two replicas would fight over.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["volumes"]


def test_mlflow_server_serves_artifacts_on_5000():
    mlflow = compose()["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "mlflow server" in command and "--port 5000" in command
    assert (
        "--serve-artifacts" in command
        and "--backend-store-uri postgresql://" in command
    )
    assert "127.0.0.1:5000:5000" in mlflow["ports"]
    assert mlflow["volumes"]


def test_ports_bind_to_loopback_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_credentials_come_from_the_env_file_only():
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text and "POSTGRES_PASSWORD=" not in text
    for name, service in compose()["services"].items():
        assert service.get("env_file") == ".env", name
        assert "environment" not in service, name
    example = (REPO / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_postgres_data_persists_in_a_volume():
    spec = compose()
    assert (
        "postgres-data:/var/lib/postgresql/data"
        in spec["services"]["postgres"]["volumes"]
    )
    assert "postgres-data" in spec["volumes"]
