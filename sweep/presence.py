"""Which processes work on a study now, including between and before trials.

Optuna's heartbeat covers a process only while it runs a trial; a worker that
is loading data, setting up the confirmation stage or waiting for its next
trial has none. `sweep delete` must not remove a study under such a worker (it
would die on a deleted run or experiment), so every `sweep launch`, `resume`
and `confirm` process announces itself in the study while it works on it:
`announced` keeps one study user attribute, `{"host:pid": seconds}`, where each
process refreshes its own entry every `retries.HEARTBEAT_SECONDS` from a
background thread and removes it when it ends. An entry not refreshed for
`retries.GRACE_SECONDS` (a process killed with -9, a machine lost) no longer
counts, and the next writer drops it.

Every writer rewrites the whole attribute, so two processes refreshing at once
can drop each other's entry; the loser puts it back at its next refresh, well
within the grace period.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import optuna

from sweep import keys, retries, servers


def live(study: optuna.Study) -> list[str]:
    """The processes working on `study` now, as `host:pid`.

    An entry counts if it was refreshed within the grace period and, for a
    process of this host, if that process exists.
    """
    now = time.time()
    host = retries.worker_identity()["host"]
    found = []
    for key, seen in _entries(study).items():
        where, _, pid = key.rpartition(":")
        if now - seen > retries.GRACE_SECONDS:
            continue
        if where == host and not retries.alive(int(pid)):
            continue
        found.append(key)
    return sorted(found)


@contextlib.contextmanager
def announced(study: optuna.Study) -> Iterator[None]:
    """Keeps this process listed as working on `study` until the block ends."""
    me = "{host}:{pid}".format(**retries.worker_identity())
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(retries.HEARTBEAT_SECONDS):
            # A store that is away is written at the next beat; one away for
            # good stops the worker in its own thread, which says so.
            with contextlib.suppress(Exception, servers.ServerUnavailable):
                _write(study, me, time.time())

    _write(study, me, time.time())
    beat = threading.Thread(target=refresh, name="sweep-presence", daemon=True)
    beat.start()
    store_away = False
    try:
        yield
    except servers.ServerUnavailable:
        store_away = True  # its entry expires; writing would wait out the server
        raise
    finally:
        stop.set()
        beat.join(timeout=1)
        if not store_away:
            # A study deleted by now has nothing left to clean.
            with contextlib.suppress(Exception, servers.ServerUnavailable):
                _write(study, me, None)


def _entries(study: optuna.Study) -> dict[str, float]:
    attrs = study._storage.get_study_user_attrs(study._study_id)  # noqa: SLF001
    return dict(attrs.get(keys.PRESENCE_ATTR) or {})


def _write(study: optuna.Study, me: str, seen: float | None) -> None:
    """Sets (or with None removes) this process's entry; drops expired ones."""
    now = time.time()
    entries = {
        key: when
        for key, when in _entries(study).items()
        if key != me and now - when <= retries.GRACE_SECONDS
    }
    if seen is not None:
        entries[me] = seen
    study.set_user_attr(keys.PRESENCE_ATTR, entries)
