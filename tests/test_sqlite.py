"""The SQLite store files: WAL, and commits that do not wait for the disk."""

import pytest
import sqlalchemy

from sweep import sqlite, stores
from sweep.errors import SweepError


def synchronous(engine):
    with engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA synchronous").scalar()


def test_optuna_storage_is_wal_and_commits_with_synchronous_normal(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = stores.open_storage(url)
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert synchronous(storage.engine) == 1  # NORMAL


def test_sqlite_files_not_in_wal_keep_full_sync(tmp_path):
    # In the older journal modes NORMAL could corrupt a file on a power cut.
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    assert synchronous(engine) == 2  # FULL, SQLite's default


def test_path_of_sqlite_urls_only(tmp_path):
    assert sqlite.path_of(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite.path_of("postgresql://u@h/db") is None
    # As SQLAlchemy reads the URL: escapes decoded, the query not in the path.
    assert sqlite.path_of(f"sqlite:///{tmp_path}/a%20b.db") == tmp_path / "a b.db"
    assert sqlite.path_of(f"sqlite:///{tmp_path}/c.db?timeout=5") == tmp_path / "c.db"
    assert sqlite.path_of("sqlite://") is None


def test_another_programs_file_is_found_however_the_url_spells_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'a b.db'}"
    stores.open_tracker(stores.Stores(uri, uri, tmp_path / "artifacts"))
    for url in (f"sqlite:///{tmp_path}/a%20b.db", f"{uri}?timeout=5"):
        with pytest.raises(SweepError, match="is not an Optuna storage"):
            stores.open_storage(url)
