import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import sweep  # noqa: F401  (sets KERAS_BACKEND before any test imports keras)
from sweep import data, movielens
from tests import postgres, synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def shared_compilation_cache(tmp_path_factory):
    """One JAX compilation cache for every sweep the tests start.

    Each test has its own SWEEP_HOME (and so its own default cache); sharing
    one through JAX's own variable lets the many small sweeps of the same
    shapes compile once per session.
    """
    folder = tmp_path_factory.mktemp("jax-cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test gets its own SWEEP_HOME and no stray data or store settings."""
    home = tmp_path / "sweep-home"
    monkeypatch.setenv("SWEEP_HOME", str(home))
    for name in ("SWEEP_MOVIELENS_DIR", "SWEEP_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    return home


@pytest.fixture(scope="session")
def synthetic_features(tmp_path_factory):
    """Preprocessed features of the synthetic MovieLens (built once)."""
    folder = synthetic.write_grouplens(tmp_path_factory.mktemp("ml") / "ml-100k")
    home = tmp_path_factory.mktemp("home")
    return data.load(f"grouplens:{folder}", home=home, log=lambda _: None)


@pytest.fixture(scope="session")
def real_home():
    """A sweep home shared by the tests on the real MovieLens 100k (RecBole copy).

    Kept between runs (`.sweep-test/`) so the wheel is fetched and the cache built
    once per machine.
    """
    home = Path(os.environ.get("SWEEP_TEST_DATA_HOME", REPO / ".sweep-test"))
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def real_features(real_home):
    return data.load("recbole", home=real_home, log=lambda _: None)


@pytest.fixture(scope="session")
def real_records(real_home, real_features):
    return movielens.read_recbole(movielens.fetch_recbole(real_home / "downloads"))


def wait_for_health(url: str, proc: subprocess.Popen, log: Path | None = None,
                    seconds: float = 120) -> None:  # fmt: skip
    """Waits until an MLflow server at `url` answers /health, or fails."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            output = log.read_text() if log else proc.stderr.read()
            pytest.fail(f"mlflow server exited {proc.returncode}: {output[-3000:]}")
        assert time.monotonic() < deadline, f"mlflow server did not start at {url}"
        time.sleep(0.5)


def skip_without_postgres():
    if postgres.binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian package postgresql; "
            "scripts/test.sh installs it where apt-get is available)"
        )


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL cluster on loopback (trust auth)."""
    skip_without_postgres()
    server = postgres.Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()
