"""`sweep launch` on the synthetic data: what the stores hold afterwards."""

import sqlite3

import mlflow
import optuna
import pytest

from sweep import config, train
from sweep import stores as stores_module
from sweep import study as study_module
from sweep.errors import SweepError
from sweep.keys import BEST_ARTIFACT, PARENT_RUN_ATTR, RUN_ID_ATTR
from tests import synthetic
from tests.test_cli import assert_one_line_error, run_sweep

STUDY = """
[study]
name = "{name}"
n_trials = {n_trials}
seed = 3
sampler = "{sampler}"
pruner = "none"

[training]
epochs = 2
validation_freq = 1
batch_size = 100

[space]
depth = {{ low = 1, high = 2 }}
width = {{ choices = [8, 16] }}
embedding_dim = {{ choices = [8, 16] }}
learning_rate = {{ choices = [{rates}] }}
{baselines}
"""


def study_file(tmp_path, name="t", n_trials=2, sampler="tpe", rates="0.05, 0.1",
               baselines=""):  # fmt: skip
    path = tmp_path / f"{name}.toml"
    path.write_text(
        STUDY.format(
            name=name,
            n_trials=n_trials,
            sampler=sampler,
            rates=rates,
            baselines=baselines,
        )  # fmt: skip
    )
    return path


def baseline(lr):
    return (
        f"[[baselines]]\ndepth = 1\nwidth = 8\nembedding_dim = 8\n"
        f"learning_rate = {lr}\n"
    )


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return (
        f"grouplens:{synthetic.write_grouplens(tmp_path_factory.mktemp('ml') / 'ml')}"
    )


def launch(path, spec, home, *extra):
    return run_sweep(
        "launch",
        str(path),
        "--data-source",
        spec,
        *extra,
        env={"SWEEP_HOME": str(home)},
    )


def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, spec):
    path = study_file(
        tmp_path,
        n_trials=1,
        rates="1e30, 0.05",
        baselines=baseline(1e30) + baseline(0.05),
    )
    home = tmp_path / "home"
    result = launch(path, spec, home)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{home / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"]
    assert "diverged" in study.trials[0].user_attrs["fail_reason"]
    assert "failed: training loss diverged" in result.stdout + result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    failed = client.get_run(study.trials[0].user_attrs[RUN_ID_ATTR])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["sweep.trial_state"] == "FAIL"
    assert "diverged" in failed.data.tags["sweep.fail_reason"]
    done = client.get_run(study.trials[1].user_attrs[RUN_ID_ATTR])
    assert done.info.status == "FINISHED"
    # Only the complete trial keeps a model.
    assert client.list_artifacts(failed.info.run_id, BEST_ARTIFACT) == []
    kept = client.list_artifacts(done.info.run_id, BEST_ARTIFACT)
    assert sorted(f.path.rsplit("/", 1)[1] for f in kept) == [
        "best.json",
        "model.weights.h5",
    ]


def test_a_launched_study_its_stores_its_status_and_a_second_launch(tmp_path, spec):
    path = study_file(tmp_path, n_trials=1)
    home = tmp_path / "home"
    assert launch(path, spec, home).returncode == 0
    # Two SQLite files under SWEEP_HOME: Optuna and MLflow each keep their own
    # alembic_version table.
    for name in ("optuna.db", "mlflow.db"):
        tables = sqlite3.connect(home / name).execute(
            "select name from sqlite_master where type='table'"
        )
        assert "alembic_version" in {row[0] for row in tables}
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{home / 'optuna.db'}")
    parent = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(
        study.user_attrs[PARENT_RUN_ATTR]
    )
    assert parent.data.tags["sweep.role"] == "study"
    assert parent.info.status == "FINISHED"

    again = launch(path, spec, home)
    assert_one_line_error(again, "study 't' already exists", "sweep resume t")
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len(study.trials) == 1

    result = run_sweep("status", env={"SWEEP_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "t: 1 of 1 finished (1 complete)" in result.stdout
    assert "best: trial" in result.stdout
    assert "workers alive: none" in result.stdout
    missing = run_sweep("status", "nope", env={"SWEEP_HOME": str(home)})
    assert_one_line_error(missing, "no study 'nope'")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("n_trials = 2", "n_trials = -2", "[study] n_trials = -2"),
        (
            "depth = { low = 1, high = 2 }",
            "depth = { low = 1, high = 100000 }",
            "[space] depth.high = 100000: expected at most 16 dense layers",
        ),
        (
            "width = { choices = [8, 16] }",
            "width = { choices = [16, 10000000] }",
            "[space] is too large for this machine: its largest configuration, "
            "depth 2, width 10000000",
        ),
    ],
)
def test_bad_study_file_creates_nothing(tmp_path, spec, old, new, message):
    text = study_file(tmp_path).read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new))
    home = tmp_path / "home"
    result = launch(bad, spec, home)
    assert_one_line_error(result, f"{bad}: {message}")
    assert not home.exists() or not any(home.iterdir())


def test_same_study_file_proposes_the_same_first_trials(tmp_path, spec):
    path = study_file(tmp_path, n_trials=2, sampler="random", rates="0.05, 0.1, 0.2")
    params = []
    for home in (tmp_path / "a", tmp_path / "b"):
        assert launch(path, spec, home).returncode == 0
        study = optuna.load_study(
            study_name="t", storage=f"sqlite:///{home / 'optuna.db'}"
        )
        params.append([t.params for t in study.trials])
        # Each trial's seed (weights, data order) follows from study seed + number.
        params.append([t.values for t in study.trials])
    assert params[0] == params[2]
    assert params[1] == params[3]


def test_four_workers_share_one_sqlite_study_exactly(tmp_path, spec):
    path = study_file(tmp_path, name="par", n_trials=6, sampler="random",
                      rates="0.05, 0.1, 0.2")  # fmt: skip
    home = tmp_path / "home"
    result = launch(path, spec, home, "--workers", "4")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    study = optuna.load_study(
        study_name="par", storage=f"sqlite:///{home / 'optuna.db'}"
    )
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    workers = {t.user_attrs["sweep.worker"]["pid"] for t in finished}
    assert len(workers) > 1, "the trials did not spread over the workers"
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("par").experiment_id],
        "tags.`sweep.role` = 'trial'",
    )
    assert sum(r.info.status == "FINISHED" for r in runs) == 6
    assert all(r.info.status != "RUNNING" for r in runs)


def test_resume_of_unknown_study_is_one_line(tmp_path, spec):
    result = run_sweep("resume", "ghost", "--data-source", spec,
                       env={"SWEEP_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(result, "no study 'ghost'", "sweep launch STUDY_FILE")


def test_resume_raises_the_target_and_never_requeues_baselines(tmp_path, spec):
    path = study_file(tmp_path, n_trials=2, sampler="random", rates="0.05, 0.1, 0.2",
                      baselines=baseline(0.05))  # fmt: skip
    home = tmp_path / "home"
    assert launch(path, spec, home).returncode == 0
    result = run_sweep("resume", "t", "--n-trials", "4", "--data-source", spec,
                       env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    baselines = [t for t in study.trials if t.user_attrs.get("sweep.baseline")]
    assert len(baselines) == 1


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_resumed_and_parallel_samplers_do_not_replay_proposals(sampler):
    from sweep.config import StudySettings
    from sweep.space import make_sampler

    settings = StudySettings(name="x", n_trials=5, seed=42, sampler=sampler)
    space = {"lr": optuna.distributions.FloatDistribution(0.01, 0.5, log=True)}

    def first(s):
        study = optuna.create_study(sampler=s)
        return [study.ask(space).params["lr"] for _ in range(3)]

    launched = first(make_sampler(settings))
    assert launched == first(make_sampler(settings))  # reproducible launch
    assert set(first(make_sampler(settings, 4))).isdisjoint(launched)  # resumed
    assert first(make_sampler(settings, 4, 1)) != first(make_sampler(settings, 4, 0))


def test_an_upload_that_keeps_failing_fails_its_trial_and_ends_its_run(
    tmp_path, synthetic_features, monkeypatch
):
    # Checkpoints that never reach the disk: every upload of one fails, also
    # the one made again when the run ends.
    monkeypatch.setattr(train.Checkpoint, "save", lambda self, path: None)
    monkeypatch.setattr(study_module, "MAX_CONSECUTIVE_FAILURES", 1)
    text = STUDY.format(name="u", n_trials=1, sampler="random", rates="0.05",
                        baselines="")  # fmt: skip
    stores = stores_module.resolve_stores(tmp_path / "home")
    session = study_module.launch(config.parse_study(text, tmp_path / "u.toml"), stores)
    with pytest.raises(SweepError, match="all failed"):
        study_module.run(session, synthetic_features, tmp_path / "ckpt", progress=False)
    trials = session.study.get_trials()
    assert trials and all(t.state.name == "FAIL" for t in trials)
    assert "FileNotFoundError" in trials[0].user_attrs["fail_reason"]
    client = mlflow.MlflowClient(stores.tracking_uri)
    run = client.get_run(trials[0].user_attrs[RUN_ID_ATTR])
    assert run.info.status == "FAILED"
