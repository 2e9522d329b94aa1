"""The report's drawings: Optuna's plots as HTML and PNG, importances evaluated once."""

import optuna
import pytest

from sweep import plots


@pytest.fixture(scope="module")
def study():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(
        lambda t: t.suggest_int("depth", 1, 3) / 10 + t.suggest_float("lr", 0.01, 0.5),
        n_trials=30,
    )
    return study


def test_importances_are_evaluated_once_for_both_drawings(study, tmp_path, monkeypatch):
    evaluate = optuna.importance.FanovaImportanceEvaluator.evaluate
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return evaluate(self, *args, **kwargs)

    fanova = optuna.importance.FanovaImportanceEvaluator
    monkeypatch.setattr(fanova, "evaluate", counted)
    assert plots.optuna_plot(study, "param_importances", tmp_path)
    assert len(calls) == 1
    assert (tmp_path / "param_importances.html").stat().st_size > 0
    assert (tmp_path / "param_importances.png").stat().st_size > 0


def test_the_same_trials_give_the_same_importances(study, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plots.optuna_plot(study, "param_importances", tmp_path / "a")
    plots.optuna_plot(study, "param_importances", tmp_path / "b")
    assert (tmp_path / "a" / "param_importances.png").read_bytes() == (
        tmp_path / "b" / "param_importances.png"
    ).read_bytes()


def test_importances_of_one_complete_trial_are_not_drawn(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0.01, 0.5), n_trials=1)
    study.enqueue_trial({"lr": 0.2})
    study.ask()  # a second trial, still running: not one to weigh
    assert not plots.optuna_plot(study, "param_importances", tmp_path)
    assert list(tmp_path.iterdir()) == []
    study.optimize(lambda t: t.suggest_float("lr", 0.01, 0.5), n_trials=1)
    assert plots.optuna_plot(study, "param_importances", tmp_path)
