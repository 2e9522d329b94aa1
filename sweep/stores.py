"""Where a study's state lives: the Optuna storage and the MLflow tracking store.

Both are given as URLs (flags, then `SWEEP_STORAGE` / `MLFLOW_TRACKING_URI`,
then the SQLite files under `$SWEEP_HOME`). Opening them turns every way they
can be wrong (not a database, another program's tables, a refused password,
an unreachable server) into one line that names the store without its
password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from sweep import confirm, servers, sqlite
from sweep import storage as storage_module
from sweep.errors import SweepError
from sweep.home import Home
from sweep.retries import (
    DEFAULT_MAX_RETRIES,
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    RetryStaleTrial,
)
from sweep.storage import Storage
from sweep.tracking import Tracker, is_server


@dataclasses.dataclass(frozen=True)
class Stores:
    """Where a study's state lives.

    Attributes:
        storage: The Optuna RDB storage URL.
        tracking_uri: The MLflow tracking URI.
        artifact_root: Where MLflow keeps artifacts when the store is local.
        default_tracking_uri: The home's own tracking store (`mlflow.db`).
    """

    storage: str
    tracking_uri: str
    artifact_root: Path | None
    default_tracking_uri: str = ""

    @property
    def default_tracking(self) -> bool:
        """Whether the tracking store is the home's own (`sweep ui` finds it)."""
        return self.tracking_uri == self.default_tracking_uri


def resolve_stores(
    home: Home | Path, storage: str | None = None, tracking_uri: str | None = None
) -> Stores:
    """The stores to use: flags, then environment, then SQLite under `home`.

    The environment variables are `SWEEP_STORAGE` and `MLFLOW_TRACKING_URI`;
    the defaults are `Home.optuna_url` and `Home.mlflow_uri`.
    """
    home = Home.at(home)
    storage = storage or os.environ.get("SWEEP_STORAGE")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not storage or not tracking_uri:
        home.root.mkdir(parents=True, exist_ok=True)
    storage = storage or home.optuna_url
    tracking_uri = tracking_uri or home.mlflow_uri
    local = not tracking_uri.startswith(("http://", "https://", "databricks"))
    return Stores(
        storage, tracking_uri, home.artifacts if local else None, home.mlflow_uri
    )


def open_tracker(stores: Stores) -> Tracker:
    """The MLflow side, its store created (once, under a lock) if new.

    Raises:
        SweepError: The store cannot be used (e.g. a server refusing the
            credentials, a file that is not a database).
        servers.ServerUnavailable: The tracking server did not answer within
            the server wait.
    """
    uri = stores.tracking_uri
    try:
        check_tracking_file(uri, must_exist=False)
        sqlite.use_wal(uri)
        with sqlite.setup_lock(uri):
            # MlflowClient creates (migrates) its store as it is constructed.
            tracker = Tracker(uri, stores.artifact_root)
        tracker.check()
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as e:
        hint = (
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            if " 401 " in f" {e} " or "not authenticated" in str(e).lower()
            else "check the URI, and that the server or file is an MLflow store"
        )
        raise SweepError(
            f"cannot use the MLflow tracking store {servers.redact(uri)} "
            f"({servers.one_line(e)[:300]}); {hint}"
        ) from None
    return tracker


def check_tracking_file(uri: str, must_exist: bool = True, given: bool = True) -> None:
    """Refuses a SQLite tracking store that is missing or another program's.

    Args:
        uri: The tracking URI (servers are not checked).
        must_exist: Whether a missing file is an error (verbs that only read).
        given: Whether the URI was given (flag or environment), for the advice.

    Raises:
        SweepError: The file is missing (with `must_exist`) or holds other tables.
    """
    path = sqlite.path_of(uri)
    if path is None:
        return
    if must_exist and not path.is_file():
        advice = (
            "check --tracking-uri (or MLFLOW_TRACKING_URI)"
            if given
            else "no sweep has run with this SWEEP_HOME; launch one "
            "(sweep launch STUDY_FILE) or pass --tracking-uri"
        )
        raise SweepError(f"no MLflow store at {path}: {advice}")
    try:
        sqlite.check_owner(uri, "experiments", "an MLflow tracking store",
                           "--tracking-uri")  # fmt: skip
    except sqlite3.OperationalError as e:  # e.g. locked by a writer
        raise SweepError(
            f"cannot read the MLflow tracking store {path} ({e}); try again once "
            "the process writing it is done"
        ) from None
    except sqlite3.DatabaseError as e:
        raise SweepError(
            f"{path} is not an MLflow tracking store ({e}); check --tracking-uri"
        ) from None


def check_servers(stores: Stores) -> None:
    """Opens the stores that are servers (not files): one that fails is told now.

    Raises:
        SweepError: A server refused (e.g. a wrong password).
        servers.ServerUnavailable: A server did not answer within the wait.
    """
    if is_server(stores.tracking_uri):
        open_tracker(stores)
    if sqlite.path_of(stores.storage) is None:
        open_storage(stores.storage)


def open_storage(
    url: str, tracker: Tracker | None = None, max_retries: int = DEFAULT_MAX_RETRIES
) -> optuna.storages.RDBStorage:
    """Opens (creating if needed) the Optuna storage at `url`, with heartbeats.

    Args:
        url: The storage URL.
        tracker: Ends the MLflow runs of trials found stale.
        max_retries: How many times a stale trial is retried.

    Raises:
        SweepError: The URL is not a database URL, the database is unreachable
            or holds another program's tables.
    """
    with _storage_errors(servers.redact(url)):
        if sqlite.path_of(url) is not None:
            sqlite.check_owner(url, "studies", "an Optuna storage", "--storage")
        else:
            _check_database(url, storage_module.table_names(url))
    return _open(url, tracker, max_retries)


def _open(
    url: str, tracker: Tracker | None = None, max_retries: int = DEFAULT_MAX_RETRIES
) -> optuna.storages.RDBStorage:
    """`open_storage` once the database is known not to be another program's."""
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with _storage_errors(servers.redact(url)):
        sqlite.use_wal(url)
        with sqlite.setup_lock(url):
            for attempt in range(3):  # returns, or raises on the last
                try:
                    return Storage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=HEARTBEAT_SECONDS,
                        grace_period=GRACE_SECONDS,
                        heartbeat_stale_trial_callback=RetryStaleTrial(
                            tracker, max_retries
                        ),
                    )
                except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                    # Workers creating a new database's tables at once (on
                    # PostgreSQL, where the file lock cannot help): the loser
                    # finds them made on its next try.
                    if attempt == 2:
                        raise
                    time.sleep(1 + attempt)


def _check_database(url: str, tables: list[str]) -> None:
    """Refuses a database server's database that holds another program's tables.

    Optuna would add its own beside them (MLflow's, say).
    """
    if tables and "studies" not in tables:
        shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise SweepError(
            f"the database {servers.redact(url)!r} is not an Optuna storage: it "
            f"holds another program's tables ({shown}); expected a database of "
            "its own: check --storage (or SWEEP_STORAGE)"
        )


@contextlib.contextmanager
def _storage_errors(shown: str) -> Iterator[None]:
    """Turns the ways a storage URL can be wrong into one line naming it."""
    try:
        yield
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        # SQLAlchemy knows PostgreSQL as postgresql:// only.
        hint = (
            " (postgres:// is spelled postgresql://)"
            if shown.startswith(("postgres:", "postgres+"))
            else ""
        )
        raise SweepError(
            f"storage {shown!r} is not a database URL ({servers.one_line(e)}); "
            f"expected e.g. sqlite:///path/optuna.db or postgresql://user@host/db{hint}"
        ) from None
    except (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.DatabaseError,
        sqlite3.DatabaseError,
    ) as e:
        raise SweepError(
            f"cannot open the Optuna storage {shown!r} ({servers.one_line(e)}); "
            "check the URL, its user and password, and that the file or "
            "database is an Optuna storage"
        ) from None
    except RuntimeError as e:
        # Optuna's schema check: the database holds another program's tables
        # (e.g. MLflow's, whose alembic revision table has the same name).
        raise SweepError(
            f"the database {shown!r} is not an Optuna storage "
            f"({servers.one_line(e)}); give Optuna a database of its own"
        ) from None
    except ImportError as e:
        raise SweepError(
            f"storage {shown!r} needs a database driver that is not installed "
            f"({e}); sweep installs those of sqlite:/// and postgresql:// "
            "(psycopg 3)"
        ) from None


def open_study(stores: Stores, name: str) -> optuna.Study:
    """An existing study, to read (export, reports); never creates a store.

    Raises:
        SweepError: The store or the study does not exist.
    """
    storage = open_existing_storage(stores.storage, name)
    assert storage is not None  # a missing store with a name raises
    return optuna.load_study(study_name=name, storage=storage)


def open_existing_storage(
    url: str, name: str | None = None
) -> optuna.storages.RDBStorage | None:
    """The storage at `url` if it exists, to read; never creates a SQLite file.

    Args:
        url: The storage URL.
        name: A study that must be in it; None to accept any storage.

    Returns:
        The storage, or None when `url` is a SQLite file that does not exist
        and no study was named.

    Raises:
        SweepError: `name` is given and the store or the study does not exist.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = sqlite.path_of(url)
    if path is not None and not path.is_file():
        if name is None:
            return None
        raise SweepError(
            f"no study {name!r}: there is no Optuna storage at {path}; launch "
            "a study first (sweep launch STUDY_FILE), or pass --storage / set "
            "SWEEP_HOME to where it ran"
        )
    if path is None:
        # A database without tables is not made a storage by reading it.
        with _storage_errors(servers.redact(url)):
            tables = storage_module.table_names(url)
        if not tables and name is None:
            return None
        if not tables:
            raise SweepError(
                f"no study {name!r}: the database {servers.redact(url)!r} holds "
                "no Optuna storage; launch a study there first (sweep launch "
                "STUDY_FILE --storage URL), or check --storage"
            )
        _check_database(url, tables)
        storage = _open(url)
    else:
        storage = open_storage(url)
    if name is not None:
        check_exists(storage, url, name)
    return storage


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The names of the studies in `storage`."""
    return [s.study_name for s in storage.get_all_studies()]


def check_exists(storage: optuna.storages.BaseStorage, url: str, name: str) -> None:
    """Raises the one "no study" error unless `storage` holds study `name`.

    Raises:
        SweepError: It does not; the message lists the studies that are there.
    """
    names = [n for n in study_names(storage) if not confirm.is_companion(n)]
    if confirm.is_companion(name):
        study = confirm.confirmed_name(name)
        raise SweepError(
            f"{name!r} is the confirmation stage of study {study!r}, not a study; "
            f"`sweep resume {study}` or `sweep confirm {study}` runs it"
        )
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise SweepError(
            f"no study {name!r} in {servers.redact(url)} (studies there: {known}); "
            "start it with `sweep launch STUDY_FILE`"
        )
