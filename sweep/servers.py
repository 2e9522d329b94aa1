"""Riding out restarts of the servers a sweep's stores live on.

Past one machine, the Optuna storage is a PostgreSQL server and the MLflow store
a tracking server; either may restart in the middle of a sweep (an upgrade, a
crash, its host rebooting). A call that fails for a reason that passes
(connection refused, reset or terminated, a commit cut off, HTTP 5xx, a
timeout) is made again, with backoff, for up to the server wait (`--server-wait`,
default five minutes): a trial waits for the server and loses nothing. The
first failure of an outage and the server's return are one line each on stderr.

A server still away after the wait stops the worker the way Ctrl-C does
(`ServerUnavailable`). Nothing is written on the way out to the server that is
gone: its trial is left RUNNING with its checkpoint on disk, and is failed and
re-queued (its MLflow run set KILLED) once the server is back, by a restarted
worker on this host at once, or by any worker when its heartbeat is stale.

SQLite files are not servers: their errors are never waited for here (a busy
file is waited for by SQLite's own timeout).
"""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sweep import interrupts

T = TypeVar("T")

DEFAULT_WAIT_SECONDS = 300.0
# The exit code of a worker stopped by a server that stayed away: EX_TEMPFAIL,
# "try again later" (a supervisor may simply restart it).
EXIT_CODE = 75
# Backoff between attempts: doubling from the first, capped, with jitter so
# that workers that lost the server together do not return in lockstep.
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0

# PostgreSQL failures that waiting does not cure: a wrong password, user or
# database name is the user's to fix, and is reported at once.
_PERMANENT = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|"
    r"no password supplied|permission denied|invalid dsn|invalid connection option|"
    r"does not support SSL",
    re.IGNORECASE,
)
# SQLSTATE classes of a lost or refused connection: 08 connection exception,
# 57P0x the server shutting down, crashed, or starting up; 53300 too many
# connections.
_TRANSIENT_SQLSTATE = re.compile(r"08...|57P0[123]|53300")
_HTTP_STATUS = re.compile(r"error code (\d{3}) != 200")
# The reason stops at a quote, a parenthesis or a line's end: SQLAlchemy adds
# "(Background on this error at: ...)" on a line of its own.
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\n]+)")


class ServerUnavailable(BaseException):  # noqa: N818 (a stop, like KeyboardInterrupt)
    """A server stayed away longer than the server wait: the worker stops.

    A BaseException, like KeyboardInterrupt and for the same reason: nothing on
    the way out may take it for one trial's failure (Optuna fails a trial on
    any Exception, and recording that needs the server that is gone).

    Attributes:
        server: The server, as `Server.name` describes it.
        since: When it stopped answering (seconds since the epoch).
        reason: The last error, on one line.
        waited: Seconds from the first failure to giving up.
    """

    def __init__(self, server: str, since: float, reason: str, waited: float):
        self.server = server
        self.since = since
        self.reason = reason
        self.waited = waited
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.server} has not answered since "
            f"{time.strftime('%H:%M:%S', time.localtime(self.since))} "
            f"(waited {_duration(self.waited)}, --server-wait): {self.reason}"
        )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"


def one_line(error: BaseException) -> str:
    """An error's message on one line, from its most telling cause.

    Optuna wraps a database error in a generic "exception during the commit",
    SQLAlchemy wraps the driver's; the driver's says what happened (e.g.
    "connection refused"), and spans several lines.
    """
    told = error
    for e in _chain(error):
        # requests and urllib3 bury the reason ("[Errno 111] Connection
        # refused") in the repr of a chain of their own errors.
        errno = _ERRNO.search(str(e))
        if errno:
            return errno.group(1).strip()
        if type(e).__module__.startswith(("psycopg", "sqlite3", "requests")):
            told = e
            break
        if getattr(e, "orig", None) is not None:
            told = e.orig
            break
    text = " ".join(str(told).split())
    return text or type(told).__name__


def _chain(error: BaseException):
    """The error and its causes (explicit or implicit), outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether a store's error is one that waiting for its server may cure.

    Connection failures of PostgreSQL (through SQLAlchemy, or Optuna's
    `StorageInternalError` around it) and of an MLflow tracking server (a
    refused or cut connection, a timeout, HTTP 408, 429 or 5xx). Never an
    error of a SQLite file, a wrong password or database name, or a bad request.
    """
    import requests

    for e in _chain(error):
        module = type(e).__module__
        if module.startswith("psycopg"):
            sqlstate = getattr(e, "sqlstate", None)
            if sqlstate:
                return bool(_TRANSIENT_SQLSTATE.fullmatch(sqlstate))
            return type(e).__name__ in (
                "OperationalError",
                "InterfaceError",
            ) and not _PERMANENT.search(str(e))
        if module.startswith("sqlite3"):
            return False
        if isinstance(e, requests.exceptions.HTTPError):
            status = getattr(e.response, "status_code", None)
            return status is not None and (status >= 500 or status in (408, 429))
        if isinstance(e, requests.exceptions.SSLError):
            # https to a plain-http server, or a certificate it does not
            # trust: a URL or a setup to fix, not a restart.
            return False
        if isinstance(
            e,
            (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.RetryError,
                requests.exceptions.ChunkedEncodingError,
            ),
        ):
            return True
        if type(e).__name__ == "RestException":
            # An answer of the server itself: its own 5xx (e.g. its database
            # restarting under it), or a rate limit.
            return e.get_http_status_code() >= 500 or e.error_code in (
                "TEMPORARILY_UNAVAILABLE",
                "REQUEST_LIMIT_EXCEEDED",
            )
        status = _HTTP_STATUS.search(str(e))
        if status and type(e).__name__ == "MlflowException":
            code = int(status.group(1))
            return code >= 500 or code in (408, 429)
    return False


def is_refused_sign_in(error: BaseException) -> bool:
    """Whether an MLflow server refused the request's user (HTTP 401)."""
    status = _HTTP_STATUS.search(str(error))
    return bool(status) and status.group(1) == "401"


class Server:
    """One server a worker talks to, and the state of its current outage.

    A server that accepted this worker's user once and then refuses it (HTTP
    401) is taken to be unable to check it, as MLflow's basic-auth app is while
    its own database restarts, and is waited for like any outage; a password
    changed on the server meanwhile stops the worker after the wait.

    Args:
        name: How messages name it, e.g. "the Optuna storage at postgresql://...".
        wait: Seconds to keep trying before `ServerUnavailable`.
    """

    def __init__(self, name: str, wait: float | None = None):
        self.name = name
        self.wait = wait_seconds() if wait is None else wait
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._back_at: float | None = None
        self._gave_up: ServerUnavailable | None = None
        self._signed_in = False

    def call(self, function: Callable[..., T], *args, **kwargs) -> T:
        """Calls `function`, again with backoff while its error is transient.

        Raises:
            ServerUnavailable: The server did not answer within the wait (at
                once if it already did not, earlier in this process).
        """
        delay = FIRST_DELAY_SECONDS
        while True:
            if self._gave_up is not None:
                raise self._gave_up
            try:
                result = function(*args, **kwargs)
            except Exception as e:
                if not (is_transient(e) or (self._signed_in and is_refused_sign_in(e))):
                    raise
                since = self.failed(e)
                down_for = time.time() - since
                if down_for >= self.wait or interrupts.requested():
                    # A stop already asked for must not wait for the server.
                    self._gave_up = ServerUnavailable(
                        self.name, since, one_line(e), down_for
                    )
                    raise self._gave_up from None
                time.sleep(min(delay, self.wait - down_for) * random.uniform(0.5, 1))
                delay = min(2 * delay, MAX_DELAY_SECONDS)
                continue
            self.answered()
            return result

    def failed(self, error: BaseException) -> float:
        """Records a failed call; the first of an outage is said on stderr.

        Returns:
            When the outage began (seconds since the epoch).
        """
        with self._lock:
            if self._down_since is not None:
                return self._down_since
            since = self._down_since = time.time()
        print(
            f"sweep: {self.name} stopped answering ({one_line(error)}); "
            f"retrying for up to {_duration(self.wait)} (--server-wait)",
            file=sys.stderr,
            flush=True,
        )
        return since

    def answered(self) -> None:
        """Records a call that went through; ends an outage, saying so."""
        self._signed_in = True
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
            self._back_at = time.monotonic()
        if since is not None:
            print(
                f"sweep: {self.name} is back after {_duration(time.time() - since)}",
                file=sys.stderr,
                flush=True,
            )

    def unsettled(self, seconds: float) -> bool:
        """Whether the server is away, or came back less than `seconds` ago.

        While it is, the other workers' heartbeats may not have caught up yet.
        """
        if self._down_since is not None:
            return True
        return self._back_at is not None and time.monotonic() - self._back_at < seconds


_wait_seconds = DEFAULT_WAIT_SECONDS


def set_wait(seconds: float) -> None:
    """Sets the server wait of the servers made from now on (`--server-wait`)."""
    global _wait_seconds
    _wait_seconds = seconds


def wait_seconds() -> float:
    """The server wait in force."""
    return _wait_seconds


def parse_duration(text: str) -> float:
    """Seconds of a duration such as `90`, `30s`, `5m` or `2h`.

    Raises:
        ValueError: The text is not such a duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def redact(url: str) -> str:
    """A store URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
