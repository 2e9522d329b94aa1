"""Which processes work on a study now, including between and before trials.

Optuna's heartbeat covers a process only while it runs a trial; a worker that
is loading data, setting up the confirmation stage or waiting for its next
trial has none. `sweep delete` must not remove a study under such a worker (it
would die on a deleted run or experiment), so every `sweep launch`, `resume`
and `confirm` process announces itself in the study while it works on it:
`announced` keeps one study user attribute, `{"host:pid": seconds}`, where each
process refreshes its own entry every `retries.HEARTBEAT_SECONDS` from a
background thread and marks it ended (a negative time) when it ends. An entry
not refreshed for `retries.GRACE_SECONDS` (a process killed with -9, a machine
lost) no longer counts, and the next writer drops it.

`sweep delete` marks the study before it removes anything (`mark_deleting`);
a process that announces itself afterwards sees the mark and stops with one
line, and the deletion looks for live entries once more after marking.

Every writer rewrites the whole attribute, so two processes writing at once
can drop each other's entry; the loser puts it back at its next refresh. That
is why the deletion, when anything worked on the study lately, waits one
refresh (`settle`) before it looks again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import optuna

from sweep import keys, retries, servers
from sweep.errors import SweepError


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
        if seen <= 0 or now - seen > retries.GRACE_SECONDS:
            continue  # ended, or silent past the grace period
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

    try:
        _write(study, me, time.time())
    except KeyError:  # Optuna's "no study with this id": deleted just now
        raise SweepError(f"study {study.study_name!r} was deleted") from None
    # `sweep delete` marks the study, then looks for entries: one of the two
    # sides sees the other, so a worker never starts under a deletion.
    since = deleting_since(study)
    if since is not None:
        with contextlib.suppress(Exception, servers.ServerUnavailable):
            _write(study, me, None)
        when = time.strftime("%H:%M:%S", time.localtime(since))
        raise SweepError(
            f"study {study.study_name!r} is being deleted (since {when}); launch "
            "it again once it is gone (a deletion cut short is finished by "
            f"`sweep delete {study.study_name}`)"
        )
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


def mark_deleting(study: optuna.Study, deleting: bool) -> None:
    """Marks `study` as being deleted (new workers refuse it), or clears the mark."""
    study.set_user_attr(keys.DELETING_ATTR, time.time() if deleting else None)


def deleting_since(study: optuna.Study) -> float | None:
    """When a `sweep delete` of `study` began, if one is under way or was cut short."""
    attrs = study._storage.get_study_user_attrs(study._study_id)  # noqa: SLF001
    return attrs.get(keys.DELETING_ATTR)


def settle(study: optuna.Study) -> None:
    """Waits out one refresh if any process worked on `study` lately.

    An entry lost to a concurrent rewrite is back after its process's next
    refresh; with no entry, live or ended, within the grace period, there is
    no such process and nothing to wait for.
    """
    if _entries(study):
        time.sleep(retries.HEARTBEAT_SECONDS + 1)


def _entries(study: optuna.Study) -> dict[str, float]:
    attrs = study._storage.get_study_user_attrs(study._study_id)  # noqa: SLF001
    return dict(attrs.get(keys.PRESENCE_ATTR) or {})


def _write(study: optuna.Study, me: str, seen: float | None) -> None:
    """Sets this process's entry (None: ended); drops entries past the grace.

    An ended process stays as minus the time it ended until its grace has
    passed, so that `settle` knows the study was worked on lately.
    """
    now = time.time()
    entries = {
        key: when
        for key, when in _entries(study).items()
        if key != me and now - abs(when) <= retries.GRACE_SECONDS
    }
    entries[me] = seen if seen is not None else -now
    study.set_user_attr(keys.PRESENCE_ATTR, entries)
