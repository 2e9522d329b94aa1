"""Optuna studies: where they live, how they are created, and the trial loop.

A study's trials are Optuna trials in an RDB storage (SQLite under
`$SWEEP_HOME` by default, PostgreSQL when shared); each trial trains one
configuration, reports every validation for pruning, and logs its curves to a
nested MLflow run. The objective is the best validation top-100 accuracy of the
trial (the weights of that epoch are the trial's model).

What a failure means is explicit in the types: `TrialFailed` (a diverged loss,
or any unexpected error inside one trial) ends that trial as FAIL and the sweep
goes on; a `SweepError` (the user's mistake, true for every trial) stops it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from sweep import config as config_module
from sweep import interrupts, servers, space, sqlite, train
from sweep import storage as storage_module
from sweep.backend import keras
from sweep.data import Features
from sweep.errors import SweepError, TrialFailed
from sweep.plotter import Plotter
from sweep.report import StudyReport
from sweep.storage import Storage
from sweep.tracking import Tracker, is_server

STUDY_FILE_ATTR = "sweep.study_file"
TARGET_ATTR = "n_trials"
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
WORKER_ATTR = "sweep.worker"
INTERRUPTED_ATTR = "sweep.interrupted"
SURPLUS_ATTR = "sweep.surplus"
RETRY_TAG = "sweep.retry_of"
CHECKPOINT_ARTIFACT = "checkpoint"
# A complete trial's model: its best epoch's weights and what they need to load.
BEST_ARTIFACT = "best_model"
BEST_WEIGHTS_FILE = "model.weights.h5"
BEST_INFO_FILE = "best.json"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A space where every trial fails (e.g. every rate diverges) would otherwise
# loop forever; this many failures in a row stop the sweep.
MAX_CONSECUTIVE_FAILURES = 10
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


def _alive(pid: int) -> bool:
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
    (so the pruner sees one curve), at most `max_retry` times.

    Args:
        tracker: The MLflow side of the study, or None.
        max_retry: How many times one trial may be retried.
    """

    def __init__(self, tracker: Tracker | None, max_retry: int = DEFAULT_MAX_RETRIES):
        super().__init__(max_retry=max_retry, inherit_intermediate_values=True)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Closes the failed trial's run, then queues the retry."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        reason = (
            trial.user_attrs.get("fail_reason") or "its worker stopped (no heartbeat)"
        )
        if self.tracker is not None and run_id:
            self.tracker.kill_trial_run(run_id, reason)
        super().__call__(study, trial)


@dataclasses.dataclass(frozen=True)
class Stores:
    """Where a study's state lives.

    Attributes:
        storage: The Optuna RDB storage URL.
        tracking_uri: The MLflow tracking URI.
        artifact_root: Where MLflow keeps artifacts when the store is local.
    """

    storage: str
    tracking_uri: str
    artifact_root: Path | None


def resolve_stores(
    home: Path, storage: str | None = None, tracking_uri: str | None = None
) -> Stores:
    """The stores to use: flags, then environment, then SQLite under `home`.

    The environment variables are `SWEEP_STORAGE` and `MLFLOW_TRACKING_URI`. The
    defaults are two files, `optuna.db` and `mlflow.db`: both tools keep their own
    alembic version table, so they cannot share one.
    """
    home = Path(home).resolve()
    storage = storage or os.environ.get("SWEEP_STORAGE")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not storage or not tracking_uri:
        home.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{home / 'optuna.db'}"
    tracking_uri = tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
    local = not tracking_uri.startswith(("http://", "https://", "databricks"))
    return Stores(storage, tracking_uri, home / "mlartifacts" if local else None)


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
        SweepError: The URL is not a database URL or the database is unreachable.
    """
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    shown = servers.redact(url)
    try:
        sqlite.use_wal(url)
        with sqlite.setup_lock(url):
            for attempt in range(3):
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
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise SweepError(
            f"storage {shown!r} is not a database URL ({servers.one_line(e)}); "
            "expected e.g. sqlite:///path/optuna.db or postgresql://user@host/db"
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
            f"storage {shown!r} needs a database driver that is not installed ({e})"
        ) from None


def make_sampler(
    settings: config_module.StudySettings, offset: int = 0, worker: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed.

    Args:
        settings: The `[study]` table.
        offset: 0 for a new study; on resume, past the trials run so far.
        worker: The worker's index, so parallel workers propose apart.
    """
    seed = settings.seed
    if offset or worker:
        seed = int(np.random.SeedSequence([seed, offset, worker]).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(
    settings: config_module.StudySettings, training: config_module.TrainingSettings
) -> optuna.pruners.BasePruner:
    """The study's pruner; steps are epochs, reported at each validation."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=training.validation_freq, max_resource=training.epochs
        )
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def finished_count(study: optuna.Study) -> int:
    """Complete and pruned trials: what `n_trials` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_accuracy(trial: FrozenTrial) -> float | None:
    """A trial's best validation top-100 accuracy (pruned ones included)."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return max(values) if values else None


class Objective:
    """Trains the configuration a trial proposes; logs it to MLflow.

    A retried trial (re-queued after its worker died or was interrupted)
    continues from the last checkpoint of its previous attempt.

    Args:
        study: The study file.
        features: The preprocessed data.
        tracker: The MLflow side of the study.
        experiment_id: The study's MLflow experiment.
        parent_run_id: The study's MLflow run.
        checkpoints: The folder for this study's trial checkpoints.
    """

    def __init__(
        self,
        study: config_module.Study,
        features: Features,
        tracker: Tracker,
        experiment_id: str,
        parent_run_id: str,
        checkpoints: Path,
    ):
        self.study = study
        self.features = features
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.checkpoints = checkpoints
        self.target: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        """Runs one trial; returns its best validation top-100 accuracy."""
        try:
            interrupts.check()
        except KeyboardInterrupt:
            # A stop dropped between two trials: this one has not started, and
            # is re-queued like any trial a stop cut short (`requeue_interrupted`).
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise
        # First of all: a RUNNING trial without it was never taken up by a
        # worker (`fail_unclaimed_trials`).
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        config = space.suggest(trial, self.study)
        # One read of the study serves both: a live Trial no longer exposes its
        # system attrs (where Optuna keeps the retry history); its frozen copy does.
        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        self._check_needed(trial, trials)
        retry_of = RetryStaleTrial.retried_trial_number(frozen)
        tags = {} if retry_of is None else {RETRY_TAG: str(retry_of)}
        previous_run = (
            trial.user_attrs.get(RUN_ID_ATTR) if retry_of is not None else None
        )
        run = self.tracker.start_trial(
            self.experiment_id,
            self.parent_run_id,
            self.study.study.name,
            trial.number,
            config.params(),
            tags,
        )
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        resumed = (
            self._checkpoint_of(frozen, previous_run) if retry_of is not None else None
        )
        if resumed is not None:
            run.set_tag("sweep.resumed_from_epoch", resumed.epoch)
            trial.set_user_attr("resumed_from_epoch", resumed.epoch)
        best: list[train.Validation] = []  # the best validation so far
        last: list[int] = []  # the last validated epoch
        if resumed is not None and resumed.validations:
            best[:] = [max(resumed.validations, key=lambda v: v.val_top100_accuracy)]
            last[:] = [resumed.epoch]
        checkpoint_path = self.checkpoints / f"trial-{trial.number}.npz"
        best_folder = self.checkpoints / f"trial-{trial.number}-best"

        def on_epoch(epoch: int, loss: float) -> None:
            run.log_metric("loss", loss, epoch)

        def on_validation(v: train.Validation) -> None:
            run.log_metric("val_loss", v.val_loss, v.epoch)
            run.log_metric("val_top100_accuracy", v.val_top100_accuracy, v.epoch)
            if not best or v.val_top100_accuracy > best[0].val_top100_accuracy:
                best[:] = [v]
            last[:] = [v.epoch]
            # Optuna's write first: MLflow's async write of the batch would
            # compete with it for the interpreter, and the pruner waits on it.
            trial.report(v.val_top100_accuracy, v.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {v.epoch}")
            run.flush(wait=False)

        def on_checkpoint(checkpoint: train.Checkpoint) -> None:
            # Saved here first (atomically), so a retry on this machine resumes
            # from it even if its upload has not finished.
            checkpoint.save(checkpoint_path)
            # Also in the run's artifacts: a retry on another machine finds it.
            run.log_artifact(checkpoint_path, CHECKPOINT_ARTIFACT, wait=False)

        def close(state: str, status: str | None = None) -> None:
            if best:
                v = best[0]
                run.log_metric(
                    "best_val_top100_accuracy", v.val_top100_accuracy, v.epoch
                )
                run.log_metric("best_epoch", v.epoch, v.epoch)
                trial.set_user_attr("best_epoch", v.epoch)
            run.log_metric("tracking_seconds", run.seconds, 0)
            try:
                run.finish(state, status)
            finally:
                shutil.rmtree(best_folder, ignore_errors=True)
            trial.set_user_attr("tracking_seconds", round(run.seconds, 4))
            if status != "KILLED":
                # Only an interrupted trial is retried and needs its checkpoint.
                checkpoint_path.unlink(missing_ok=True)

        keras.backend.clear_session()
        try:
            result = train.train(
                config,
                self.features,
                on_validation=on_validation,
                on_epoch=on_epoch,
                on_checkpoint=on_checkpoint,
                resume_from=resumed,
            )
            self._keep_best(run, config, result, best_folder)
            # Inside the try: an upload that keeps failing at the run's end
            # fails this trial (and ends its run FAILED), not the sweep.
            close("COMPLETE")
        except optuna.TrialPruned:
            run.set_tag("sweep.pruned_at_epoch", last[0])
            trial.set_user_attr("pruned_at_epoch", last[0])
            close("PRUNED")
            raise
        except SweepError:
            close("FAIL")
            raise
        except TrialFailed as e:
            self._fail(trial, run, str(e), close)
            raise
        except Exception as e:  # anything else inside one trial fails only it
            reason = f"{type(e).__name__}: {e}"
            self._fail(trial, run, reason, close)
            raise TrialFailed(reason) from e
        except servers.ServerUnavailable:
            # Nothing is written to a server that is gone: the trial stays
            # RUNNING, with its checkpoint, and is re-queued (its run KILLED)
            # once the server is back, as a dead worker's trial is.
            raise
        except BaseException as e:
            # Ctrl-C, SIGTERM: Optuna fails the trial; `run_trials` re-queues it.
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            trial.set_user_attr("fail_reason", f"interrupted ({type(e).__name__})")
            run.set_tag("sweep.fail_reason", "interrupted")
            close("FAIL", "KILLED")
            raise
        return result.best.val_top100_accuracy

    def _keep_best(
        self, run, config: train.TrainConfig, result: train.TrainResult, folder: Path
    ) -> None:
        """Logs the best epoch's weights (and how to rebuild their model).

        Uploaded in the background from `folder`, which stays until the run ends.
        """
        folder.mkdir(parents=True, exist_ok=True)
        result.save_best(folder / BEST_WEIGHTS_FILE)
        info = {
            "config": dataclasses.asdict(config),
            "best_epoch": result.best.epoch,
            "best_val_top100_accuracy": result.best.val_top100_accuracy,
            "data_source": self.features.source,
            "data_checksum": self.features.checksum,
        }
        (folder / BEST_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        run.log_artifacts(folder, BEST_ARTIFACT, wait=False)

    def _check_needed(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> None:
        """Drops a trial started when earlier ones already make up the target."""
        if self.target is None:
            return
        ahead = sum(
            1
            for t in trials
            if t.number < trial.number and t.state in (*FINISHED, TrialState.RUNNING)
        )
        if ahead >= self.target:
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.set_user_attr("fail_reason", "not needed: the target was reached")
            raise TrialFailed("not needed: other workers reached the target")

    def _checkpoint_of(
        self, trial: FrozenTrial, previous_run: str | None
    ) -> train.Checkpoint | None:
        """The last checkpoint of the attempts this trial retries, if any."""
        history = RetryStaleTrial.retry_history(trial)
        for number in reversed(history):
            path = self.checkpoints / f"trial-{number}.npz"
            if path.is_file():
                return train.Checkpoint.load(path)
        # Not on this machine: the previous attempt's run holds a copy.
        if previous_run is not None:
            path = self.tracker.download_checkpoint(
                previous_run, CHECKPOINT_ARTIFACT, self.checkpoints
            )
            if path is not None:
                return train.Checkpoint.load(path)
        return None

    @staticmethod
    def _fail(trial, run, reason: str, close: Callable[[str], None]) -> None:
        trial.set_user_attr("fail_reason", reason)
        run.set_tag("sweep.fail_reason", reason[:5000])
        close("FAIL")


class Progress:
    """A progress bar over the study's finished trials, and one line per trial.

    Args:
        target: Finished trials the study aims for.
        done: Finished trials before this run.
        enabled: Show the bar and the per-trial lines.
    """

    def __init__(self, target: int, done: int, enabled: bool = True):
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal; lines still print.
        self.bar = tqdm(
            total=target,
            initial=done,
            unit="trial",
            disable=None if enabled else True,
            dynamic_ncols=True,
        )
        self.enabled = enabled
        self.failures_in_a_row = 0

    def write(self, line: str) -> None:
        """Prints a line above the bar."""
        if self.enabled:
            self.bar.write(line)

    def count(self, done: int, best: float | None) -> None:
        """Shows the study's finished trials and best value (every worker's)."""
        self.bar.n = min(done, self.bar.total)
        if best is not None:
            self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: prints the trial's outcome (`count` moves the bar)."""
        accuracy = best_accuracy(trial)
        line = f"trial {trial.number:4d} {trial.state.name:8s} {_params_text(trial)}"
        if trial.user_attrs.get(SURPLUS_ATTR):
            return  # a race lost to another worker; nothing ran
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            line += f"  failed: {trial.user_attrs.get('fail_reason', 'unknown')}"
        else:
            self.failures_in_a_row = 0
            epoch = trial.user_attrs.get("best_epoch")
            line += f"  val top-100 {accuracy:.4f} @ epoch {epoch}"
            if trial.state == TrialState.PRUNED:
                line += f" (pruned at {trial.user_attrs.get('pruned_at_epoch')})"
        self.write(line)
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            study.stop()

    def close(self) -> None:
        """Removes the bar."""
        self.bar.close()


def _params_text(trial: FrozenTrial) -> str:
    p = trial.params
    if not p:
        return ""
    return (
        f"depth {p.get('depth')} width {p.get('width')} "
        f"emb {p.get('embedding_dim')} lr {p.get('learning_rate', float('nan')):.4g}"
    )


@dataclasses.dataclass
class Session:
    """One process's handle on a study: the Optuna study and its MLflow side."""

    study: optuna.Study
    study_file: config_module.Study
    tracker: Tracker
    target: int
    storage_url: str


def launch(
    study_file: config_module.Study,
    stores: Stores,
    n_trials: int | None = None,
    join: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Session:
    """Creates the study and its MLflow experiment and parent run.

    Stores the study file, the target and the MLflow ids in the study, and
    queues the baselines.

    Args:
        study_file: The parsed study file.
        stores: Where the Optuna study and the MLflow runs go.
        n_trials: Overrides the study file's `n_trials`.
        join: If the study exists (with the same file), open it instead.
        max_retries: How many times a trial whose worker died is retried.

    Raises:
        SweepError: The study exists already (and not `join`, or with another
            file), or a store cannot be used.
    """
    settings = study_file.study
    # Optuna announces each new study at INFO (the CLI says what it launches),
    # and warns of a query it retries another way when the database is away
    # (`Storage` says so once).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = open_tracker(stores)
    storage = open_storage(stores.storage, tracker, max_retries)
    if settings.name in _study_names(storage):
        if join:
            return resume(settings.name, stores, n_trials, study_file, max_retries)
        raise SweepError(
            f"study {settings.name!r} already exists in "
            f"{servers.redact(stores.storage)}; continue it with "
            f"`sweep resume {settings.name}`, or give the study file another "
            "[study] name"
        )
    experiment_id = tracker.experiment(settings.name, list(study_file.space))
    parent_run_id = tracker.start_study_run(
        experiment_id, settings.name, {"sweep.study_file": study_file.path.name}
    )
    try:
        study = optuna.create_study(
            study_name=settings.name,
            storage=storage,
            sampler=make_sampler(settings, 0),
            pruner=make_pruner(settings, study_file.training),
            direction="maximize",
        )
    except optuna.exceptions.DuplicatedStudyError:
        # Another worker created it between our check and now.
        tracker.client.delete_run(parent_run_id)
        if join:
            return resume(settings.name, stores, n_trials, study_file, max_retries)
        raise SweepError(
            f"study {settings.name!r} was just created elsewhere"
        ) from None
    study.set_user_attr(STUDY_FILE_ATTR, study_file.text)
    study.set_user_attr(TARGET_ATTR, n_trials or settings.n_trials)
    study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
    study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
    for baseline in study_file.baselines:
        study.enqueue_trial(baseline, user_attrs={"sweep.baseline": True})
    target = n_trials or settings.n_trials
    return Session(study, study_file, tracker, target, stores.storage)


def resume(
    name: str,
    stores: Stores,
    n_trials: int | None = None,
    study_file: config_module.Study | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    worker: int = 0,
) -> Session:
    """Opens an existing study to run more of its trials.

    Trials left RUNNING by a dead process on this host are failed and re-queued
    at once; those of other hosts when their heartbeat goes stale.

    Args:
        name: The study name.
        stores: Where it lives.
        n_trials: Raises the study's target of finished trials.
        study_file: If given, must be the file the study was launched with.
        max_retries: How many times a trial whose worker died is retried.
        worker: This worker's index (seeds its sampler apart from the others).

    Raises:
        SweepError: No such study, or `study_file` differs from the stored one.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = open_tracker(stores)
    storage = open_storage(stores.storage, tracker, max_retries)
    names = _study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise SweepError(
            f"no study {name!r} in {servers.redact(stores.storage)} "
            f"(studies there: {known}); start it with `sweep launch STUDY_FILE`"
        )
    stored = optuna.load_study(study_name=name, storage=storage)
    text = stored.user_attrs.get(STUDY_FILE_ATTR)
    if text is None:
        raise SweepError(f"study {name!r} was not created by sweep (no study file)")
    launched = config_module.parse_study(text, Path(f"<study {name}>"))
    changed = config_module.differences(launched, study_file) if study_file else ""
    if changed:
        raise SweepError(
            f"{study_file.path} differs from the file study {name!r} was launched "
            f"with ({changed}); the study is "
            "unchanged: resume it without a file, or launch the new file under "
            "another [study] name"
        )
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        # Reseeded past the trials already run: a resumed sampler must not
        # replay the proposals of the first run.
        sampler=make_sampler(launched.study, len(stored.trials) + 1, worker),
        pruner=make_pruner(launched.study, launched.training),
    )
    target = stored.user_attrs.get(TARGET_ATTR, launched.study.n_trials)
    if n_trials is not None and n_trials > target:
        target = n_trials
        study.set_user_attr(TARGET_ATTR, target)
    fail_orphaned_trials(study, tracker, max_retries)
    return Session(study, launched, tracker, target, stores.storage)


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
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not worker or worker.get("host") != host or _alive(worker.get("pid", -1)):
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

    A worker names itself on its trial (`WORKER_ATTR`) as soon as Optuna made
    it. A trial still without a name long after it started is one whose
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
            or WORKER_ATTR in trial.user_attrs
            or started is None
            or (now - started).total_seconds() < UNCLAIMED_SECONDS
        ):
            continue
        storage = study._storage  # noqa: SLF001
        try:
            storage.set_trial_user_attr(
                trial._trial_id,  # noqa: SLF001
                "fail_reason",
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
    study: optuna.Study, tracker: Tracker, max_retries: int
) -> None:
    """Re-queues trials that an interrupt (Ctrl-C, SIGTERM) failed."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryStaleTrial.retry_history(t)}
    retry = RetryStaleTrial(tracker, max_retries)
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get(INTERRUPTED_ATTR)
            and trial.number not in retried
        ):
            retry(study, trial)


def open_study(stores: Stores, name: str) -> optuna.Study:
    """An existing study, to read (export, reports); never creates a store.

    Raises:
        SweepError: The store or the study does not exist.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = sqlite.path_of(stores.storage)
    if path is not None and not path.is_file():
        raise SweepError(
            f"no study {name!r}: there is no Optuna storage at {path}; launch "
            "a study first (sweep launch STUDY_FILE), or pass --storage / set "
            "SWEEP_HOME to where it ran"
        )
    storage = open_storage(stores.storage)
    names = _study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise SweepError(
            f"no study {name!r} in {servers.redact(stores.storage)} "
            f"(studies there: {known})"
        )
    return optuna.load_study(study_name=name, storage=storage)


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def run(
    session: Session,
    features: Features,
    checkpoints: Path,
    progress: bool = True,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> None:
    """Runs the session's trials until the study reaches its target.

    The study's MLflow run is RUNNING meanwhile, then FINISHED (or KILLED when
    interrupted, FAILED when stopped by an error).
    """
    study, tracker = session.study, session.tracker
    parent_run_id = study.user_attrs[PARENT_RUN_ATTR]
    tracker.reopen_run(parent_run_id)
    objective = Objective(
        session.study_file,
        features,
        tracker,
        study.user_attrs[EXPERIMENT_ATTR],
        parent_run_id,
        checkpoints / study.study_name,
    )
    try:
        plotter = Plotter(
            session.storage_url, study.study_name, tracker.tracking_uri, parent_run_id
        )
    except OSError as e:  # the report must never stop the sweep
        print(f"sweep: no plotter process ({e}); plots drawn once a minute",
              file=sys.stderr)  # fmt: skip
        plotter = None
    report = StudyReport(
        tracker, parent_run_id, str(session.study_file.path), features.source, plotter
    )
    status = "FAILED"
    try:
        run_trials(study, objective, session.target, progress, [report])
        if plotter is not None:
            # The final plots are drawn here; the child's drawing would be stale.
            plotter.stop(wait=False)
        report.refresh(study)
        status = "FINISHED"
    except servers.ServerUnavailable:
        status = "KILLED"
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = "KILLED"
        requeue_interrupted(study, tracker, max_retries)
        raise
    finally:
        if plotter is not None:
            plotter.stop(wait=False)
        tracker.finish_run(parent_run_id, status)


def run_trials(
    study: optuna.Study,
    objective: Objective,
    target: int,
    progress: bool = True,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> None:
    """Runs trials, one at a time, until the study holds `target` finished trials.

    Optuna's `MaxTrialsCallback` stops a worker once the target is reached, but
    workers that start a trial at the same moment overshoot it; here a worker
    starts a trial only while finished + running trials are short of the target
    (and `Objective` drops a trial that lost that race), and waits otherwise:
    if a running trial fails or its worker dies, the target is open again.

    Stops early, with a `SweepError`, after `MAX_CONSECUTIVE_FAILURES` failed
    trials in a row.
    """
    objective.target = target
    bar = Progress(target, finished_count(study), enabled=progress)
    verbosity = optuna.logging.get_verbosity()
    # Each trial's outcome is printed by `Progress`; Optuna's own lines (with a
    # traceback for every failed trial) would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        while True:
            # One read of the study per trial: each costs a query of the store.
            trials = study.get_trials(deepcopy=False)
            states = [t.state for t in trials]
            done = sum(state in FINISHED for state in states)
            values = [t.value for t in trials if t.state == TrialState.COMPLETE]
            bar.count(done, max(values, default=None))
            if done >= target:
                break
            running = states.count(TrialState.RUNNING)
            if done + running >= target:
                # Others are finishing the last trials; a dead one's heartbeat
                # goes stale and this frees its place.
                optuna.storages.fail_stale_trials(study)
                fail_unclaimed_trials(study, trials, objective.tracker)
                time.sleep(1)
                continue
            study.optimize(
                objective,
                n_trials=1,
                catch=(TrialFailed,),
                callbacks=[bar, *callbacks],
                gc_after_trial=True,
            )
            if bar.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise SweepError(
                    f"the last {MAX_CONSECUTIVE_FAILURES} trials of study "
                    f"{study.study_name!r} all failed (the last: "
                    f"{study.trials[-1].user_attrs.get('fail_reason')}); check the "
                    "[space] ranges (e.g. a learning rate too high to converge)"
                )
    finally:
        optuna.logging.set_verbosity(verbosity)
        bar.close()


def top_trials(study: optuna.Study, count: int = 10) -> list[FrozenTrial]:
    """The finished trials with the highest validation top-100 accuracy."""
    trials = [
        t for t in study.get_trials(states=FINISHED) if best_accuracy(t) is not None
    ]
    return sorted(trials, key=lambda t: (-best_accuracy(t), t.number))[:count]


def summary_table(study: optuna.Study, count: int = 10) -> str:
    """A text table of the top trials: number, state, params, best accuracy, epoch."""
    header = (
        f"{'trial':>5}  {'state':8}  {'depth':>5}  {'width':>5}  {'emb':>4}  "
        f"{'lr':>8}  {'val top-100':>11}  {'epoch':>5}"
    )
    lines = [header, "-" * len(header)]
    for t in top_trials(study, count):
        p = t.params
        lines.append(
            f"{t.number:5d}  {t.state.name:8}  {p['depth']:5d}  {p['width']:5d}  "
            f"{p['embedding_dim']:4d}  {p['learning_rate']:8.4g}  "
            f"{best_accuracy(t):11.4f}  {t.user_attrs.get('best_epoch', ''):>5}"
        )
    counts = {state.name: 0 for state in (*FINISHED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in counts:
            counts[t.state.name] += 1
    lines.append(", ".join(f"{n} {state.lower()}" for state, n in counts.items()))
    lines.append(tracking_share(study))
    return "\n".join(lines)


def tracking_share(study: optuna.Study) -> str:
    """How much of the trials' wall time went to MLflow calls."""
    tracked = wall = 0.0
    for t in study.get_trials(deepcopy=False):
        if "tracking_seconds" in t.user_attrs and t.duration is not None:
            tracked += t.user_attrs["tracking_seconds"]
            wall += t.duration.total_seconds()
    if not wall:
        return "MLflow logging: no finished trial"
    return (
        f"MLflow logging: {tracked:.2f} s of {wall:.1f} s of trials "
        f"({100 * tracked / wall:.1f}%)"
    )


def status_report(storage_url: str, name: str | None = None) -> str:
    """The studies in a storage: trials per state, best trial, live workers.

    Raises:
        SweepError: `name` is not a study there.
    """
    storage = open_storage(storage_url)
    summaries = storage.get_all_studies()
    if name is not None:
        summaries = [s for s in summaries if s.study_name == name]
        if not summaries:
            raise SweepError(f"no study {name!r} in {servers.redact(storage_url)}")
    if not summaries:
        return f"no studies in {servers.redact(storage_url)}"
    stale = getattr(storage, "_get_stale_trial_ids", lambda study_id: [])
    blocks = []
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {state.name: 0 for state in TrialState}
        for t in trials:
            counts[t.state.name] += 1
        target = study.user_attrs.get(TARGET_ATTR, "?")
        lines = [
            f"{summary.study_name}: {finished_count(study)} of {target} finished ("
            + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
            + ")"
        ]
        best = top_trials(study, 1)
        if best:
            t = best[0]
            lines.append(
                f"  best: trial {t.number} ({t.state.name.lower()}) val top-100 "
                f"{best_accuracy(t):.4f} at epoch {t.user_attrs.get('best_epoch')}, "
                f"{_params_text(t)}"
            )
        # A RUNNING trial whose heartbeat is not stale has a live worker.
        stale_ids = set(stale(study._study_id))  # noqa: SLF001
        alive = sorted(
            f"{w['host']}:{w['pid']} (trial {t.number})"
            for t in trials
            if t.state == TrialState.RUNNING
            and t._trial_id not in stale_ids  # noqa: SLF001
            and (w := t.user_attrs.get(WORKER_ATTR))
            and (w["host"] != socket.gethostname() or _alive(w["pid"]))
        )
        lines.append(f"  workers alive: {', '.join(alive) if alive else 'none'}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
