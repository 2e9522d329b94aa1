"""`sweep launch studies/smoke.toml` on the real MovieLens 100k, read back from
both stores."""

import csv
import json
from pathlib import Path

import pytest

from sweep.config import load_study
from sweep.keys import BEST_ARTIFACT, EXPERIMENT_ATTR, PARENT_RUN_ATTR, RUN_ID_ATTR
from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(smoke):
    return smoke[:3]


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


def test_complete_trials_keep_their_best_weights(smoke):
    _, study, client = smoke
    for trial in study.trials:
        run_id = trial.user_attrs[RUN_ID_ATTR]
        kept = {f.path for f in client.list_artifacts(run_id, BEST_ARTIFACT)}
        names = ("model.weights.h5", "best.json")
        assert kept == {f"{BEST_ARTIFACT}/{name}" for name in names}
        local = client.download_artifacts(run_id, f"{BEST_ARTIFACT}/best.json")
        info = json.loads(Path(local).read_text())
        assert info["best_epoch"] == trial.user_attrs["best_epoch"]
        assert info["best_val_top100_accuracy"] == pytest.approx(trial.value)
        assert info["config"]["depth"] == trial.params["depth"]


def test_study_run_holds_the_report(smoke, tmp_path):
    _, study, client = smoke
    parent = study.user_attrs[PARENT_RUN_ATTR]
    names = {f.path for f in client.list_artifacts(parent, "report/optuna")}
    for plot in ("optimization_history", "param_importances", "parallel_coordinate",
                 "intermediate_values"):  # fmt: skip
        assert {f"report/optuna/{plot}.html", f"report/optuna/{plot}.png"} <= names
    png = client.download_artifacts(parent, "report/top100_accuracy_vs_epoch.png",
                                    str(tmp_path))  # fmt: skip
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    table = Path(client.download_artifacts(parent, "trials.csv", str(tmp_path)))
    rows = list(csv.DictReader(table.open()))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    assert [float(r["value"]) for r in rows] == pytest.approx(
        [t.value for t in study.trials]
    )
    run = client.get_run(parent)
    assert run.data.metrics["best_val_top100_accuracy"] == pytest.approx(
        study.best_value
    )
    description = run.data.tags["mlflow.note.content"]
    assert f"trial {study.best_trial.number}" in description
    assert f"{study.best_value:.4f}" in description
    assert "sweep export smoke --out" in description


def test_summary_table_and_browse_command(smoke):
    result, study, _ = smoke
    assert "val top-100" in result.stdout
    best = study.best_trial
    assert f"{best.value:.4f}" in result.stdout
    assert "Browse the trials: sweep ui, then open http://127.0.0.1:5000/#/" in (
        result.stdout
    )
