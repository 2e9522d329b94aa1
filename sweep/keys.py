"""Every key `sweep` writes into Optuna and MLflow, and the trial-state groups.

Optuna keeps a study's settings and each trial's bookkeeping in user attrs;
MLflow keeps each run's tags, params, metrics and artifacts. The names live
here so that the writer (objective, tracking, report) and the readers (status,
export, retries, tests) cannot drift apart.
"""

from __future__ import annotations

from optuna.trial import TrialState

# Optuna study user attrs.
STUDY_FILE_ATTR = "sweep.study_file"  # the study file's text, as launched
TARGET_ATTR = "n_trials"  # finished trials the study aims for
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
CONFIRM_PLAN_ATTR = "sweep.confirm"  # {"finalists", "seeds"} of the confirmation
CONFIRM_OF_ATTR = "sweep.confirm_of"  # on a confirmation study: the study it confirms
IMPORTED_ATTR = "sweep.imported"  # trials a warm start added (not in n_trials)

# Optuna study system attrs: bookkeeping no user reads (`sweep.presence`).
PRESENCE_PREFIX = "sweep:worker:"  # + "host:pid": last seen, or minus when it ended
DELETING_ATTR = "sweep:deleting"  # when a `sweep delete` of the study began

# Optuna trial user attrs.
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run
WORKER_ATTR = "sweep.worker"  # {"host", "pid"} of the process running it
INTERRUPTED_ATTR = "sweep.interrupted"  # failed by Ctrl-C or SIGTERM: re-queue it
SURPLUS_ATTR = "sweep.surplus"  # started after the target was reached; dropped
BASELINE_ATTR = "sweep.baseline"  # queued from the study file's [[baselines]]
ENQUEUED_ATTR = "sweep.enqueued"  # queued by hand (`sweep enqueue`)
IMPORTED_FROM_ATTR = "sweep.imported_from"  # warm start: {"study", "trial"}
FAIL_REASON_ATTR = "fail_reason"
BEST_EPOCH_ATTR = "best_epoch"
PRUNED_AT_ATTR = "pruned_at_epoch"
RESUMED_FROM_ATTR = "resumed_from_epoch"
TRACKING_SECONDS_ATTR = "tracking_seconds"
FINALIST_OF_ATTR = "sweep.finalist_of"  # a confirmation run's search trial
SEED_ATTR = "sweep.seed"  # a confirmation run's seed (search trials derive theirs)
SEARCH_VALUE_ATTR = "sweep.search_value"  # a confirmation run's finalist's value
SEARCH_CURVE_ATTR = "sweep.search_curve"  # its finalist's validations {epoch: value}
DIVERGED_ATTR = "sweep.diverged"  # a confirmation run whose loss diverged
COLLAPSED_AT_ATTR = "sweep.collapsed_at_epoch"  # where a collapsed run was stopped
TEST_ACCURACY_ATTR = "test_top100_accuracy"  # a confirmation run's, on held-out data
# One attempt of a trial: who ran it and what it ended with. Not carried over
# to its retry (`retries.RetryStaleTrial`), which keeps the rest.
ATTEMPT_ATTRS = (
    WORKER_ATTR,
    INTERRUPTED_ATTR,
    SURPLUS_ATTR,
    FAIL_REASON_ATTR,
    PRUNED_AT_ATTR,
    RESUMED_FROM_ATTR,
    DIVERGED_ATTR,
    COLLAPSED_AT_ATTR,
    TEST_ACCURACY_ATTR,
)

# MLflow tags.
ROLE_TAG = "sweep.role"  # "study" (the parent run), "trial" or "confirm"
FINALIST_OF_TAG = "sweep.finalist_of"  # a confirmation run's search trial
SEED_TAG = "sweep.seed"  # a confirmation run's seed
STATE_TAG = "sweep.trial_state"  # the trial's Optuna state
STUDY_FILE_TAG = "sweep.study_file"  # the parent run's study file name
WARM_START_TAG = "sweep.warm_start"  # the parent run's: what a warm start imported
RETRY_TAG = "sweep.retry_of"  # the trial number a retry continues
RESUMED_FROM_TAG = "sweep.resumed_from_epoch"
PRUNED_AT_TAG = "sweep.pruned_at_epoch"
COLLAPSED_AT_TAG = "sweep.collapsed_at_epoch"
FAIL_REASON_TAG = "sweep.fail_reason"
STUDY_TAG = "sweep.study"  # on a registered model version
TRIAL_TAG = "sweep.trial"  # on a registered model version
CONFIRMED_TAG = "sweep.confirmed"  # on a version: "true" if the confirmed champion
CONFIRMED_MEAN_TAG = "sweep.confirmed_mean"  # on a version: the champion's mean
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description in the UI
STUDY_NAME_TAG = "optuna.study_name"  # on the parent and trial runs
TRIAL_NUMBER_TAG = "optuna.trial_number"  # on a trial run
RUN_ID_TAG = "run_id"  # on a registered model version: the trial's run
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the UI's view of an experiment
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + a key: a saved runs-table view

# MLflow metrics of a trial run (steps are epochs).
LOSS = "loss"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_top100_accuracy"
BEST_ACCURACY = "best_val_top100_accuracy"
BEST_EPOCH = "best_epoch"
TEST_ACCURACY = "test_top100_accuracy"  # with [data] test_fraction: confirmation runs
TRACKING_SECONDS = "tracking_seconds"

# MLflow artifact folders of a trial run.
CHECKPOINT_ARTIFACT = "checkpoint"  # the last checkpoint, for a retry elsewhere
BEST_ARTIFACT = "best_model"  # the best epoch's weights (`train.BestModel`)

# Trial states: what `n_trials` counts, and a trial's MLflow run status.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def ahead_of(other, number: int) -> bool:
    """Whether trial `other` goes before trial `number` when workers race.

    A finished trial does, whatever its number; a running one if it was started
    first, so that of two trials started at once the later one gives way.
    """
    return other.number != number and (
        other.state in FINISHED
        or (other.state == TrialState.RUNNING and other.number < number)
    )


def count_states(trials, states=tuple(TrialState)) -> dict[str, int]:
    """How many of `trials` are in each of `states`, by state name (in order)."""
    counts = {state.name: 0 for state in states}
    for trial in trials:
        if trial.state.name in counts:
            counts[trial.state.name] += 1
    return counts
