"""One trial's log: what a training reports reaches Optuna, MLflow and the disk."""

import mlflow
import numpy as np
import optuna
import pytest

from sweep import keys, stores, train
from sweep.objective import TrialLog
from sweep.tracking import Tracker


@pytest.fixture
def parts(tmp_path):
    """A trial of a real SQLite study, and its run in a real MLflow store."""
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(
        study_name="s", storage=storage, direction="maximize",
        pruner=optuna.pruners.NopPruner(),
    )  # fmt: skip
    trial = study.ask()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    experiment = tracker.experiment("s", [])
    parent = tracker.start_study_run(experiment, "s", {})
    run = tracker.start_trial(experiment, parent, "s", trial.number, {"depth": 1})
    client = mlflow.MlflowClient(tracker.tracking_uri)
    return study, trial, run, client, tmp_path / "checkpoints"


def _checkpoint(epoch, accuracies):
    validations = [train.Validation(e, 1.0, a) for e, a in enumerate(accuracies, 1)]
    w = [np.zeros(2, np.float32)]
    return train.Checkpoint(epoch, w, w, validations, w)


def test_validations_reach_optuna_and_the_best_one_the_run(parts):
    study, trial, run, client, folder = parts
    log = TrialLog(trial, run, folder, None)
    log.on_epoch(1, 2.5)
    log.on_validation(train.Validation(1, 2.0, 0.2))
    log.on_validation(train.Validation(2, 1.9, 0.3))
    log.on_validation(train.Validation(3, 1.8, 0.25))
    log.on_checkpoint(_checkpoint(3, [0.2, 0.3, 0.25]))
    assert log.checkpoint_path.is_file()
    log.close("COMPLETE")
    study.tell(trial, 0.3)
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.25}
    assert frozen.user_attrs[keys.BEST_EPOCH_ATTR] == 2
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics[keys.BEST_ACCURACY] == pytest.approx(0.3)
    assert metrics[keys.BEST_EPOCH] == 2
    assert metrics[keys.LOSS] == 2.5
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not log.checkpoint_path.exists()  # only an interrupted trial keeps it


def test_a_resumed_log_starts_from_its_checkpoint_and_marks_a_prune(parts):
    study, trial, run, client, folder = parts
    log = TrialLog(trial, run, folder, _checkpoint(2, [0.4, 0.1]))
    assert (log.best.epoch, log.last_epoch) == (1, 2)
    log.pruned()
    log.close("PRUNED")
    tags = client.get_run(run.run_id).data.tags
    assert tags[keys.PRUNED_AT_TAG] == "2"
    assert tags[keys.STATE_TAG] == "PRUNED"
    assert client.get_run(run.run_id).data.metrics[keys.BEST_ACCURACY] == 0.4


def test_a_confirmation_run_ends_at_the_validation_that_shows_a_collapse(parts):
    study, trial, run, client, folder = parts
    trial.set_user_attr(keys.SEARCH_CURVE_ATTR, {"1": 0.2, "2": 0.3, "3": 0.36})
    log = TrialLog(trial, run, folder, None)
    assert log.on_validation(train.Validation(1, 2.0, 0.12)) is False
    assert log.on_validation(train.Validation(2, 2.0, 0.14)) is True  # < 0.15
    log.close("COMPLETE")
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert attrs[keys.COLLAPSED_AT_ATTR] == 2
    assert client.get_run(run.run_id).data.tags[keys.COLLAPSED_AT_TAG] == "2"
    # A search trial (no curve to compare with) never ends so.
    other = study.ask()
    plain = TrialLog(other, run, folder, None)
    assert plain.on_validation(train.Validation(1, 2.0, 0.01)) is False


def test_an_interrupted_trial_keeps_its_checkpoint_and_its_run_is_killed(parts):
    study, trial, run, client, folder = parts
    log = TrialLog(trial, run, folder, None)
    log.on_checkpoint(_checkpoint(1, [0.2]))
    log.interrupted(KeyboardInterrupt())
    assert log.checkpoint_path.is_file()
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert attrs[keys.INTERRUPTED_ATTR] is True
    assert attrs[keys.FAIL_REASON_ATTR] == "interrupted (KeyboardInterrupt)"
    finished = client.get_run(run.run_id)
    assert finished.info.status == "KILLED"
    assert finished.data.tags[keys.FAIL_REASON_TAG] == "interrupted"


def test_a_failed_trial_says_why(parts):
    study, trial, run, client, folder = parts
    log = TrialLog(trial, run, folder, None)
    log.fail("loss diverged at epoch 3")
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert attrs[keys.FAIL_REASON_ATTR] == "loss diverged at epoch 3"
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags[keys.FAIL_REASON_TAG] == "loss diverged at epoch 3"
