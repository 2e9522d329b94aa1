"""`sweep enqueue`: hand-picked configurations queued into a study."""

import optuna
import pytest

from sweep import keys
from tests.helpers import STUDY, assert_one_line_error, run_main, study_in_home

PICK = ["depth=2", "width=16", "embedding_dim=8", "learning_rate=0.1"]


@pytest.fixture
def queued(tmp_path, monkeypatch):
    """Study `s` (launched from the helpers' study file) in a fresh home."""
    study, _ = study_in_home(tmp_path / "home", monkeypatch)
    text = STUDY.format(
        name="s", n_trials=2, sampler="random", rates="0.05, 0.1", baselines=""
    )
    study.set_user_attr(keys.STUDY_FILE_ATTR, text)
    study.set_user_attr(keys.TARGET_ATTR, 2)
    return study, tmp_path


def _waiting(study):
    trials = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    return [t.system_attrs["fixed_params"] for t in trials]


def test_a_configuration_is_queued_and_the_target_raised(queued):
    study, _ = queued
    result = run_main("enqueue", "s", *PICK)
    assert result.returncode == 0, result.stderr
    assert "queued 1 configuration(s) in study 's'" in result.stdout
    assert _waiting(study) == [
        {"depth": 2, "width": 16, "embedding_dim": 8, "learning_rate": 0.1}
    ]
    assert study.trials[0].user_attrs[keys.ENQUEUED_ATTR] is True
    again = optuna.load_study(study_name="s", storage=study._storage)  # noqa: SLF001
    assert again.user_attrs[keys.TARGET_ATTR] == 3


def test_a_file_of_tables_is_queued_whole_or_not_at_all(queued):
    study, tmp_path = queued
    good = tmp_path / "picks.toml"
    table = (
        "[[baselines]]\ndepth = {}\nwidth = 8\nembedding_dim = 16\n"
        "learning_rate = 0.05\n"
    )
    good.write_text(table.format(1) + table.format(2))
    assert run_main("enqueue", "s", "--file", str(good)).returncode == 0
    assert [p["depth"] for p in _waiting(study)] == [1, 2]
    bad = tmp_path / "bad.toml"
    bad.write_text(table.format(1) + table.format(3))
    result = run_main("enqueue", "s", "--file", str(bad))
    assert_one_line_error(
        result, f"{bad}: [[baselines]] #2: depth = 3: expected a value the [space]"
    )
    assert len(_waiting(study)) == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["depth=9", *PICK[1:]], "study 's': depth = 9: expected a value the [space] "
         "can propose (between 1 and 2)"),
        (["depth=abc", *PICK[1:]], 'study \'s\': depth = "abc": expected a whole'),
        ([*PICK, "dropout=0.1"], "dropout is not a known key"),
        (PICK[:3], "learning_rate = (missing)"),
        (["depth", *PICK[1:]], "'depth' is not NAME=VALUE"),
        ([*PICK, "depth=1"], "depth is given twice"),
        ([], "give the configuration as NAME=VALUE arguments"),
    ],
)  # fmt: skip
def test_a_bad_configuration_is_one_line_and_queues_nothing(queued, args, fragment):
    study, _ = queued
    assert_one_line_error(run_main("enqueue", "s", *args), fragment)
    assert _waiting(study) == []


def test_enqueue_into_an_unknown_study_is_one_line(queued):
    assert_one_line_error(run_main("enqueue", "ghost", *PICK), "no study 'ghost'")


@pytest.mark.slow
def test_a_resumed_worker_runs_the_queued_configuration(tmp_path, cached_home,
                                                        synthetic_spec):  # fmt: skip
    path = tmp_path / "q.toml"
    path.write_text(STUDY.format(name="q", n_trials=1, sampler="random",
                                 rates="0.05, 0.1", baselines=""))  # fmt: skip
    env = {"SWEEP_HOME": str(cached_home)}
    launch = run_main("launch", str(path), "--data-source", synthetic_spec, env=env)
    assert launch.returncode == 0, launch.stderr
    assert run_main("enqueue", "q", *PICK, env=env).returncode == 0
    resume = run_main("resume", "q", "--data-source", synthetic_spec, env=env)
    assert resume.returncode == 0, resume.stderr
    study = optuna.load_study(
        study_name="q", storage=f"sqlite:///{cached_home / 'optuna.db'}"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[1].params == {
        "depth": 2, "width": 16, "embedding_dim": 8, "learning_rate": 0.1,
    }  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["s", "--server-wait", "5s", *PICK],
        ["s", PICK[0], "--server-wait", "5s", *PICK[1:]],
    ],
)
def test_values_may_follow_a_flag(queued, args):
    study, _ = queued
    result = run_main("enqueue", *args)
    assert result.returncode == 0, result.stderr
    assert _waiting(study) == [
        {"depth": 2, "width": 16, "embedding_dim": 8, "learning_rate": 0.1}
    ]


def test_an_unknown_flag_after_the_values_is_still_a_usage_error(queued):
    study, _ = queued
    result = run_main("enqueue", "s", *PICK, "--bogus")
    assert_one_line_error(result, "unrecognized arguments: --bogus", code=2)
    assert _waiting(study) == []


def test_a_value_without_its_name_after_a_flag_is_told_as_such(queued):
    study, _ = queued
    before = run_main("enqueue", "s", "depth", "2")
    after = run_main("enqueue", "s", "--server-wait", "5s", "depth", "2")
    assert after.returncode == before.returncode == 1
    assert after.stderr == before.stderr and "unrecognized" not in after.stderr
    assert _waiting(study) == []
