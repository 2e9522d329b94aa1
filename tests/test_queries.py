"""`sweep best` and `sweep trials` on a real SQLite store."""

import csv
import io
import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep import cli, confirm, keys, queries
from tests.helpers import assert_one_line_error, run_main, start_sweep, study_in_home

DISTRIBUTIONS = {
    "depth": CategoricalDistribution([1, 2]),
    "width": CategoricalDistribution([8, 16]),
    "embedding_dim": CategoricalDistribution([8, 16]),
    "learning_rate": FloatDistribution(0.01, 0.5),
}


def _trial(state, value=None, depth=1, attrs=None, intermediate=None):
    return create_trial(
        state=state,
        value=value,
        params={"depth": depth, "width": 8, "embedding_dim": 16, "learning_rate": 0.1},
        distributions=DISTRIBUTIONS,
        user_attrs=attrs or {},
        intermediate_values=intermediate or {},
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A sweep home whose Optuna store holds study `s`: 2 complete, 1 pruned, 1 fail."""
    home = tmp_path / "home"
    study, storage = study_in_home(home, monkeypatch)
    study.set_user_attr(keys.EXPERIMENT_ATTR, "1")
    study.set_user_attr(keys.PARENT_RUN_ATTR, "parent")
    study.add_trial(
        _trial(
            TrialState.COMPLETE,
            0.30,
            1,
            {keys.BEST_EPOCH_ATTR: 4, keys.RUN_ID_ATTR: "r0", keys.BASELINE_ATTR: True},
        )
    )
    study.add_trial(
        _trial(
            TrialState.COMPLETE,
            0.36,
            2,
            {keys.BEST_EPOCH_ATTR: 2, keys.RUN_ID_ATTR: "r1"},
        )
    )
    study.add_trial(
        _trial(
            TrialState.PRUNED, None, 2, {keys.PRUNED_AT_ATTR: 1}, intermediate={1: 0.05}
        )
    )
    study.add_trial(_trial(TrialState.FAIL, None, 1, {
        keys.FAIL_REASON_ATTR: "diverged"}))  # fmt: skip
    return home, study, storage


def test_best_is_the_best_complete_trial_as_json(home):
    result = run_main("best", "s", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["study"] == "s" and record["number"] == 1
    assert record["params"] == {
        "depth": 2, "width": 8, "embedding_dim": 16, "learning_rate": 0.1,
    }  # fmt: skip
    assert record["value"] == 0.36 and record["best_epoch"] == 2
    assert record["mlflow_run_id"] == "r1" and record["confirmed"] is None
    text = run_main("best", "s")
    assert "best: trial 1 (depth 2 width 8 emb 16 lr 0.1), val top-100 0.3600" in (
        text.stdout
    )


def test_best_names_the_confirmed_champion(home):
    _, study, storage = home
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 2, "seeds": 2})
    companion = confirm.open_companion(study, storage)
    for value, finalist, seed, depth in [
        (0.33, 1, 11, 2), (0.35, 1, 12, 2), (0.29, 0, 11, 1), (0.30, 0, 12, 1),
    ]:  # fmt: skip
        companion.add_trial(_trial(TrialState.COMPLETE, value, depth, {
            keys.FINALIST_OF_ATTR: finalist, keys.SEED_ATTR: seed,
            keys.RUN_ID_ATTR: f"c{finalist}{seed}"}))  # fmt: skip
    record = json.loads(run_main("best", "s", "--json").stdout)
    champion = record["confirmed"]
    assert champion["number"] == 1 and champion["seeds"] == 2
    assert champion["mean"] == pytest.approx(0.34)
    assert champion["values"] == [0.33, 0.35]
    assert champion["best_run"] == {"seed": 12, "value": 0.35, "mlflow_run_id": "c112"}
    text = run_main("best", "s").stdout
    assert "confirmed champion: trial 1" in text and "0.3400 +- 0.0141" in text


def test_trials_in_each_format_and_state(home):
    records = json.loads(run_main("trials", "s", "--format", "json").stdout)
    assert [(r["number"], r["state"]) for r in records] == [
        (0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED"), (3, "FAIL"),
    ]  # fmt: skip
    assert records[0]["baseline"] is True and records[2]["value"] == 0.05
    assert records[2]["pruned_at_epoch"] == 1
    assert records[3]["fail_reason"] == "diverged" and records[3]["value"] is None
    listed = run_main("trials", "s", "--format", "csv", "--state", "complete")
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert [r["number"] for r in rows] == ["0", "1"]
    assert rows[1]["depth"] == "2" and rows[1]["mlflow_run_id"] == "r1"
    table = run_main("trials", "s", "--state", "pruned").stdout.splitlines()
    assert len(table) == 3 and table[2].split()[:2] == ["2", "PRUNED"]


def test_cli_choices_are_the_queries_own():
    parser = cli.build_parser()
    trials = parser._subparsers._group_actions[0].choices["trials"]  # noqa: SLF001
    choices = {a.dest: a.choices for a in trials._actions if a.choices}  # noqa: SLF001
    assert tuple(choices["format"]) == queries.FORMATS
    assert tuple(choices["state"]) == tuple(queries.STATES)


def test_bad_queries_are_one_line(home, tmp_path):
    assert_one_line_error(run_main("best", "ghost"), "no study 'ghost'",
                          "studies there: s")  # fmt: skip
    _, study, storage = home
    optuna.create_study(study_name="empty", storage=storage)
    assert_one_line_error(
        run_main("best", "empty"), "study 'empty' has no complete trial yet"
    )
    bad = run_main("trials", "s", "--state", "done")
    assert_one_line_error(bad, "argument --state: invalid choice: 'done'", code=2)


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize("args", [("trials", "s"), ("best", "s", "--json")])
def test_a_reader_gone_early_ends_quietly(home, args, unbuffered):
    # `sweep trials s | head -1`: the pipe closes before sweep has written,
    # met at the write itself (unbuffered) or at the flush of its buffer.
    proc = start_sweep(*args, env={"PYTHONUNBUFFERED": unbuffered})
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, stderr
    assert stderr == ""


def test_a_queued_trial_shows_the_configuration_it_was_queued_with(home):
    _, study, _ = home
    study.enqueue_trial(
        {"depth": 2, "width": 16, "embedding_dim": 8, "learning_rate": 0.2}
    )
    (record,) = json.loads(
        run_main("trials", "s", "--format", "json", "--state", "waiting").stdout
    )
    assert record["state"] == "WAITING"
    assert record["params"] == {
        "depth": 2, "width": 16, "embedding_dim": 8, "learning_rate": 0.2,
    }  # fmt: skip
    table = run_main("trials", "s", "--state", "waiting").stdout.splitlines()
    assert table[2].split()[:6] == ["4", "WAITING", "2", "16", "8", "0.2"]
