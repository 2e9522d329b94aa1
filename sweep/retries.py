"""Trials whose worker is gone: found, failed and run again.

A worker can vanish mid-trial (killed, its machine lost, a server it waits
for gone past the wait) or be stopped on purpose (Ctrl-C, SIGTERM). Either
way its trial must not hold a place of the study's target for ever, and its
epochs so far should not be trained again. Optuna's heartbeat finds the
silent ones; this module adds what Optuna leaves to its user:

- `RetryStaleTrial`: Optuna's retry of a stale trial, which also ends the
  trial's MLflow run; the retry continues from the trial's checkpoint
  (`sweep.objective`).
- `fail_orphaned_trials`: a trial whose process on this host is dead is failed
  and re-queued at once, without waiting out the grace period.
- `fail_unclaimed_trials`: a trial that no worker ever named itself on (its
  creation was cut off by a database restart) is failed.
- `requeue_interrupted`: the trials a Ctrl-C or SIGTERM failed are re-queued.
- `live_workers`: who is running what, for `sweep status`.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import keys
from sweep import storage as storage_module
from sweep.tracking import Tracker

# Optuna's heartbeat: a running trial records one every HEARTBEAT seconds; one
# silent for GRACE seconds is failed (and retried) by the next worker to look.
# The heartbeat and retry APIs used here are marked experimental; their
# warnings would print on every trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 30
# A RUNNING trial that no worker has named itself on after this long was never
# taken up (twice the grace: the workers' clocks may differ a little).
UNCLAIMED_SECONDS = 2 * GRACE_SECONDS
DEFAULT_MAX_RETRIES = 3


def worker_identity() -> dict:
    """Which process runs a trial: host and pid (to spot dead local workers)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def alive(pid: int) -> bool:
    """Whether process `pid` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, which also ends the trial's MLflow run.

    The retry is queued with the same params and the intermediate values so far
    (so the pruner sees one curve), at most `max_retry` times, and with the
    user attrs that describe the trial rather than the attempt that failed
    (`keys.ATTEMPT_ATTRS` are left out: an interrupted or collapsed attempt
    must not make its retry read as one).

    Args:
        tracker: The MLflow side of the study, or None.
        max_retry: How many times one trial may be retried.
    """

    def __init__(self, tracker: Tracker | None, max_retry: int = DEFAULT_MAX_RETRIES):
        super().__init__(max_retry=max_retry, inherit_intermediate_values=True)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Closes the failed trial's run, then queues the retry."""
        run_id = trial.user_attrs.get(keys.RUN_ID_ATTR)
        reason = (
            trial.user_attrs.get(keys.FAIL_REASON_ATTR)
            or "its worker stopped (no heartbeat)"
        )
        if self.tracker is not None and run_id:
            self.tracker.kill_trial_run(run_id, reason)
        kept = copy.copy(trial)
        kept.user_attrs = {
            key: value
            for key, value in trial.user_attrs.items()
            if key not in keys.ATTEMPT_ATTRS
        }
        super().__call__(study, kept)


def fail_orphaned_trials(
    study: optuna.Study, tracker: Tracker, max_retries: int = DEFAULT_MAX_RETRIES
) -> list[int]:
    """Fails and re-queues RUNNING trials whose process (on this host) is gone.

    Returns:
        The numbers of the trials failed.
    """
    host = socket.gethostname()
    failed = []
    retry = RetryStaleTrial(tracker, max_retries)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(keys.WORKER_ATTR)
        if not worker or worker.get("host") != host or alive(worker.get("pid", -1)):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(trial.number)
        retry(study, study._storage.get_trial(trial._trial_id))  # noqa: SLF001
    return failed


def fail_unclaimed_trials(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    tracker: Tracker,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> list[int]:
    """Fails RUNNING trials that no worker took up; re-queues those with params.

    A worker names itself on its trial (`keys.WORKER_ATTR`) as soon as Optuna
    made it. A trial still without a name long after it started is one whose
    creation (or taking from the queue) was committed by a database that then
    dropped the connection before saying so: its worker, told it failed,
    went on with another. Left RUNNING it would hold a place of the target for
    ever (it has no heartbeat to go stale).

    Args:
        study: The study.
        trials: Its trials, as just read.
        tracker: Ends the MLflow runs of the trials re-queued.
        max_retries: How many times one trial may be retried.

    Returns:
        The numbers of the trials failed.
    """
    if storage_module.unsettled(study, UNCLAIMED_SECONDS):
        return []  # the worker may be waiting for the server to name itself
    now = datetime.datetime.now()
    failed = []
    retry = RetryStaleTrial(tracker, max_retries)
    for trial in trials:
        started = trial.datetime_start
        if (
            trial.state != TrialState.RUNNING
            or keys.WORKER_ATTR in trial.user_attrs
            or started is None
            or (now - started).total_seconds() < UNCLAIMED_SECONDS
        ):
            continue
        storage = study._storage  # noqa: SLF001
        try:
            storage.set_trial_user_attr(
                trial._trial_id,  # noqa: SLF001
                keys.FAIL_REASON_ATTR,
                "no worker took it up (its creation was cut off)",
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(trial.number)
        if trial.params:  # a queued configuration (baseline, retry): run it again
            retry(study, storage.get_trial(trial._trial_id))  # noqa: SLF001
    return failed


def requeue_interrupted(
    study: optuna.Study,
    tracker: Tracker,
    max_retries: int,
    trials: Sequence[FrozenTrial] | None = None,
) -> bool:
    """Re-queues trials that an interrupt (Ctrl-C, SIGTERM) failed.

    Args:
        study: The study.
        tracker: Ends the MLflow runs of the trials re-queued.
        max_retries: How many times one trial may be retried.
        trials: Its trials, if just read (else they are read here).

    Returns:
        Whether any trial was re-queued.
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryStaleTrial.retry_history(t)}
    retry = RetryStaleTrial(tracker, max_retries)
    requeued = False
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get(keys.INTERRUPTED_ATTR)
            and trial.number not in retried
            # Optuna's rule: no retry once `max_retries` retries have run.
            and len(RetryStaleTrial.retry_history(trial)) < max_retries
        ):
            retry(study, trial)
            requeued = True
    return requeued


def live_workers(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[str]:
    """The workers running `trials` now, as `host:pid (trial N)`.

    A RUNNING trial has a live worker if its heartbeat is not stale (and, on
    this host, if its process exists).
    """
    # Optuna caches an RDB storage in a wrapper; the stale query is the RDB's.
    storage = study._storage  # noqa: SLF001
    storage = getattr(storage, "_backend", storage)
    stale = getattr(storage, "_get_stale_trial_ids", lambda study_id: [])
    stale_ids = set(stale(study._study_id))  # noqa: SLF001
    return sorted(
        f"{w['host']}:{w['pid']} (trial {t.number})"
        for t in trials
        if t.state == TrialState.RUNNING
        and t._trial_id not in stale_ids  # noqa: SLF001
        and (w := t.user_attrs.get(keys.WORKER_ATTR))
        and (w["host"] != socket.gethostname() or alive(w["pid"]))
    )
