"""Optuna's RDB storage, made to ride out a restart of its database server.

Every call Optuna makes into the storage (the trial's params, reports, state,
the sampler's and pruner's reads) goes through `Storage`, which waits for a
PostgreSQL server that is restarting instead of failing the trial
(`sweep.servers`). Two calls need more than a retry:

- The heartbeat, sent by a thread of Optuna's: an exception would end the
  thread, and the worker's live trial would then look dead to the others. A
  failed beat is recorded (said once per outage) and the next one tried on
  time.
- Finding stale trials: after an outage every worker's last beat is old. A
  worker that saw the server go away does not take the others' trials for dead
  until they have had a grace period to beat again.
"""

from __future__ import annotations

import functools

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep import servers, sqlite


def _waits(method):
    """`method`, retried while its server is away (see `servers.Server.call`)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self.server.call(method, self, *args, **kwargs)

    return call


def server_name(url: str) -> str:
    """How messages name the Optuna storage at `url` (without its password)."""
    return f"the Optuna storage {servers.redact(url)}"


def table_names(url: str) -> list[str]:
    """The tables of the database at `url` (not a SQLite one), read only.

    Waits for a server that is restarting, as `Storage` does.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    def read() -> list[str]:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        try:
            return sqlalchemy.inspect(engine).get_table_names()
        finally:
            engine.dispose()

    return servers.Server(server_name(url)).call(read)


class Storage(RDBStorage):
    """`RDBStorage` whose calls wait for a database server that is restarting.

    Args:
        url: The database URL.
        **kwargs: As for `RDBStorage`.
    """

    def __init__(self, url: str, **kwargs):
        # SQLite is a file, not a server: nothing to wait for.
        wait = 0.0 if sqlite.path_of(url) is not None else None
        self.server = servers.Server(server_name(url), wait)
        # Opening connects (and creates the tables of a new database).
        self.server.call(super().__init__, url, **kwargs)

    create_new_study = _waits(RDBStorage.create_new_study)
    delete_study = _waits(RDBStorage.delete_study)
    set_study_user_attr = _waits(RDBStorage.set_study_user_attr)
    set_study_system_attr = _waits(RDBStorage.set_study_system_attr)
    get_study_id_from_name = _waits(RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _waits(RDBStorage.get_study_name_from_id)
    get_study_directions = _waits(RDBStorage.get_study_directions)
    get_study_user_attrs = _waits(RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _waits(RDBStorage.get_study_system_attrs)
    get_trial_user_attrs = _waits(RDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _waits(RDBStorage.get_trial_system_attrs)
    get_all_studies = _waits(RDBStorage.get_all_studies)
    create_new_trial = _waits(RDBStorage.create_new_trial)
    set_trial_param = _waits(RDBStorage.set_trial_param)
    get_trial_param = _waits(RDBStorage.get_trial_param)
    set_trial_intermediate_value = _waits(RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _waits(RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _waits(RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _waits(
        RDBStorage.get_trial_id_from_study_id_trial_number
    )
    get_trial = _waits(RDBStorage.get_trial)
    get_all_trials = _waits(RDBStorage.get_all_trials)
    get_best_trial = _waits(RDBStorage.get_best_trial)
    # Optuna's cache in front of the storage (`_CachedStorage`) calls these.
    _create_new_trial = _waits(RDBStorage._create_new_trial)
    _set_trial_param = _waits(RDBStorage._set_trial_param)
    _get_trials = _waits(RDBStorage._get_trials)
    _get_best_trial_id = _waits(RDBStorage._get_best_trial_id)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values=None
    ) -> bool:
        """Sets a trial's state; a commit cut off by a restart is not done twice.

        If the connection broke after the server committed the first attempt,
        the next finds the trial finished: that is success, not another
        worker's write.
        """
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempts > 1 and state.is_finished():
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and stored.values == values:
                        return True
                raise

        return self.server.call(attempt)

    def record_heartbeat(self, trial_id: int) -> None:
        """Records a beat; never raises (it runs in Optuna's heartbeat thread)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:  # noqa: BLE001 (the thread must live on)
            self.server.failed(e)
        else:
            self.server.answered()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Every beat was missed while the server was away: give the other
        # workers a grace period (and one beat) to show they are alive.
        settle = (self.grace_period or 0) + (self.heartbeat_interval or 0)
        if self.server.unsettled(settle):
            return []
        return self.server.call(super()._get_stale_trial_ids, study_id)


def unsettled(study: optuna.Study, seconds: float) -> bool:
    """Whether the study's database server is away or came back < `seconds` ago.

    Optuna puts its cache (`_CachedStorage`) in front of the storage a study
    is given; the `Storage` is behind it.
    """
    backend = getattr(study._storage, "_backend", study._storage)  # noqa: SLF001
    server = getattr(backend, "server", None)
    return server is not None and server.unsettled(seconds)
