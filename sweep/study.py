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
import math
import os
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from sweep import config as config_module
from sweep import space, train
from sweep.data import Features
from sweep.errors import SweepError, TrialFailed
from sweep.tracking import Tracker

STUDY_FILE_ATTR = "sweep.study_file"
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A space where every trial fails (e.g. every rate diverges) would otherwise
# loop forever; this many failures in a row stop the sweep.
MAX_CONSECUTIVE_FAILURES = 10


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


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Opens (creating if needed) the Optuna storage at `url`.

    Raises:
        SweepError: The URL is not a database URL or the database is unreachable.
    """
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise SweepError(
            f"storage {url!r} is not a database URL ({e}); expected e.g. "
            "sqlite:///path/optuna.db or postgresql://user@host/db"
        ) from None
    except sqlalchemy.exc.OperationalError as e:
        raise SweepError(
            f"cannot open the Optuna storage {url!r} ({str(e.orig).strip()})"
        ) from None


def make_sampler(settings: config_module.StudySettings) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed."""
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    return optuna.samplers.TPESampler(seed=settings.seed)


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

    Args:
        study: The study file.
        features: The preprocessed data.
        tracker: The MLflow side of the study.
        experiment_id: The study's MLflow experiment.
        parent_run_id: The study's MLflow run.
    """

    def __init__(
        self,
        study: config_module.Study,
        features: Features,
        tracker: Tracker,
        experiment_id: str,
        parent_run_id: str,
    ):
        self.study = study
        self.features = features
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id

    def __call__(self, trial: optuna.Trial) -> float:
        """Runs one trial; returns its best validation top-100 accuracy."""
        import keras

        config = space.suggest(trial, self.study)
        run = self.tracker.start_trial(
            self.experiment_id,
            self.parent_run_id,
            self.study.study.name,
            trial.number,
            config.params(),
        )
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        best: list[train.Validation] = []  # the best validation so far
        last: list[int] = []  # the last validated epoch

        def on_epoch(epoch: int, loss: float) -> None:
            run.log_metric("loss", loss, epoch)

        def on_validation(v: train.Validation) -> None:
            run.log_metric("val_loss", v.val_loss, v.epoch)
            run.log_metric("val_top100_accuracy", v.val_top100_accuracy, v.epoch)
            if not best or v.val_top100_accuracy > best[0].val_top100_accuracy:
                best[:] = [v]
            last[:] = [v.epoch]
            run.flush()
            trial.report(v.val_top100_accuracy, v.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {v.epoch}")

        def close(state: str) -> None:
            if best:
                v = best[0]
                run.log_metric(
                    "best_val_top100_accuracy", v.val_top100_accuracy, v.epoch
                )
                run.log_metric("best_epoch", v.epoch, v.epoch)
                trial.set_user_attr("best_epoch", v.epoch)
            run.log_metric("tracking_seconds", run.seconds, 0)
            run.finish(state)
            trial.set_user_attr("tracking_seconds", round(run.seconds, 4))

        keras.backend.clear_session()
        try:
            result = train.train(
                config, self.features, on_validation=on_validation, on_epoch=on_epoch
            )
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
        except BaseException:
            # Ctrl-C or SystemExit: the run must not stay RUNNING.
            close("KILLED")
            raise
        close("COMPLETE")
        return result.best.val_top100_accuracy

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
        write: Prints one line (under the bar).
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

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: updates the bar and prints the trial's outcome."""
        self.bar.n = min(finished_count(study), self.bar.total)
        accuracy = best_accuracy(trial)
        line = f"trial {trial.number:4d} {trial.state.name:8s} {_params_text(trial)}"
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
        try:
            self.bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)
        except ValueError:  # no complete trial yet
            pass
        self.bar.refresh()
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


def launch(
    study_file: config_module.Study,
    stores: Stores,
    features: Features,
    n_trials: int | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Creates the study and its MLflow experiment, then runs trials to the target.

    Args:
        study_file: The parsed study file.
        stores: Where the Optuna study and the MLflow runs go.
        features: The preprocessed data.
        n_trials: Overrides the study file's `n_trials`.
        progress: Show the progress bar and per-trial lines.

    Returns:
        The Optuna study.

    Raises:
        SweepError: The study exists already, or a store cannot be used.
    """
    settings = study_file.study
    # Optuna announces each new study at INFO; the CLI says what it launches.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(stores.storage)
    if settings.name in _study_names(storage):
        raise SweepError(
            f"study {settings.name!r} already exists in {stores.storage}; continue "
            f"it with `sweep resume {settings.name}`, or give the study file another "
            "[study] name"
        )
    tracker = Tracker(stores.tracking_uri, stores.artifact_root)
    experiment_id = tracker.experiment(settings.name)
    parent_run_id = tracker.start_study_run(
        experiment_id, settings.name, {"sweep.study_file": study_file.path.name}
    )
    study = optuna.create_study(
        study_name=settings.name,
        storage=storage,
        sampler=make_sampler(settings),
        pruner=make_pruner(settings, study_file.training),
        direction="maximize",
    )
    study.set_user_attr(STUDY_FILE_ATTR, study_file.text)
    study.set_user_attr("n_trials", n_trials or settings.n_trials)
    study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
    study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
    for baseline in study_file.baselines:
        study.enqueue_trial(baseline, user_attrs={"sweep.baseline": True})
    objective = Objective(study_file, features, tracker, experiment_id, parent_run_id)
    status = "FAILED"
    try:
        run_trials(study, objective, n_trials or settings.n_trials, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish_run(parent_run_id, status)
    return study


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def run_trials(
    study: optuna.Study, objective: Objective, target: int, progress: bool = True
) -> None:
    """Runs trials until the study holds `target` finished trials.

    Stops early, with a `SweepError`, after `MAX_CONSECUTIVE_FAILURES` failed
    trials in a row.
    """
    bar = Progress(target, finished_count(study), enabled=progress)
    stop_at_target = optuna.study.MaxTrialsCallback(target, states=FINISHED)
    verbosity = optuna.logging.get_verbosity()
    # Each trial's outcome is printed by `Progress`; Optuna's own lines (with a
    # traceback for every failed trial) would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        while finished_count(study) < target:
            study.optimize(
                objective,
                n_trials=target - finished_count(study),
                catch=(TrialFailed,),
                callbacks=[bar, stop_at_target],
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
