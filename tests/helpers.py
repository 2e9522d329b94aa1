"""What several test modules share: running `sweep`, sweep homes, study files.

Test modules import from here (or take fixtures from conftest.py), never from
one another.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow.version
import pytest

from sweep import stores
from sweep.data import Vocabulary
from tests import postgres

REPO = Path(__file__).resolve().parents[1]

SWEEP = os.path.join(os.path.dirname(sys.executable), "sweep")


# --- the `sweep` command -------------------------------------------------------


def run_sweep(*args, env=None, timeout=600):
    """Runs the installed `sweep` console script as a user would."""
    return subprocess.run(
        [SWEEP, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def run_main(*args, env=None):
    """Runs `sweep.cli.main` (what the console script calls) in this process.

    For the many variants of one verb's checks: the libraries are imported
    once per test process instead of once per variant. Each behaviour that a
    real process adds (what its imports print, its exit status) is checked
    with `run_sweep` as well. Environment, signal handlers and the server
    wait are put back afterwards.

    Returns:
        A `subprocess.CompletedProcess` as `run_sweep` gives.
    """
    from sweep import cli, servers

    saved_env = dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_wait = servers.wait_seconds()
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # argparse's errors and --help
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for number, handler in saved_signals.items():
            signal.signal(number, handler)
        servers.set_wait(saved_wait)
    return subprocess.CompletedProcess(
        ["sweep", *args], code, out.getvalue(), err.getvalue()
    )


def study_in_home(home: Path, monkeypatch, name: str = "s"):
    """A fresh SWEEP_HOME (set for the test) whose SQLite store holds study `name`.

    Returns:
        The study and its storage.
    """
    import optuna

    from sweep import stores

    home.mkdir()
    monkeypatch.setenv("SWEEP_HOME", str(home))
    storage = stores.open_storage(f"sqlite:///{home / 'optuna.db'}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    return study, storage


def start_sweep(*args, env=None):
    """Starts the `sweep` console script in the background, output piped."""
    return subprocess.Popen(
        [SWEEP, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_one_line_error(result, *fragments, code=1):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- sweep homes ---------------------------------------------------------------


def share_real_data(home, real_home):
    """Makes `home` a sweep home that uses the real data's cache and wheel."""
    share_cache(home, real_home / "cache")
    (home / "downloads").symlink_to(real_home / "downloads")
    return home


# Beside a shared data cache (`synthetic_home`, `real_home`): an empty MLflow
# store. Named by MLflow's version: `real_home` outlives an upgrade, and MLflow
# refuses a store whose schema is older than its own.
MLFLOW_TEMPLATE = f"mlflow-template-{mlflow.version.VERSION}.db"


def make_mlflow_template(home: Path) -> None:
    """Writes `MLFLOW_TEMPLATE` into `home` as a sweep makes its store, if missing.

    Creating a store runs MLflow's migrations (seconds), which the homes that
    share `home`'s cache then skip (`share_cache`). Made in a scratch folder and
    renamed into place, so a reader never copies half a store.
    """
    template = home / MLFLOW_TEMPLATE
    if template.is_file():
        return
    with tempfile.TemporaryDirectory(dir=home) as scratch:
        store = Path(scratch) / "mlflow.db"
        stores.open_tracker(
            stores.resolve_stores(Path(scratch), tracking_uri=f"sqlite:///{store}")
        )
        # The store is in WAL mode: copied through SQLite, not as a file.
        _copy_store(store, Path(scratch) / MLFLOW_TEMPLATE)
        (Path(scratch) / MLFLOW_TEMPLATE).rename(template)


def _copy_store(source: Path, target: Path) -> None:
    """Copies the SQLite database `source` (with its WAL) into `target`."""
    with (
        contextlib.closing(sqlite3.connect(source)) as reader,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        reader.backup(copy)


def share_cache(home: Path, cache: Path) -> Path:
    """Makes `home` a sweep home whose data cache is the (prebuilt) `cache`.

    A sweep finds its features there instead of building them (which imports
    TensorFlow) in each fresh home. If the cache's home keeps an empty MLflow
    store (`MLFLOW_TEMPLATE`), `home` starts with a copy of it, as a home does
    after its first sweep: a sweep skips MLflow's migrations, and the tests of
    a new home's store run where no template is shared (`isolated_home`).
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache)
    template = cache.parent / MLFLOW_TEMPLATE
    if template.is_file():
        _copy_store(template, home / "mlflow.db")
    return home


# --- servers -------------------------------------------------------------------


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


# --- study files ---------------------------------------------------------------

# A valid study file of every section (tests/test_config.py changes it piece by
# piece; tests/test_cli.py hands it to each verb).
GOOD = """
[study]
name = "t"
n_trials = 3
seed = 1
sampler = "tpe"
pruner = "median"

[training]
epochs = 4
validation_freq = 2
batch_size = 1000

[space]
depth = { low = 1, high = 3 }
width = { choices = [32, 64] }
embedding_dim = { choices = [16, 32] }
learning_rate = { low = 0.01, high = 0.5, log = true }

[[baselines]]
depth = 1
width = 32
embedding_dim = 32
learning_rate = 0.05
"""

# A small study for the synthetic data; `study_file` fills it in.
STUDY = """
[study]
name = "{name}"
n_trials = {n_trials}
seed = 3
sampler = "{sampler}"
pruner = "none"

[training]
epochs = 2
validation_freq = 1
batch_size = 100

[space]
depth = {{ low = 1, high = 2 }}
width = {{ choices = [8, 16] }}
embedding_dim = {{ choices = [8, 16] }}
learning_rate = {{ choices = [{rates}] }}
{baselines}
"""


def study_file(tmp_path, name="t", n_trials=2, sampler="tpe", rates="0.05, 0.1",
               baselines=""):  # fmt: skip
    path = tmp_path / f"{name}.toml"
    path.write_text(
        STUDY.format(
            name=name,
            n_trials=n_trials,
            sampler=sampler,
            rates=rates,
            baselines=baselines,
        )  # fmt: skip
    )
    return path


def one_architecture(path):
    """Narrows a `study_file`'s space to the baseline's architecture.

    Only the learning rate then varies, which needs no new compilation: for
    tests of how trials are shared or stopped rather than of what they train.
    """
    text = path.read_text()
    for line, narrow in [
        ("depth = { low = 1, high = 2 }", "depth = { choices = [1] }"),
        ("width = { choices = [8, 16] }", "width = { choices = [8] }"),
        ("embedding_dim = { choices = [8, 16] }", "embedding_dim = { choices = [8] }"),
    ]:
        assert line in text, line
        text = text.replace(line, narrow)
    path.write_text(text)
    return path


def baseline(lr):
    return (
        f"[[baselines]]\ndepth = 1\nwidth = 8\nembedding_dim = 8\n"
        f"learning_rate = {lr}\n"
    )


# --- model inputs --------------------------------------------------------------

VOCAB = Vocabulary(
    users=5, genders=2, occupations=3, movies=6, title_tokens=9, genres=4, max_genres=3
)


def model_batch(rng, n):
    """`n` random rows of the model's inputs over `VOCAB`."""
    return {
        "user_id": rng.integers(1, VOCAB.users + 1, n),
        "user_gender": rng.integers(0, 2, n),
        "raw_user_age": rng.integers(0, 10, n),
        "user_gender_X_raw_user_age": rng.integers(0, 20, n),
        "user_occupation_label": rng.integers(0, 3, n),
        "movie_id": rng.integers(1, VOCAB.movies + 1, n),
        "movie_title_vector": rng.integers(0, VOCAB.title_tokens, (n, 16)),
        "movie_genres": rng.integers(0, VOCAB.genres + 1, (n, 3)),
    }
