"""`sweep launch studies/smoke.toml` on the real MovieLens 100k, read back from
both stores."""

import json

import mlflow
import optuna
import pytest

from sweep.config import load_study
from sweep.study import EXPERIMENT_ATTR, PARENT_RUN_ATTR, RUN_ID_ATTR
from tests.conftest import REPO
from tests.test_cli import run_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(real_home, real_features, tmp_path_factory):
    home = tmp_path_factory.mktemp("smoke-home")
    # Share the real data's cache and wheel rather than fetching them again.
    (home / "cache").symlink_to(real_home / "cache")
    (home / "downloads").symlink_to(real_home / "downloads")
    result = run_sweep(
        "launch", str(REPO / "studies" / "smoke.toml"), "--data-source", "recbole",
        env={"SWEEP_HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{home / 'optuna.db'}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return result, study, client


def test_smoke_study_reaches_its_trial_count(smoke):
    _, study, _ = smoke
    spec = load_study(REPO / "studies" / "smoke.toml")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == spec.study.n_trials


def test_baselines_ran_first_with_their_exact_params(smoke):
    _, study, _ = smoke
    spec = load_study(REPO / "studies" / "smoke.toml")
    for trial, baseline in zip(study.trials, spec.baselines, strict=False):
        assert trial.params == baseline


def test_one_child_run_per_trial_linked_both_ways(smoke):
    _, study, client = smoke
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.experiment_id == study.user_attrs[EXPERIMENT_ATTR]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(runs) == len(study.trials)
    by_id = {r.info.run_id: r for r in runs}
    for trial in study.trials:
        run = by_id[trial.user_attrs[RUN_ID_ATTR]]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["optuna.study_name"] == "smoke"
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["sweep.trial_state"] == trial.state.name
        assert run.info.status == "FINISHED"


def test_child_runs_hold_params_and_curves(smoke):
    _, study, client = smoke
    spec = load_study(REPO / "studies" / "smoke.toml")
    validations = list(range(spec.training.validation_freq, spec.training.epochs + 1,
                             spec.training.validation_freq))  # fmt: skip
    for trial in study.trials:
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        params = run.data.params
        assert {k: params[k] for k in ("depth", "width", "embedding_dim")} == {
            k: str(trial.params[k]) for k in ("depth", "width", "embedding_dim")
        }
        assert float(params["learning_rate"]) == trial.params["learning_rate"]
        assert json.loads(params["layer_sizes"]) == [
            trial.params["width"] * 2**i for i in reversed(range(trial.params["depth"]))
        ]
        history = client.get_metric_history(run.info.run_id, "val_top100_accuracy")
        assert [m.step for m in history] == validations
        assert max(m.value for m in history) == pytest.approx(trial.value)
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(1, spec.training.epochs + 1))
        assert run.data.metrics["best_val_top100_accuracy"] == pytest.approx(
            trial.value
        )
        assert run.data.metrics["best_epoch"] == trial.user_attrs["best_epoch"]


def test_summary_table_and_browse_command(smoke):
    result, study, _ = smoke
    assert "val top-100" in result.stdout
    best = study.best_trial
    assert f"{best.value:.4f}" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
