"""Where a study's state lives: stores resolved from flags, environment and home."""

import contextlib
import sqlite3

import optuna
import pytest

from sweep import stores
from sweep.errors import SweepError
from sweep.home import Home


def test_flags_then_environment_then_the_homes_files(tmp_path, monkeypatch):
    home = Home(tmp_path / "h")
    default = stores.resolve_stores(home)
    assert (default.storage, default.tracking_uri) == (home.optuna_url, home.mlflow_uri)
    assert default.default_tracking and default.artifact_root == home.artifacts
    monkeypatch.setenv("SWEEP_STORAGE", "postgresql://u@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    from_env = stores.resolve_stores(home)
    assert from_env.storage == "postgresql://u@db/optuna"
    assert from_env.tracking_uri == "http://mlflow:5000"
    assert from_env.artifact_root is None  # a server keeps its own artifacts
    assert not from_env.default_tracking
    flags = stores.resolve_stores(home, "sqlite:///x.db", "sqlite:///y.db")
    assert (flags.storage, flags.tracking_uri) == ("sqlite:///x.db", "sqlite:///y.db")


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("notaurl", "is not a database URL"),
        ("nosuchdriver://u@h/db", "is not a database URL"),
        ("postgres://u@h/db", "(postgres:// is spelled postgresql://)"),
        ("mysql://u@127.0.0.1:9/db", "sweep installs those of sqlite:/// and"),
    ],
)
def test_a_bad_storage_url_is_one_line(url, fragment):
    with pytest.raises(SweepError, match=fragment):
        stores.open_storage(url)


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    path = tmp_path / "text.db"
    path.write_text("not sqlite " * 100)
    with pytest.raises(SweepError, match="cannot open the Optuna storage"):
        stores.open_storage(f"sqlite:///{path}")
    assert path.read_text().startswith("not sqlite")  # left as it was


def tables(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master")}


def test_each_store_refuses_the_others_file_and_leaves_it_as_it_was(tmp_path):
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    optuna_uri = f"sqlite:///{tmp_path / 'optuna.db'}"
    stores.open_tracker(stores.Stores(mlflow_uri, mlflow_uri, tmp_path / "art"))
    stores.open_storage(optuna_uri)
    before = {name: tables(tmp_path / name) for name in ("mlflow.db", "optuna.db")}
    assert "experiments" in before["mlflow.db"] and "studies" in before["optuna.db"]
    with pytest.raises(SweepError, match="mlflow.db is not an Optuna storage"):
        stores.open_storage(mlflow_uri)
    with pytest.raises(SweepError, match="optuna.db is not an MLflow tracking store"):
        stores.open_tracker(stores.Stores(optuna_uri, optuna_uri, tmp_path / "art"))
    # Neither library reached the other's file.
    after = {name: tables(tmp_path / name) for name in ("mlflow.db", "optuna.db")}
    assert after == before


def test_open_study_never_creates_a_store_and_names_the_known_studies(tmp_path):
    where = stores.resolve_stores(Home(tmp_path / "h"))
    with pytest.raises(SweepError, match="there is no Optuna storage at"):
        stores.open_study(where, "s")
    assert not (tmp_path / "h" / "optuna.db").exists()
    optuna.create_study(study_name="s", storage=stores.open_storage(where.storage))
    assert stores.open_study(where, "s").study_name == "s"
    with pytest.raises(SweepError, match=r"no study 't' .*studies there: s\)"):
        stores.open_study(where, "t")
