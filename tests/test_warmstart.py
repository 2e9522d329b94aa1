"""Warm start: a new study begins with the finished trials of earlier ones."""

import mlflow
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep import config, keys, space, stores, study
from sweep.errors import ConfigError
from tests.helpers import STUDY, assert_one_line_error, run_main

OLD_SPACE = {
    "depth": CategoricalDistribution([1, 2, 3]),
    "width": CategoricalDistribution([8, 16]),
    "embedding_dim": CategoricalDistribution([8, 16]),
    "learning_rate": FloatDistribution(0.01, 0.5, log=True),
}


def _file(tmp_path, name, rates="0.05, 0.1", baselines="", sampler="tpe"):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n_trials=2, sampler=sampler, rates=rates,
                                 baselines=baselines))  # fmt: skip
    return path


BASELINE = (
    "[[baselines]]\ndepth = {}\nwidth = 8\nembedding_dim = 16\nlearning_rate = 0.05\n"
)


def _source(storage, name, text, trials):
    """A finished study `name` launched from `text`, holding `trials`."""
    source = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    source.set_user_attr(keys.STUDY_FILE_ATTR, text)
    for value, state, params in trials:
        source.add_trial(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params,
                distributions=OLD_SPACE,
                intermediate_values={1: 0.1, 2: value or 0.05},
                user_attrs={keys.RUN_ID_ATTR: f"run-{value}", keys.BEST_EPOCH_ATTR: 2},
            )
        )
    return source


def _params(depth, rate):
    return {"depth": depth, "width": 8, "embedding_dim": 16, "learning_rate": rate}


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SWEEP_HOME", str(home))
    return stores.resolve_stores(home)


def test_finished_trials_inside_the_space_are_imported(tmp_path, home):
    storage = stores.open_storage(home.storage)
    text = _file(tmp_path, "old").read_text()
    _source(storage, "old", text, [
        (0.30, TrialState.COMPLETE, _params(1, 0.05)),
        (None, TrialState.PRUNED, _params(2, 0.1)),
        (0.35, TrialState.COMPLETE, _params(3, 0.05)),  # depth 3: outside
        (0.32, TrialState.COMPLETE, _params(1, 0.2)),  # rate 0.2: outside
    ])  # fmt: skip
    # Trained another way: nothing of it is imported.
    _source(storage, "longer", text.replace("epochs = 2", "epochs = 3"),
            [(0.40, TrialState.COMPLETE, _params(1, 0.05))])  # fmt: skip
    # Two baselines: the first is an imported trial's configuration.
    baselines = BASELINE.format(1) + BASELINE.format(2)
    new = config.load_study(_file(tmp_path, "new", baselines=baselines))
    new = config.with_warm_start(new, ["old", "longer"])
    session = study.launch(new, home)
    assert session.warm_start == (
        "warm start: 2 finished trials imported from 'old' (2), 'longer' (0); "
        "skipped 2 outside the [space] and 1 trained with another [training] or "
        "[data]"
    )
    trials = session.study.get_trials()
    # The imported trials first, then the baselines' queue: only the one
    # whose result is not among them.
    assert [t.state for t in trials] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING,
    ]  # fmt: skip
    assert trials[2].system_attrs["fixed_params"]["depth"] == 2
    first = trials[0]
    assert first.value == 0.30 and first.intermediate_values == {1: 0.1, 2: 0.30}
    assert first.user_attrs[keys.IMPORTED_FROM_ATTR] == {"study": "old", "trial": 0}
    assert first.user_attrs[keys.RUN_ID_ATTR] == "run-0.3"  # the source's run
    assert first.distributions["learning_rate"] == CategoricalDistribution([0.05, 0.1])
    # Not counted in n_trials: two new trials still to run.
    assert session.target == 2 + 2 and session.imported == 2
    assert session.study.user_attrs[keys.TARGET_ATTR] == 4
    uri = home.tracking_uri
    parent = session.study.user_attrs[keys.PARENT_RUN_ATTR]
    tags = mlflow.MlflowClient(uri, registry_uri=uri).get_run(parent).data.tags
    assert tags[keys.WARM_START_TAG] == session.warm_start
    # `resume --n-trials 3` means three trials of its own.
    resumed = study.resume("new", home, n_trials=3)
    assert resumed.target == 3 + 2


def test_an_unknown_study_to_start_from_is_one_line_and_creates_nothing(tmp_path, home):
    path = _file(tmp_path, "new")
    result = run_main("launch", str(path), "--warm-start", "ghost")
    assert_one_line_error(
        result, "warm start from study 'ghost': there is no such study", "none)"
    )
    # Told before the data was built or a store created.
    folder = tmp_path / "home"
    assert not folder.exists() or not any(folder.iterdir())
    # Likewise with a storage that holds other studies.
    storage = stores.open_storage(home.storage)
    optuna.create_study(study_name="other", storage=storage)
    result = run_main("launch", str(path), "--warm-start", "ghost")
    assert_one_line_error(
        result, "warm start from study 'ghost'", "(studies there: other)"
    )
    assert not {p.name for p in folder.iterdir()} & {"mlflow.db", "cache"}
    optuna.delete_study(study_name="other", storage=storage)
    assert [s.study_name for s in storage.get_all_studies()] == []
    uri = home.tracking_uri
    assert mlflow.MlflowClient(uri).get_experiment_by_name("new") is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--warm-start", "new"], "--warm-start 'new': expected the name of another"),
        (["--warm-start", "a b"], "--warm-start 'a b': expected the name of another"),
    ],
)
def test_bad_warm_start_flags_are_one_line(tmp_path, home, args, message):
    result = run_main("launch", str(_file(tmp_path, "new")), *args)
    assert_one_line_error(result, message)


def test_bad_warm_start_in_the_file_is_one_line(tmp_path):
    text = STUDY.format(name="new", n_trials=2, sampler="tpe", rates="0.1",
                        baselines="")  # fmt: skip
    text = text.replace('pruner = "none"', 'pruner = "none"\nwarm_start = "old"')
    with pytest.raises(ConfigError, match=r"\[study\] warm_start = \"old\": expected"):
        config.parse_study(text, tmp_path / "new.toml")


@pytest.mark.slow
def test_a_warm_started_launch_runs_its_own_trials_after_the_imported(
    tmp_path, cached_home, synthetic_spec
):
    env = {"SWEEP_HOME": str(cached_home)}
    old = run_main("launch", str(_file(tmp_path, "old")), "--data-source",
                   synthetic_spec, env=env)  # fmt: skip
    assert old.returncode == 0, old.stderr
    path = _file(tmp_path, "new").read_text().replace("n_trials = 2", "n_trials = 1")
    (tmp_path / "new.toml").write_text(
        path.replace('pruner = "none"', 'pruner = "none"\nwarm_start = ["old"]')
    )
    new = run_main("launch", str(tmp_path / "new.toml"), "--data-source",
                   synthetic_spec, env=env)  # fmt: skip
    assert new.returncode == 0, new.stderr
    assert "warm start: 2 finished trials imported from 'old' (2)" in new.stdout
    assert "study 'new': 1 trials of 2 epochs" in new.stdout
    url = f"sqlite:///{cached_home / 'optuna.db'}"
    source = optuna.load_study(study_name="old", storage=url).trials
    trials = optuna.load_study(study_name="new", storage=url).trials
    assert len(trials) == 3
    for imported, original in zip(trials[:2], source, strict=True):
        assert imported.params == original.params
        assert imported.value == original.value
        assert (
            imported.user_attrs[keys.RUN_ID_ATTR]
            == (original.user_attrs[keys.RUN_ID_ATTR])
        )
    # The new trial trained in the new study's own MLflow experiment.
    assert keys.IMPORTED_FROM_ATTR not in trials[2].user_attrs
    uri = f"sqlite:///{cached_home / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(trials[2].user_attrs[keys.RUN_ID_ATTR])
    assert run.info.experiment_id == client.get_experiment_by_name("new").experiment_id
    status = run_main("status", "new", env=env)
    assert "new: 3 of 3 finished" in status.stdout


def test_joining_with_another_file_is_refused_before_the_data(tmp_path, home):
    launched = _file(tmp_path, "j").read_text()
    storage = stores.open_storage(home.storage)
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    study.set_user_attr(keys.STUDY_FILE_ATTR, launched)
    other = tmp_path / "other.toml"
    other.write_text(launched.replace("seed = 3", "seed = 4"))
    result = run_main("launch", str(other), "--join")
    assert_one_line_error(result, "differs from the file study 'j' was launched",
                          "[study] seed: 3 -> 4")  # fmt: skip
    # Told before the data was built or the MLflow store made.
    assert not {p.name for p in (tmp_path / "home").iterdir()} & {"mlflow.db", "cache"}


def test_a_warm_start_from_a_twin_study_does_not_propose_its_points_again(
    tmp_path, home
):
    # The source ran the same file (seed, random sampler): its trials are the
    # first proposals a study of that seed makes.
    storage = stores.open_storage(home.storage)
    path = _file(tmp_path, "old", sampler="random")
    old = config.load_study(path)
    twin = optuna.create_study(storage=storage, study_name="old",
                               sampler=space.make_sampler(old.study),
                               direction="maximize")  # fmt: skip
    twin.set_user_attr(keys.STUDY_FILE_ATTR, path.read_text())
    for _ in range(4):
        twin.tell(twin.ask(space.distributions(old)), 0.3)
    proposed = [t.params for t in twin.trials]
    new = config.load_study(_file(tmp_path, "new", sampler="random"))
    session = study.launch(config.with_warm_start(new, ["old"]), home)
    assert session.imported == 4
    fresh = [session.study.ask(space.distributions(new)).params for _ in range(4)]
    assert fresh != proposed
