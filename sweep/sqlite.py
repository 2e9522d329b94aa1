"""The SQLite files a sweep keeps its stores in, set up for many writers.

Optuna and MLflow each open their store through SQLAlchemy. On one machine
both are SQLite files, written by every worker and read by `sweep ui` at once:

- write-ahead logging (`use_wal`, it persists in the file): readers do not
  block the writer, and writers wait on each other less;
- `synchronous=NORMAL` on every connection to a WAL file (SQLite's advice for
  WAL): a commit no longer waits for the disk (an fsync per Optuna write, a
  large share of a trial's storage time). A commit
  survives a crash, a Ctrl-C or a kill of the process, and the file is never
  corrupted; only a power cut or an OS crash may roll back the last commits;
- one process at a time creates a new store's tables (`setup_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from sweep.errors import SweepError

PREFIX = "sqlite:///"


def path_of(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases.

    Read as SQLAlchemy (so Optuna and MLflow) reads it: `%20` is a space and a
    `?query` is not part of the path.
    """
    if not url.startswith(PREFIX):
        return None
    try:
        database = make_url(url).database
    except ArgumentError:
        return Path(url[len(PREFIX) :])
    return Path(database) if database and database != ":memory:" else None


def check_owner(url: str, table: str, store: str, flag: str) -> None:
    """Refuses an existing SQLite file that holds another program's tables.

    Optuna and MLflow create their tables in whatever database they are given,
    so the other one's file would gain them; this only reads the file, before
    either library opens it.

    Args:
        url: The store's URL (other databases are not checked).
        table: A table the right program's store has (`studies`, `experiments`).
        store: What the store should be, for the message.
        flag: The flag that names the store, for the message.

    Raises:
        SweepError: The file has tables, and not that one.
        sqlite3.DatabaseError: The file is not a SQLite database.
    """
    path = path_of(url)
    if path is None or not path.is_file():
        return
    # A plain connection that only reads: a read-only one would leave a WAL
    # file's -wal and -shm behind.
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
        rows = db.execute(
            "SELECT name FROM sqlite_master"
            " WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        tables = sorted(name for (name,) in rows)
    if tables and table not in tables:
        shown = ", ".join(tables[:4]) + (", ..." if len(tables) > 4 else "")
        raise SweepError(
            f"{path} is not {store}: it holds another program's tables ({shown}); "
            f"expected a file of its own: check {flag} (or its environment "
            "variable, or SWEEP_HOME)"
        )


def use_wal(url: str) -> None:
    """Switches a SQLite database file to write-ahead logging (it persists)."""
    path = path_of(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
        db.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def setup_lock(url: str):
    """Serializes the first use of a SQLite store across processes on this host.

    Optuna and MLflow create their tables (alembic migrations) on first use;
    two workers doing it at once on a new file collide ("duplicate column").
    """
    path = path_of(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@event.listens_for(Engine, "connect")
def _commit_without_fsync(connection, record) -> None:
    """`synchronous=NORMAL` for each new SQLAlchemy connection to a WAL file.

    In the older journal modes NORMAL could corrupt a file on a power cut, so
    other SQLite files keep SQLite's default.
    """
    if not isinstance(connection, sqlite3.Connection):
        return
    (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    if mode == "wal":
        connection.execute("PRAGMA synchronous=NORMAL")
