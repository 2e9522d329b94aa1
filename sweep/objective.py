"""One trial: train the configuration Optuna proposes, and log it as it goes.

Each trial trains one configuration, reports every validation to Optuna (for
pruning) and to its nested MLflow run, saves a checkpoint after each
validation (so a retry continues rather than starts over), and keeps its best
epoch's model. Its value is its best validation top-100 accuracy.

The confirmation stage's runs (`sweep.confirm`) are trials too, queued with a
finalist's configuration and a seed of their own: they are tagged as such in
MLflow, also score the held-out test ratings when the study has them, and a
diverged loss is their result (the seed collapsed) rather than a failure.

What a failure means is explicit in the types: `TrialFailed` (a diverged loss,
or any unexpected error inside one trial) ends that trial as FAIL and the sweep
goes on; a `SweepError` (the user's mistake, true for every trial) stops it; a
`servers.ServerUnavailable` leaves the trial RUNNING for a later retry; an
interrupt (Ctrl-C, SIGTERM) fails it, marked for a retry.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from sweep import config as config_module
from sweep import confirm, interrupts, keys, servers, space, train
from sweep.backend import keras
from sweep.data import Features
from sweep.errors import SweepError, TrialFailed
from sweep.retries import RetryStaleTrial, worker_identity
from sweep.tracking import Tracker, TrialRun


class TrialLog:
    """Where one trial's progress goes: its MLflow run, Optuna, its files.

    Its methods are `sweep.train.train`'s callbacks, then `keep_best` and
    `close`.

    Args:
        trial: The Optuna trial.
        run: Its MLflow run.
        folder: Its checkpoint file's folder (one per study).
        resumed: The checkpoint it continues from, if any.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        run: TrialRun,
        folder: Path,
        resumed: train.Checkpoint | None,
    ):
        self.trial = trial
        self.run = run
        self.checkpoint_path = folder / f"trial-{trial.number}.npz"
        self.best_folder = folder / f"trial-{trial.number}-best"
        self.resumed = resumed
        # A confirmation run's finalist's own validations: where it collapses.
        self.search_curve = trial.user_attrs.get(keys.SEARCH_CURVE_ATTR)
        self.best: train.Validation | None = None
        self.last_epoch: int | None = None
        if resumed is not None and resumed.validations:
            self.best = max(resumed.validations, key=lambda v: v.val_top100_accuracy)
            self.last_epoch = resumed.epoch

    def on_epoch(self, epoch: int, loss: float) -> None:
        """Logs an epoch's training loss."""
        self.run.log_metric(keys.LOSS, loss, epoch)

    def on_validation(self, v: train.Validation) -> bool:
        """Logs a validation and reports it to Optuna, which may prune the trial.

        Returns:
            Whether training ends here: a confirmation run that has collapsed
            (`confirm.collapsed_by`) has measured its seed, and stops as
            complete.

        Raises:
            optuna.TrialPruned: The pruner stops the trial here.
        """
        self.run.log_metric(keys.VAL_LOSS, v.val_loss, v.epoch)
        self.run.log_metric(keys.VAL_ACCURACY, v.val_top100_accuracy, v.epoch)
        if self.best is None or v.val_top100_accuracy > self.best.val_top100_accuracy:
            self.best = v
        self.last_epoch = v.epoch
        # Optuna's write first: MLflow's async write of the batch would
        # compete with it for the interpreter, and the pruner waits on it.
        self.trial.report(v.val_top100_accuracy, v.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {v.epoch}")
        self.run.flush(wait=False)
        if self.search_curve and confirm.collapsed_by(
            self.best.val_top100_accuracy, v.epoch, self.search_curve
        ):
            self.run.set_tag(keys.COLLAPSED_AT_TAG, v.epoch)
            self.trial.set_user_attr(keys.COLLAPSED_AT_ATTR, v.epoch)
            return True
        return False

    def on_checkpoint(self, checkpoint: train.Checkpoint) -> None:
        """Keeps the checkpoint on disk and in the run's artifacts."""
        # Saved here first (atomically), so a retry on this machine resumes
        # from it even if its upload has not finished.
        checkpoint.save(self.checkpoint_path)
        # Also in the run's artifacts: a retry on another machine finds it.
        self.run.log_artifact(
            self.checkpoint_path, keys.CHECKPOINT_ARTIFACT, wait=False
        )

    def keep_best(
        self, config: train.TrainConfig, result: train.TrainResult, features: Features
    ) -> None:
        """Logs the best epoch's model (uploaded in the background until `close`)."""
        train.BestModel.save(self.best_folder, config, result, features)
        self.run.log_artifacts(self.best_folder, keys.BEST_ARTIFACT, wait=False)

    def tested(self, accuracy: float) -> None:
        """Logs the best weights' top-100 accuracy on the held-out test ratings."""
        self.run.log_metric(keys.TEST_ACCURACY, accuracy, self.best.epoch)
        self.trial.set_user_attr(keys.TEST_ACCURACY_ATTR, accuracy)

    def pruned(self) -> None:
        """Marks where the pruner stopped the trial."""
        self.run.set_tag(keys.PRUNED_AT_TAG, self.last_epoch)
        self.trial.set_user_attr(keys.PRUNED_AT_ATTR, self.last_epoch)

    def fail(self, reason: str) -> None:
        """Records why the trial failed, then ends its run."""
        self.trial.set_user_attr(keys.FAIL_REASON_ATTR, reason)
        self.run.set_tag(keys.FAIL_REASON_TAG, reason[:5000])
        self.close("FAIL")

    def interrupted(self, error: BaseException) -> None:
        """Marks the trial for a retry and ends its run KILLED."""
        self.trial.set_user_attr(keys.INTERRUPTED_ATTR, True)
        self.trial.set_user_attr(
            keys.FAIL_REASON_ATTR, f"interrupted ({type(error).__name__})"
        )
        self.run.set_tag(keys.FAIL_REASON_TAG, "interrupted")
        self.close("FAIL", "KILLED")

    def close(self, state: str, status: str | None = None) -> None:
        """Logs the best validation and ends the run as `state`.

        Args:
            state: The trial's Optuna state (COMPLETE, PRUNED, FAIL).
            status: The run's MLflow status, if not the state's (KILLED).
        """
        if self.best is not None:
            v = self.best
            self.run.log_metric(keys.BEST_ACCURACY, v.val_top100_accuracy, v.epoch)
            self.run.log_metric(keys.BEST_EPOCH, v.epoch, v.epoch)
            self.trial.set_user_attr(keys.BEST_EPOCH_ATTR, v.epoch)
        self.run.log_metric(keys.TRACKING_SECONDS, self.run.seconds, 0)
        try:
            self.run.finish(state, status)
        finally:
            shutil.rmtree(self.best_folder, ignore_errors=True)
        self.trial.set_user_attr(keys.TRACKING_SECONDS_ATTR, round(self.run.seconds, 4))
        if status != "KILLED":
            # Only an interrupted trial is retried and needs its checkpoint.
            self.checkpoint_path.unlink(missing_ok=True)


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
        outside_plan: For the confirmation stage: whether a run about to start
            (given the stage's trials) is one its plan no longer needs.
    """

    def __init__(
        self,
        study: config_module.Study,
        features: Features,
        tracker: Tracker,
        experiment_id: str,
        parent_run_id: str,
        checkpoints: Path,
        outside_plan: Callable[[FrozenTrial, list[FrozenTrial]], bool] | None = None,
    ):
        self.study = study
        self.outside_plan = outside_plan
        self.features = features
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.checkpoints = checkpoints
        self.target: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        """Runs one trial; returns its best validation top-100 accuracy."""
        try:
            interrupts.check()  # a stop dropped between two trials
            # First of all: a RUNNING trial without it was never taken up by
            # a worker (`retries.fail_unclaimed_trials`).
            trial.set_user_attr(keys.WORKER_ATTR, worker_identity())
            config = space.suggest(trial, self.study)
            # A confirmation run is queued with its seed; a search trial
            # derives its own from the study seed and its number.
            seed = trial.user_attrs.get(keys.SEED_ATTR)
            if seed is not None:
                config = dataclasses.replace(config, seed=seed)
            log = self._start(trial, config)
            # After `_start`, which may drop the trial: nothing to clear then.
            keras.backend.clear_session()
        except KeyboardInterrupt:
            # A stop before the trial trained: it is re-queued like any trial
            # a stop cut short (`retries.requeue_interrupted`).
            trial.set_user_attr(keys.INTERRUPTED_ATTR, True)
            raise
        diverged = None
        try:
            result = train.train(
                config,
                self.features,
                on_validation=log.on_validation,
                on_epoch=log.on_epoch,
                on_checkpoint=log.on_checkpoint,
                resume_from=log.resumed,
                # Only a confirmation run looks at the held-out ratings: the
                # search never sees them, so nothing is selected on them.
                test=seed is not None,
            )
            log.keep_best(config, result, self.features)
            if result.test_top100_accuracy is not None:
                log.tested(result.test_top100_accuracy)
            # Inside the try: an upload that keeps failing at the run's end
            # fails this trial (and ends its run FAILED), not the sweep.
            log.close("COMPLETE")
        except optuna.TrialPruned:
            log.pruned()
            log.close("PRUNED")
            raise
        except SweepError:
            log.close("FAIL")
            raise
        except TrialFailed as e:
            if seed is None:
                log.fail(str(e))
                raise
            diverged = str(e)
        except Exception as e:  # anything else inside one trial fails only it
            reason = f"{type(e).__name__}: {e}"
            log.fail(reason)
            raise TrialFailed(reason) from e
        except servers.ServerUnavailable:
            # Nothing is written to a server that is gone: the trial stays
            # RUNNING, with its checkpoint, and is re-queued (its run KILLED)
            # once the server is back, as a dead worker's trial is.
            raise
        except BaseException as e:
            # Ctrl-C, SIGTERM: Optuna fails the trial; the loop re-queues it.
            log.interrupted(e)
            raise
        if diverged is not None:
            return self._diverged(trial, log, diverged)
        return result.best.val_top100_accuracy

    def _diverged(self, trial: optuna.Trial, log: TrialLog, reason: str) -> float:
        """Closes a confirmation run whose loss diverged, as COMPLETE.

        A confirmation run measures its seed: a diverged loss is its result
        (the finalist is unstable), not a failure to retry. Its value is its
        best validation before the divergence (0 without one).

        Raises:
            TrialFailed: The run could not be closed (e.g. its uploads kept
                failing): this run fails, not the sweep.
        """
        trial.set_user_attr(keys.DIVERGED_ATTR, True)
        log.run.set_tag(keys.FAIL_REASON_TAG, reason[:5000])
        try:
            log.close("COMPLETE")
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
            log.fail(failure)
            raise TrialFailed(failure) from e
        return log.best.val_top100_accuracy if log.best else 0.0

    def _start(self, trial: optuna.Trial, config: train.TrainConfig) -> TrialLog:
        """Starts the trial's MLflow run, after its checkpoint if it is a retry.

        Raises:
            TrialFailed: The study's target is already met (see `_check_needed`).
        """
        # One read of the study serves both: a live Trial no longer exposes its
        # system attrs (where Optuna keeps the retry history); its frozen copy does.
        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        finalist = trial.user_attrs.get(keys.FINALIST_OF_ATTR)
        if finalist is None and confirm.is_companion(trial.study.study_name):
            # Sampled, not queued: another worker took the last queued run.
            _drop(trial, "another worker took the queued run")
        self._check_needed(trial, trials)
        retry_of = RetryStaleTrial.retried_trial_number(frozen)
        tags = {} if retry_of is None else {keys.RETRY_TAG: str(retry_of)}
        run_name = None
        if finalist is not None:
            self._check_not_duplicate(trial, frozen, trials)
            tags[keys.ROLE_TAG] = "confirm"
            tags[keys.FINALIST_OF_TAG] = str(finalist)
            tags[keys.SEED_TAG] = str(config.seed)
            run_name = f"confirm-{finalist}-{trial.number}"
        previous_run = (
            trial.user_attrs.get(keys.RUN_ID_ATTR) if retry_of is not None else None
        )
        run = self.tracker.start_trial(
            self.experiment_id,
            self.parent_run_id,
            # A confirmation run's: `<study>:confirm`, where its number is.
            trial.study.study_name,
            trial.number,
            config.params(),
            tags,
            run_name,
        )
        trial.set_user_attr(keys.RUN_ID_ATTR, run.run_id)
        resumed = (
            self._checkpoint_of(frozen, previous_run) if retry_of is not None else None
        )
        if resumed is not None:
            run.set_tag(keys.RESUMED_FROM_TAG, resumed.epoch)
            trial.set_user_attr(keys.RESUMED_FROM_ATTR, resumed.epoch)
        return TrialLog(trial, run, self.checkpoints, resumed)

    def _check_needed(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> None:
        """Drops a trial started when others (`keys.ahead_of`) make up the target."""
        if self.target is None:
            return
        if sum(keys.ahead_of(t, trial.number) for t in trials) >= self.target:
            _drop(trial, "the target was reached")

    def _check_not_duplicate(
        self, trial: optuna.Trial, frozen: FrozenTrial, trials: list[FrozenTrial]
    ) -> None:
        """Drops a confirmation run queued twice, or one no longer needed."""
        earlier = confirm.duplicate_of(frozen, trials)
        if earlier is not None:
            _drop(trial, f"trial {earlier} runs the same")
        collapsed = confirm.collapsed(frozen, trials)
        if collapsed is not None:
            _drop(trial, f"the finalist collapsed in trial {collapsed}")
        if self.outside_plan is not None and self.outside_plan(frozen, trials):
            _drop(trial, "its configuration or seed is no longer in the plan")

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
                previous_run, keys.CHECKPOINT_ARTIFACT, self.checkpoints
            )
            if path is not None:
                return train.Checkpoint.load(path)
        return None


def _drop(trial: optuna.Trial, why: str) -> None:
    """Fails a trial before it trains, as surplus: nothing of it is kept or shown.

    Raises:
        TrialFailed: Always.
    """
    reason = f"not needed: {why}"
    trial.set_user_attr(keys.SURPLUS_ATTR, True)
    trial.set_user_attr(keys.FAIL_REASON_ATTR, reason)
    raise TrialFailed(reason)
