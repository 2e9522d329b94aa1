"""What `sweep status` and the end of a sweep print, read from a real study."""

import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep import keys, retries, stores, summary
from sweep.errors import SweepError

DISTRIBUTIONS = {
    "depth": CategoricalDistribution([1, 2]),
    "width": CategoricalDistribution([8, 16]),
    "embedding_dim": CategoricalDistribution([8, 16]),
    "learning_rate": FloatDistribution(0.01, 0.5),
}


def _trial(state, value=None, curve=None, depth=1, **attrs):
    start = datetime.datetime(2026, 1, 1)
    return FrozenTrial(
        number=0,
        state=state,
        value=value,
        datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=10),
        params={"depth": depth, "width": 8, "embedding_dim": 16, "learning_rate": 0.1},
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        system_attrs={},
        intermediate_values=curve or {},
        trial_id=0,
    )


@pytest.fixture
def study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(
        study_name="s", storage=stores.open_storage(url), direction="maximize"
    )
    study.set_user_attr(keys.TARGET_ATTR, 5)
    study.add_trial(_trial(TrialState.COMPLETE, 0.3, {2: 0.3}, best_epoch=2,
                           tracking_seconds=0.5))  # fmt: skip
    study.add_trial(_trial(TrialState.COMPLETE, 0.3, {2: 0.3}, depth=2, best_epoch=2))
    study.add_trial(_trial(TrialState.PRUNED, None, {1: 0.35, 2: float("nan")},
                           best_epoch=1))  # fmt: skip
    study.add_trial(_trial(TrialState.FAIL))
    return study, url


def test_best_accuracy_counts_pruned_trials_and_skips_nan(study):
    trials = study[0].get_trials()
    assert [summary.best_accuracy(t) for t in trials] == [0.3, 0.3, 0.35, None]
    assert summary.finished_count(study[0]) == 3


def test_the_best_complete_trial_is_the_earliest_of_ties(study):
    trials = study[0].get_trials()
    assert summary.best_complete(trials).number == 0
    assert summary.best_complete([trials[2], trials[3]]) is None


def test_the_summary_table_ranks_pruned_trials_by_their_best_validation(study):
    lines = summary.summary_table(study[0]).splitlines()
    assert lines[0].split() == [
        "trial", "state", "depth", "width", "emb", "lr", "val", "top-100", "epoch",
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["2", "PRUNED"], ["0", "COMPLETE"], ["1", "COMPLETE"],
    ]  # fmt: skip
    assert lines[2].split()[-2:] == ["0.3500", "1"]
    assert lines[5] == "2 complete, 1 pruned, 1 fail"
    assert lines[6] == "MLflow logging: 0.50 s of 10.0 s of trials (5.0%)"


def test_status_names_counts_best_and_live_workers(study, tmp_path):
    optuna_study, url = study
    running = optuna_study.ask()
    optuna_study._storage.set_trial_user_attr(
        running._trial_id, keys.WORKER_ATTR, retries.worker_identity()
    )
    report = summary.status_report(url, "s")
    assert report.splitlines()[0] == (
        "s: 3 of 5 finished (1 running, 2 complete, 1 pruned, 1 fail)"
    )
    assert "best: trial 2 (pruned) val top-100 0.3500 at epoch 1, depth 1 " in report
    assert f"(trial {running.number})" in report.splitlines()[2]


def test_status_of_an_unknown_study_lists_the_known_ones(study):
    with pytest.raises(SweepError, match=r"no study 'x' .*\(studies there: s\)"):
        summary.status_report(study[1], "x")
