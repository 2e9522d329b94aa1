"""Which processes work on a study now, including between and before trials.

Optuna's heartbeat covers a process only while it runs a trial; a worker that
is loading data, setting up the confirmation stage or waiting for its next
trial has none. `sweep delete` must not remove a study under such a worker (it
would die on a deleted run or experiment), so every `sweep resume` and
`confirm` process, and `launch` once its study exists, announces itself in the
study while it works on it: `announced` keeps a study system attribute of its
own, `sweep:worker:host:pid`, set to the time every `retries.HEARTBEAT_SECONDS`
from a background thread and to minus the time when the process ends. One
attribute per process, so no writer can overwrite another's entry; system
attributes, so that the user attributes people read stay the study's own.
An entry not refreshed for `retries.GRACE_SECONDS` (a process killed with -9,
a machine lost) no longer counts.

`sweep delete` marks the study before it removes anything (`mark_deleting`)
and then looks for live entries again; a process announces itself and then
looks for the mark. Each write commits on its own, so one of the two sees the
other: a worker never starts under a deletion.

The times are each host's clock, as Optuna's heartbeats are: hosts whose
clocks differ by more than a few seconds (no NTP) skew what counts as live.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Iterator

import optuna
from optuna.trial import TrialState

from sweep import keys, retries, servers
from sweep.errors import SweepError


def live(study: optuna.Study) -> list[str]:
    """The processes working on `study` now.

    An entry counts if it was refreshed within the grace period and, for a
    process of this host, if that process exists.

    Returns:
        Their names, `host:pid`, sorted.
    """
    now = time.time()
    host = retries.worker_identity()["host"]
    found = []
    for key, seen in _system_attrs(study).items():
        if not key.startswith(keys.PRESENCE_PREFIX) or not isinstance(seen, float):
            continue
        name = key.removeprefix(keys.PRESENCE_PREFIX)
        where, _, pid = name.rpartition(":")
        if seen <= 0 or now - seen > retries.GRACE_SECONDS:
            continue  # ended, or silent past the grace period
        if where == host and not retries.alive(int(pid)):
            continue
        found.append(name)
    return sorted(found)


def workers(studies: list[optuna.Study]) -> list[str]:
    """Every live process of a study, with the trial it runs.

    Args:
        studies: The study and its confirmation stage (`confirm.stages`).

    Returns:
        `host:pid (trial N)` for a process running a trial (Optuna's heartbeat,
        `retries.live_workers`), `host:pid (no trial)` for one that has the
        study open between trials; sorted.
    """
    found = trial_workers(studies)
    found += [
        f"{name} (no trial)"
        for name in live(studies[0])
        if not any(w.startswith(f"{name} (") for w in found)
    ]
    return sorted(found)


def trial_workers(studies: list[optuna.Study]) -> list[str]:
    """The live processes running a trial of these studies.

    Args:
        studies: The study and its confirmation stage (`confirm.stages`).

    Returns:
        `host:pid (trial N)` for each, from Optuna's heartbeat
        (`retries.live_workers`); sorted.
    """
    found = []
    for one in studies:
        running = one.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        found += retries.live_workers(one, running)
    return sorted(found)


@contextlib.contextmanager
def announced(study: optuna.Study) -> Iterator[None]:
    """Keeps this process listed as working on `study` until the block ends.

    Raises:
        SweepError: The study is being deleted, or has just been.
    """
    key = keys.PRESENCE_PREFIX + "{host}:{pid}".format(**retries.worker_identity())
    stop = threading.Event()
    # One write at a time, so that a refresh still in flight cannot land after
    # the entry was marked ended.
    lock = threading.Lock()

    def refresh() -> None:
        while not stop.wait(retries.HEARTBEAT_SECONDS):
            # A store that is away is written at the next beat; one away for
            # good stops the worker in its own thread, which says so.
            with lock, contextlib.suppress(Exception, servers.ServerUnavailable):
                if not stop.is_set():
                    _set(study, key, time.time())

    try:
        _set(study, key, time.time())
        since = deleting_since(study)
    except KeyError:  # Optuna's "no study with this id": deleted just now
        raise SweepError(f"study {study.study_name!r} was deleted") from None
    if since is not None:
        with contextlib.suppress(Exception, servers.ServerUnavailable):
            _set(study, key, -time.time())
        began = datetime.datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M")
        raise SweepError(
            f"study {study.study_name!r} is being deleted: a `sweep delete` of it "
            f"began at {began}; once it ends, launch the study again (a deletion "
            f"cut short is finished by `sweep delete {study.study_name}`)"
        )
    beat = threading.Thread(target=refresh, name="sweep-presence", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        # A refresh waiting out a server is not waited for: the entry expires.
        # A store that gave up raises at once; a study deleted by now has
        # nothing left to mark.
        if lock.acquire(timeout=2):
            try:
                with contextlib.suppress(Exception, servers.ServerUnavailable):
                    _set(study, key, -time.time())
            finally:
                lock.release()


def mark_deleting(study: optuna.Study, since: float | None) -> None:
    """Marks `study` as being deleted since `since` (None: clears the mark).

    A process that announces itself while the mark is set refuses the study.
    """
    study._storage.set_study_system_attr(  # noqa: SLF001
        study._study_id,  # noqa: SLF001
        keys.DELETING_ATTR,
        since,
    )


def deleting_since(study: optuna.Study) -> float | None:
    """When a `sweep delete` of `study` began, if one is under way or was cut short.

    Returns:
        That time (seconds since the epoch), or None.
    """
    return _system_attrs(study).get(keys.DELETING_ATTR)


def _system_attrs(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)  # noqa: SLF001


def _set(study: optuna.Study, key: str, value: float) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)  # noqa: SLF001
