import fcntl
import os
from pathlib import Path

import pytest

import sweep  # noqa: F401  (sets KERAS_BACKEND before any test imports keras)
from sweep import data, movielens
from tests import postgres, synthetic
from tests.helpers import (
    REPO,
    make_mlflow_template,
    share_cache,
    skip_without_postgres,
)


@pytest.fixture(autouse=True, scope="session")
def shared_compilation_cache(tmp_path_factory):
    """One JAX compilation cache for every sweep the tests start.

    Each test has its own SWEEP_HOME (and so its own default cache); sharing
    one through JAX's own variable lets the many small sweeps of the same
    shapes compile once per run. Parallel test workers share it too (in the
    folder above their own temporary folders), as the workers of one sweep
    share their home's: most synthetic sweeps train the same few shapes.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax-cache"))
    Path(folder).mkdir(exist_ok=True)
    # And for the sweeps run in this process: JAX read its variable when the
    # test modules imported it, before this fixture set it.
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)


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
def synthetic_folder(tmp_path_factory):
    """The synthetic MovieLens as a GroupLens folder (written once)."""
    return synthetic.write_grouplens(tmp_path_factory.mktemp("ml") / "ml-100k")


@pytest.fixture(scope="session")
def synthetic_spec(synthetic_folder):
    """`--data-source` for the synthetic MovieLens."""
    return f"grouplens:{synthetic_folder}"


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory, synthetic_spec):
    """A sweep home holding the synthetic data's feature cache (built once).

    Sweeps in other homes share its `cache/` (`helpers.share_cache`) rather than
    building the same features again.
    """
    home = tmp_path_factory.mktemp("synthetic-home")
    data.load(synthetic_spec, home=home, log=lambda _: None)
    make_mlflow_template(home)
    return home


@pytest.fixture
def cached_home(tmp_path, synthetic_home):
    """A fresh sweep home that shares the synthetic data's feature cache."""
    return share_cache(tmp_path / "cached-home", synthetic_home / "cache")


@pytest.fixture(scope="session")
def synthetic_features(synthetic_home, synthetic_spec):
    """Preprocessed features of the synthetic MovieLens (built once)."""
    return data.load(synthetic_spec, home=synthetic_home, log=lambda _: None)


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
    # Parallel test workers share the home: one fetches and builds, the
    # others then read what it made.
    with open(real_home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        make_mlflow_template(real_home)
        return data.load("recbole", home=real_home, log=lambda _: None)


@pytest.fixture(scope="session")
def real_records(real_home, real_features):
    return movielens.read_recbole(movielens.fetch_recbole(real_home / "downloads"))


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


# Each test worker takes whole modules (`--dist loadfile`), in
# collection order; the longest start first, so that none is left running
# alone at the end.
SLOWEST_FIRST = (
    "tests/e2e/test_export.py",
    "tests/test_study.py",
    "tests/e2e/test_resume.py",
    "tests/test_compose_stack.py",
    "tests/test_servers.py",
    "tests/e2e/test_ui.py",
    "tests/e2e/test_launch.py",
    "tests/test_confirm.py",
    "tests/test_delete.py",
)

# The modules that read the smoke study (the `smoke` fixture) go to one test
# worker together, which launches it once for all of them.
SMOKE_MODULES = {
    "tests/e2e/test_export.py",
    "tests/e2e/test_launch.py",
    "tests/e2e/test_ui.py",
}


def pytest_collection_modifyitems(items):
    """Moves the slowest modules to the front (their own order kept)."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole modules per test worker, the smoke study's readers as one."""
    from xdist.scheduler import LoadFileScheduling

    # In collection order (SLOWEST_FIRST), not xdist's default of the modules
    # with the most tests first.
    config.option.loadscopereorder = False

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            module = super()._split_scope(nodeid)
            return "smoke study" if module in SMOKE_MODULES else module

    return Scheduling(config, log)
