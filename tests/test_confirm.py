"""The confirmation stage: finalists, fresh seeds, the champion, on real stores."""

import json

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep import config, confirm, export, keys, retries, space, stores
from sweep.errors import ConfigError, TrialFailed
from sweep.objective import Objective
from sweep.study import run_trials
from tests.helpers import STUDY, assert_one_line_error, run_main, run_sweep

DISTRIBUTIONS = {
    "depth": CategoricalDistribution([1, 2]),
    "width": CategoricalDistribution([8, 16]),
    "embedding_dim": CategoricalDistribution([8, 16]),
    "learning_rate": FloatDistribution(0.01, 0.5),
}


def _params(depth=1, width=8, rate=0.1):
    return {"depth": depth, "width": width, "embedding_dim": 16, "learning_rate": rate}


def _trial(value, state=TrialState.COMPLETE, **params):
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=_params(**params),
        distributions=DISTRIBUTIONS,
    )


def _run(value, finalist, seed, diverged=False, **params):
    attrs = {
        keys.FINALIST_OF_ATTR: finalist,
        keys.SEED_ATTR: seed,
        keys.BEST_EPOCH_ATTR: 2,
    }
    if diverged:
        attrs[keys.DIVERGED_ATTR] = True
    trial = _trial(value, **params)
    trial.user_attrs.update(attrs)
    return trial


@pytest.fixture
def searched(tmp_path):
    """A search study on a real SQLite file: three configurations, one twice."""
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr(keys.EXPERIMENT_ATTR, "1")
    study.set_user_attr(keys.PARENT_RUN_ATTR, "parent")
    for value, params in [
        (0.30, {"depth": 1}),
        (0.36, {"depth": 2}),
        (0.34, {"depth": 1}),  # the first configuration again, better
        (0.33, {"depth": 2, "width": 16}),
        (None, {"depth": 1, "width": 16}),
    ]:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(_trial(value, state, **params))
    return study, storage


def _confirmed(searched, finalists, seeds, runs):
    """The searched study with a plan, and its stage holding `runs`."""
    study, storage = searched
    study.set_user_attr(
        keys.CONFIRM_PLAN_ATTR, {"finalists": finalists, "seeds": seeds}
    )
    companion = confirm.open_companion(study, storage)
    for value, finalist, seed, params in runs:
        companion.add_trial(_run(value, finalist, seed, **params))
    return study, companion


def test_finalists_are_the_best_distinct_configurations(searched):
    study, _ = searched
    chosen = confirm.finalists(study.get_trials(), 3)
    assert [t.number for t in chosen] == [1, 2, 3]
    assert [t.number for t in confirm.finalists(study.get_trials(), 1)] == [1]


def test_seeds_are_derived_repeatably_and_never_a_search_seed():
    search = {space.trial_seed(42, n) for n in range(100)}
    seeds = confirm.confirmation_seeds(42, 5, search)
    assert seeds == confirm.confirmation_seeds(42, 5, search)
    assert len(set(seeds)) == 5 and not set(seeds) & search
    # A seed that is taken is skipped, the next one used instead.
    assert confirm.confirmation_seeds(42, 2, {seeds[0]}) == seeds[1:3]
    assert confirm.confirmation_seeds(43, 5, set()) != seeds


def test_the_plan_is_queued_once_and_duplicates_are_found(searched):
    study, storage = searched
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 2, "seeds": 2})
    companion = confirm.open_companion(study, storage)
    plan = confirm.stored_plan(study)
    assert confirm.queue(study, companion, plan, 42) == 4
    assert confirm.queue(study, companion, plan, 42) == 4  # nothing more queued
    queued = companion.get_trials()
    assert len(queued) == 4
    assert {t.user_attrs[keys.FINALIST_OF_ATTR] for t in queued} == {1, 2}
    assert len({t.user_attrs[keys.SEED_ATTR] for t in queued}) == 2
    # Reopened, not created again; the parent run is the study's.
    again = confirm.open_companion(study, storage)
    assert again.user_attrs[keys.CONFIRM_OF_ATTR] == "s"
    assert again.user_attrs[keys.PARENT_RUN_ATTR] == "parent"
    # The same finalist and seed queued a second time is a duplicate of the first.
    first = queued[0]
    companion.enqueue_trial(
        first.system_attrs["fixed_params"], user_attrs=first.user_attrs
    )
    companion._storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)
    trials = companion.get_trials()
    assert confirm.duplicate_of(trials[-1], trials) == first.number
    assert confirm.duplicate_of(trials[1], trials) is None
    # Once the later copy has finished, the earlier one is its duplicate.
    copy = trials[-1]._trial_id
    companion._storage.set_trial_state_values(copy, TrialState.RUNNING)
    companion._storage.set_trial_state_values(copy, TrialState.COMPLETE, [0.3])
    trials = companion.get_trials()
    assert confirm.duplicate_of(trials[0], trials) == trials[-1].number
    # A larger plan adds only what is missing.
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 3, "seeds": 3})
    assert confirm.queue(study, companion, confirm.stored_plan(study), 42) == 9
    assert len(companion.get_trials()) == 5 + 5


def test_runs_left_once_the_stage_is_done_are_dropped_unrun(tmp_path):
    text = STUDY.format(name="c", n_trials=2, sampler="random", rates="0.1",
                        baselines="")  # fmt: skip
    study_file = config.parse_study(text, tmp_path / "c.toml")
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    companion = optuna.create_study(
        study_name=confirm.companion_name("c"), storage=storage, direction="maximize"
    )
    params = {"depth": 2, "width": 8, "embedding_dim": 16, "learning_rate": 0.1}
    for seed in (11, 12):
        companion.add_trial(
            create_trial(
                value=0.3,
                params=params,
                distributions=space.distributions(study_file),
                user_attrs={keys.FINALIST_OF_ATTR: 0, keys.SEED_ATTR: seed},
            )
        )
    # Two workers queued seed 11 at once; the stage reached its target first.
    companion.enqueue_trial(
        params, user_attrs={keys.FINALIST_OF_ATTR: 0, keys.SEED_ATTR: 11}
    )
    # Nothing here trains: features and tracker are never reached.
    objective = Objective(study_file, None, None, "1", "parent", tmp_path)
    done = run_trials(companion, objective, 2, progress=False, refill=lambda _: 2)
    assert done is False
    left = companion.get_trials()[-1]
    assert left.state == TrialState.FAIL and left.user_attrs[keys.SURPLUS_ATTR]
    assert "the target was reached" in left.user_attrs[keys.FAIL_REASON_ATTR]
    # A run sampled because another worker took the last queued one: dropped.
    companion.optimize(objective, n_trials=1, catch=(TrialFailed,))
    sampled = companion.get_trials()[-1]
    assert sampled.state == TrialState.FAIL and sampled.user_attrs[keys.SURPLUS_ATTR]
    assert "another worker" in sampled.user_attrs[keys.FAIL_REASON_ATTR]
    assert len(companion.get_trials()) == 4


def test_no_complete_trial_is_one_error_and_creates_nothing(tmp_path):
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="e", storage=storage)
    study.add_trial(_trial(None, TrialState.PRUNED))
    with pytest.raises(Exception, match="no complete trial to confirm"):
        confirm.check_confirmable("e", confirm.finalists(study.get_trials(), 3))


def test_the_champion_is_the_stable_finalist_of_best_mean(searched):
    # Trial 1 (0.36 in the search) collapses on one seed; trial 2 holds.
    study, companion = _confirmed(searched, 3, 2, [
        (0.35, 1, 11, {"depth": 2}),
        (0.05, 1, 12, {"depth": 2}),
        (0.33, 2, 11, {"depth": 1}),
        (0.32, 2, 12, {"depth": 1}),
        (0.31, 3, 11, {"depth": 2, "width": 16}),
    ])  # fmt: skip
    finalists = confirm.results(study, companion)
    assert [f.trial.number for f in finalists] == [1, 2, 3]
    unstable, holds, partial = finalists
    assert unstable.unstable and not holds.unstable
    assert holds.mean == pytest.approx(0.325)
    assert holds.std == pytest.approx(0.0070711, abs=1e-6)
    assert holds.mean_best_epoch == 2
    assert not partial.done
    assert confirm.champion(finalists) is None  # trial 3 has one seed of two
    assert "5 of 6 runs finished" in confirm.champion_text(finalists)
    companion.add_trial(_run(0.20, 3, 12, diverged=True, depth=2, width=16))
    finalists = confirm.results(study, companion)
    assert finalists[2].unstable  # a diverged seed, though above half
    assert confirm.champion(finalists).trial.number == 2
    text = confirm.champion_text(finalists)
    assert "confirmed champion: trial 2" in text
    assert "0.3250 +- 0.0071 over 2 seeds (search 0.3400)" in text
    table = confirm.table(finalists)
    assert table.count("unstable") == 2
    assert not confirm.close_call(finalists)


def _end(companion, run, value, **attrs):
    """Ends a queued run as COMPLETE with `value` (as a worker would)."""
    storage = companion._storage
    storage.set_trial_state_values(run._trial_id, TrialState.RUNNING)
    for key, attr in attrs.items():
        storage.set_trial_user_attr(run._trial_id, key, attr)
    storage.set_trial_state_values(run._trial_id, TrialState.COMPLETE, [value])


def test_the_next_configuration_joins_only_when_every_finalist_collapsed(searched):
    study, storage = searched
    # A fourth configuration, below the other three in the search.
    study.add_trial(_trial(0.31, depth=1, width=16, rate=0.2))
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 2, "seeds": 2})
    companion = confirm.open_companion(study, storage)
    plan = confirm.stored_plan(study)
    assert confirm.queue(study, companion, plan, 42) == 4
    queued = companion.get_trials()
    assert {t.user_attrs[keys.FINALIST_OF_ATTR] for t in queued} == {1, 2}
    assert queued[0].user_attrs[keys.SEARCH_VALUE_ATTR] == 0.36
    # Finalist 1's first seed collapses (0.05 against its search value 0.36).
    _end(companion, queued[0], 0.05)
    runs = companion.get_trials()
    assert confirm.collapsed(runs[1], runs) == queued[0].number  # its 2nd: moot
    assert confirm.collapsed(runs[2], runs) is None  # finalist 2's: still needed
    # Finalist 2 may hold: nothing joins yet; the target is finalist 1's one
    # run and finalist 2's two.
    assert confirm.queue(study, companion, plan, 42) == 1 + 2
    assert len(companion.get_trials()) == len(queued)
    # Finalist 2 collapses too: trial 3, next in search order, joins.
    _end(companion, queued[2], 0.01)
    assert confirm.queue(study, companion, plan, 42) == 1 + 1 + 2
    added = companion.get_trials()[len(queued) :]
    assert [t.user_attrs[keys.FINALIST_OF_ATTR] for t in added] == [3, 3]
    finalists = confirm.results(study, companion)
    assert [f.trial.number for f in finalists] == [1, 2, 3]
    assert all(f.unstable and f.done for f in finalists[:2])
    assert "2 of 4 runs finished" in confirm.champion_text(finalists)
    # It holds: the stage is 4 configurations at most (K more), and ends
    # with trial 3 its champion.
    for run in added:
        _end(companion, run, 0.30)
    finalists = confirm.results(study, companion)
    assert [f.trial.number for f in finalists] == [1, 2, 3]
    assert confirm.champion(finalists).trial.number == 3
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 1, "seeds": 2})
    plan = confirm.stored_plan(study)
    finalists = confirm.results(study, companion)
    # K = 1: finalist 1 collapsed, trial 2 joined and collapsed, and the
    # stage ends there (K more at most): no champion.
    assert [f.trial.number for f in finalists] == [1, 2]
    assert confirm.champion(finalists) is None


def test_a_queued_run_the_plan_no_longer_needs_is_dropped_unrun(tmp_path):
    text = STUDY.format(name="c", n_trials=2, sampler="random", rates="0.1, 0.3",
                        baselines="")  # fmt: skip
    study_file = config.parse_study(text, tmp_path / "c.toml")
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")
    for attr in (keys.EXPERIMENT_ATTR, keys.PARENT_RUN_ATTR):
        study.set_user_attr(attr, "1")
    distributions = space.distributions(study_file)
    first = {"depth": 1, "width": 8, "embedding_dim": 16, "learning_rate": 0.1}
    study.add_trial(create_trial(value=0.35, params=first, distributions=distributions))
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 1, "seeds": 2})
    companion = confirm.open_companion(study, storage)

    def outside_plan(run, runs):
        return confirm.outside_plan(study, confirm.stored_plan(study), 3, run, runs)

    confirm.queue(study, companion, confirm.stored_plan(study), 3)
    queued = companion.get_trials()
    assert not any(outside_plan(run, queued) for run in queued)
    # The search goes on and finds a better configuration before a worker
    # starts the queued runs: the old finalist's runs are not trained.
    better = {**first, "depth": 2, "learning_rate": 0.3}
    study.add_trial(
        create_trial(value=0.40, params=better, distributions=distributions)
    )
    # Nothing here trains: features and tracker are never reached.
    objective = Objective(
        study_file, None, None, "1", "parent", tmp_path, outside_plan=outside_plan
    )
    companion.optimize(objective, n_trials=1, catch=(TrialFailed,))
    dropped = companion.get_trials()[0]
    assert dropped.state == TrialState.FAIL and dropped.user_attrs[keys.SURPLUS_ATTR]
    assert "no longer in the plan" in dropped.user_attrs[keys.FAIL_REASON_ATTR]
    # The new finalist's seeds are queued; of a plan cut to one seed, its
    # second seed's run is not needed either.
    confirm.queue(study, companion, confirm.stored_plan(study), 3)
    runs = companion.get_trials()
    new = [t for t in runs if t.user_attrs[keys.FINALIST_OF_ATTR] == 1]
    assert len(new) == 2 and not any(outside_plan(run, runs) for run in new)
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 1, "seeds": 1})
    assert [outside_plan(run, runs) for run in new] == [False, True]


def test_a_finalist_found_after_the_stage_ran_gets_its_runs(searched):
    study, companion = _confirmed(searched, 1, 2, [])
    plan = confirm.stored_plan(study)
    assert confirm.queue(study, companion, plan, 42) == 2
    for run in companion.get_trials():
        _end(companion, run, 0.35)
    assert confirm.queue(study, companion, plan, 42) == 2  # the stage is done
    # The search goes on (`sweep resume --n-trials`) and finds a better
    # configuration: it is the finalist now, and its two seeds are queued.
    study.add_trial(_trial(0.40, depth=2, width=16, rate=0.3))
    target = confirm.queue(study, companion, plan, 42)
    runs = companion.get_trials()
    waiting = [t for t in runs if t.state == TrialState.WAITING]
    assert [t.user_attrs[keys.FINALIST_OF_ATTR] for t in waiting] == [5, 5]
    # The old finalist's runs still count among the finished: the new ones
    # are needed, not surplus (a worker starting one is not dropped).
    assert target == 2 + 2
    assert sum(keys.ahead_of(t, waiting[0].number) for t in runs) < target
    # A plan of fewer seeds than have run asks for nothing more.
    for run in waiting:
        _end(companion, run, 0.39)
    study.set_user_attr(keys.CONFIRM_PLAN_ATTR, {"finalists": 1, "seeds": 1})
    assert confirm.queue(study, companion, confirm.stored_plan(study), 42) == 4
    assert len(companion.get_trials()) == 4


def _interrupt(companion, run, **attrs):
    """Fails a queued run as a Ctrl-C does (the objective marks it first)."""
    storage = companion._storage
    storage.set_trial_state_values(run._trial_id, TrialState.RUNNING)
    attrs = {keys.INTERRUPTED_ATTR: True, keys.WORKER_ATTR: {"pid": 1}, **attrs}
    for key, value in attrs.items():
        storage.set_trial_user_attr(run._trial_id, key, value)
    storage.set_trial_state_values(run._trial_id, TrialState.FAIL)


def test_an_interrupted_run_is_retried_then_queued_afresh(searched):
    study, companion = _confirmed(searched, 1, 1, [])
    plan = confirm.stored_plan(study)
    assert confirm.queue(study, companion, plan, 42) == 1
    first = companion.get_trials()[0]
    # Interrupted after it was seen to collapse (its run was being closed).
    _interrupt(companion, first, **{keys.COLLAPSED_AT_ATTR: 5})
    assert retries.requeue_interrupted(companion, None, max_retries=1)
    assert confirm.queue(study, companion, plan, 42) == 1  # the retry is the run
    retry = companion.get_trials()[1]
    assert retry.state == TrialState.WAITING
    assert retries.RetryStaleTrial.retried_trial_number(retry) == first.number
    assert retry.user_attrs[keys.SEED_ATTR] == first.user_attrs[keys.SEED_ATTR]
    # What the interrupted attempt ended with is not the retry's.
    assert not set(keys.ATTEMPT_ATTRS) & set(retry.user_attrs)
    # The retry is interrupted too, its one retry used: no retry comes, so
    # the seed is queued afresh rather than waited for.
    _interrupt(companion, retry)
    assert not retries.requeue_interrupted(companion, None, max_retries=1)
    assert len(companion.get_trials()) == 2
    assert confirm.queue(study, companion, plan, 42) == 1
    fresh = companion.get_trials()[2]
    assert fresh.state == TrialState.WAITING
    assert fresh.user_attrs[keys.SEED_ATTR] == first.user_attrs[keys.SEED_ATTR]
    assert retries.RetryStaleTrial.retried_trial_number(fresh) is None


def test_a_run_stops_at_the_validation_that_shows_its_collapse(searched):
    # Half of the finalist's own validation at the same epoch, not of its
    # search value: a slow start early on is not a collapse.
    curve = {"5": 0.12, "10": 0.34, "15": 0.37}
    assert not confirm.collapsed_by(0.17, 10, curve)
    assert confirm.collapsed_by(0.16, 10, curve)
    assert confirm.collapsed_by(0.05, 15, curve)
    assert not confirm.collapsed_by(0.05, 20, curve)  # no validation to compare
    # Never at the first validation, where a sound seed may start far behind.
    assert not confirm.collapsed_by(0.01, 5, curve)
    # A run stopped so is collapsed whatever its value, and moots its
    # finalist's other seeds.
    study, companion = _confirmed(searched, 2, 2, [])
    confirm.queue(study, companion, confirm.stored_plan(study), 42)
    queued = companion.get_trials()
    assert queued[0].user_attrs[keys.SEARCH_CURVE_ATTR] == {}  # none in `searched`
    _end(companion, queued[0], 0.30, **{keys.COLLAPSED_AT_ATTR: 5})
    runs = companion.get_trials()
    assert confirm.collapsed(runs[1], runs) == queued[0].number
    assert confirm.results(study, companion)[0].unstable


def test_a_close_runner_up_is_said(searched):
    study, companion = _confirmed(searched, 2, 2, [
        (0.34, 1, 11, {"depth": 2}),
        (0.30, 1, 12, {"depth": 2}),
        (0.33, 2, 11, {"depth": 1}),
        (0.30, 2, 12, {"depth": 1}),
    ])  # fmt: skip
    finalists = confirm.results(study, companion)
    assert confirm.close_call(finalists)
    assert "within one standard error" in confirm.champion_text(finalists)


def test_one_seed_shows_no_spread_and_separates_nothing(searched):
    study, companion = _confirmed(searched, 2, 1, [
        (0.36, 1, 11, {"depth": 2}),
        (0.30, 2, 11, {"depth": 1}),
    ])  # fmt: skip
    finalists = confirm.results(study, companion)
    assert confirm.close_call(finalists)  # no spread measured: cannot tell
    text = confirm.champion_text(finalists)
    assert "val top-100 0.3600 on 1 seed (no spread) (search 0.3600)" in text
    assert "within one standard error" in text


def test_export_takes_the_champion_else_says_why_unconfirmed(searched):
    study, _ = searched
    # No stage: the search's best, unconfirmed; @champion moves as before.
    plain = export.choose(study, None)
    assert plain.trial.number == 1 and plain.alias
    assert "no confirmation stage" in plain.unconfirmed
    # A stage not finished: still the search's best, and @champion waits.
    study, companion = _confirmed(searched, 2, 2, [
        (0.33, 1, 11, {"depth": 2}),
        (0.35, 1, 12, {"depth": 2}),
        (0.34, 2, 11, {"depth": 1}),
    ])  # fmt: skip
    waiting = export.choose(study, None)
    assert waiting.trial.number == 1 and not waiting.alias
    assert "has not finished (confirmation: 3 of 4 runs finished" in (
        waiting.unconfirmed
    )
    # Done: the champion's best seed run, which is a confirmation run.
    companion.add_trial(_run(0.30, 2, 12, depth=1))
    chosen = export.choose(study, None)
    assert chosen.champion.trial.number == 1 and chosen.number == 1
    assert chosen.trial.user_attrs[keys.SEED_ATTR] == 12
    assert chosen.trial.value == 0.35 and chosen.unconfirmed is None
    assert chosen.alias
    # Another trial, asked for: exported as asked, unconfirmed, no alias.
    other = export.choose(study, 2)
    assert other.trial.number == 2 and not other.alias
    assert "the confirmed champion is trial 1" in other.unconfirmed


@pytest.mark.parametrize(
    "table, message",
    [
        ("finalists = 0", "[confirm] finalists = 0: expected a whole number of at"),
        ('seeds = "3"', '[confirm] seeds = "3": expected a whole number'),
        ("rounds = 2", "[confirm] rounds is not a known key"),
    ],
)
def test_bad_confirm_table_is_one_error(tmp_path, table, message):
    text = STUDY.format(name="c", n_trials=2, sampler="random", rates="0.1",
                        baselines="") + f"\n[confirm]\n{table}\n"  # fmt: skip
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        config.parse_study(text, tmp_path / "c.toml")


def _launch(tmp_path, home, spec, extra="", epochs=2):
    path = tmp_path / "c.toml"
    text = STUDY.format(
        name="c", n_trials=2, sampler="random", rates="0.05, 0.2", baselines=""
    )
    path.write_text(text.replace("epochs = 2", f"epochs = {epochs}") + extra)
    return run_main("launch", str(path), "--data-source", spec,
                    env={"SWEEP_HOME": str(home)})  # fmt: skip


@pytest.mark.slow
def test_a_launch_confirms_its_finalists_then_confirm_adds_seeds(
    tmp_path, cached_home, synthetic_spec
):
    home = cached_home
    result = _launch(tmp_path, home, synthetic_spec,
                     "\n[confirm]\nfinalists = 2\nseeds = 1\n"
                     "[data]\ntest_fraction = 0.2\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "confirming 2 finalists over 1 seed" in result.stdout
    assert "confirmed champion: trial" in result.stdout
    url = f"sqlite:///{home / 'optuna.db'}"
    study = optuna.load_study(study_name="c", storage=url)
    companion = optuna.load_study(study_name="c:confirm", storage=url)
    runs = companion.get_trials()
    assert [t.state.name for t in runs] == ["COMPLETE"] * 2
    chosen = confirm.finalists(study.get_trials(), 2)
    assert {t.user_attrs[keys.FINALIST_OF_ATTR] for t in runs} == {
        t.number for t in chosen
    }
    by_number = {t.number: t for t in chosen}
    for run in runs:
        assert run.params == by_number[run.user_attrs[keys.FINALIST_OF_ATTR]].params
    search_seeds = {space.trial_seed(3, t.number) for t in study.trials}
    seeds = {t.user_attrs[keys.SEED_ATTR] for t in runs}
    assert len(seeds) == 1 and not seeds & search_seeds
    # Each run is a child of the study's run, tagged as a confirmation.
    uri = f"sqlite:///{home / 'mlflow.db'}"
    # Its own registry too: an export in this process may have set the global one.
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    for run in runs:
        logged = client.get_run(run.user_attrs[keys.RUN_ID_ATTR])
        tags = logged.data.tags
        assert tags["mlflow.parentRunId"] == study.user_attrs[keys.PARENT_RUN_ATTR]
        assert tags[keys.ROLE_TAG] == "confirm"
        assert tags[keys.FINALIST_OF_TAG] == str(run.user_attrs[keys.FINALIST_OF_ATTR])
        assert tags[keys.SEED_TAG] == str(run.user_attrs[keys.SEED_ATTR])
        # Its Optuna trial: the confirmation study's, not a search trial's.
        assert tags[keys.STUDY_NAME_TAG] == "c:confirm"
        assert tags[keys.TRIAL_NUMBER_TAG] == str(run.number)
        assert logged.data.params["depth"] == str(run.params["depth"])
        assert logged.info.status == "FINISHED"
        assert logged.data.metrics[keys.BEST_ACCURACY] == pytest.approx(run.value)
        # The held-out ratings are scored by confirmation runs only.
        test = run.user_attrs[keys.TEST_ACCURACY_ATTR]
        assert logged.data.metrics[keys.TEST_ACCURACY] == pytest.approx(test)
    for trial in study.trials:
        assert keys.TEST_ACCURACY_ATTR not in trial.user_attrs
    # The study's run: the finalists' table and plot, the champion named.
    parent = study.user_attrs[keys.PARENT_RUN_ATTR]
    files = {f.path for f in client.list_artifacts(parent)}
    assert {"confirm.csv", "trials.csv"} <= files
    assert "report/finalists.png" in {
        f.path for f in client.list_artifacts(parent, "report")
    }
    table = pd.read_csv(client.download_artifacts(parent, "confirm.csv", tmp_path))
    assert sorted(table["trial"]) == sorted(t.number for t in chosen)
    assert table["champion"].sum() == 1
    assert table["test_mean"].notna().all()
    description = client.get_run(parent).data.tags[keys.DESCRIPTION_TAG]
    assert "Confirmed champion: **trial" in description
    assert "on held-out ratings" in description
    # Status: the study once, with its champion; the stage is not a study.
    status = run_main("status", env={"SWEEP_HOME": str(home)})
    assert "c: 2 of 2 finished" in status.stdout
    assert "c:confirm" not in status.stdout
    assert "confirmed champion: trial" in status.stdout

    # One more seed for each finalist, on two workers: only the two new runs
    # train (a run both workers queued is dropped by the second to start it).
    more = run_main("confirm", "c", "--seeds", "2", "--workers", "2",
                    "--data-source", synthetic_spec,
                    env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert more.returncode == 0, more.stderr
    runs = optuna.load_study(study_name="c:confirm", storage=url).get_trials()
    complete = [t for t in runs if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert all(t.user_attrs.get(keys.SURPLUS_ATTR) for t in runs if t not in complete)
    assert len({t.user_attrs[keys.SEED_ATTR] for t in complete}) == 2
    assert "over 2 seeds" in more.stdout
    assert "confirmation plan (finalists x seeds): 2 x 1 -> 2 x 2;" in more.stdout
    assert len(optuna.load_study(study_name="c", storage=url).trials) == 2

    # The export serves the champion's best seed run, with the confirmed figures.
    study = optuna.load_study(study_name="c", storage=url)
    best = confirm.champion(confirm.results(study, confirm.companion_of(study)))
    out = tmp_path / "export"
    exported = run_main("export", "c", "--out", str(out), "--data-source",
                        synthetic_spec, env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "exporting the confirmed champion" in exported.stdout
    info = json.loads((out / "export.json").read_text())
    assert info["confirmed"] is True and info["trial"] == best.trial.number
    assert info["mlflow_run_id"] == best.best_run.user_attrs[keys.RUN_ID_ATTR]
    assert info["best_val_top100_accuracy"] == pytest.approx(best.best_run.value)
    figures = info["confirmation"]
    assert figures["mean_val_top100_accuracy"] == pytest.approx(best.mean)
    assert figures["std_val_top100_accuracy"] == pytest.approx(best.std)
    assert figures["seeds"] == 2
    assert info["test_top100_accuracy"] == pytest.approx(
        best.best_run.user_attrs[keys.TEST_ACCURACY_ATTR], abs=0.002
    )
    version = client.get_model_version_by_alias("c", "champion")
    assert version.tags[keys.CONFIRMED_TAG] == "true"
    assert version.tags[keys.TRIAL_TAG] == str(best.trial.number)

    # The search finds a better configuration after the stage ran (as a longer
    # `sweep resume --n-trials` would): it becomes a finalist and the stage
    # runs its two seeds, the displaced finalist's four runs notwithstanding.
    top = confirm.finalists(study.get_trials(), 1)[0]
    taken = [t.params for t in study.trials]
    new = next(
        p
        for depth in (1, 2)
        for width in (8, 16)
        if (p := {**top.params, "depth": depth, "width": width}) not in taken
    )
    study.add_trial(
        create_trial(
            value=top.value + 0.001,
            params=new,
            distributions=top.distributions,
            intermediate_values=top.intermediate_values,
        )
    )
    before = len(runs)
    later = run_sweep("confirm", "c", "--data-source", synthetic_spec,
                      env={"SWEEP_HOME": str(home)}, timeout=300)  # fmt: skip
    assert later.returncode == 0, later.stderr
    study = optuna.load_study(study_name="c", storage=url)
    finalists = confirm.study_results(study)
    assert finalists[0].trial.number == 2 and finalists[0].done
    # Its two seeds queued once each (the second dropped unrun if the first
    # collapsed), nothing queued over and over.
    assert len(confirm.companion_of(study).trials) == before + 2


@pytest.mark.slow
def test_a_finalist_that_collapses_is_replaced_in_a_real_stage(
    tmp_path, cached_home, synthetic_spec
):
    home = cached_home
    # Three epochs, a validation each: a collapse is looked for from the second.
    result = _launch(tmp_path, home, synthetic_spec, epochs=3)
    assert result.returncode == 0, result.stderr
    url = f"sqlite:///{home / 'optuna.db'}"
    study = optuna.load_study(study_name="c", storage=url)
    searched = confirm.finalists(study.get_trials(), 2)
    # A lucky search value no retraining reaches: its first seed collapses.
    lucky = {"depth": 2, "width": 16, "embedding_dim": 16, "learning_rate": 0.2}
    assert lucky not in [t.params for t in searched]
    study.add_trial(
        create_trial(
            value=1.5,
            params=lucky,
            distributions=searched[0].distributions,
            intermediate_values={1: 1.5, 2: 1.5, 3: 1.5},
        )
    )
    lucky_number = len(study.trials) - 1
    stage = run_main("confirm", "c", "--finalists", "1", "--seeds", "2",
                     "--data-source", synthetic_spec,
                     env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert stage.returncode == 0, stage.stderr
    runs = optuna.load_study(study_name="c:confirm", storage=url).get_trials()
    by_finalist = {}
    for run in runs:
        by_finalist.setdefault(run.user_attrs[keys.FINALIST_OF_ATTR], []).append(run)
    # The lucky finalist ran one seed, which stopped at its second validation
    # (of three epochs), collapsed; its second seed was dropped unrun.
    lucky_runs = by_finalist.pop(lucky_number)
    assert [r.state.name for r in lucky_runs] == ["COMPLETE", "FAIL"]
    assert lucky_runs[0].user_attrs[keys.COLLAPSED_AT_ATTR] == 2
    assert list(lucky_runs[0].intermediate_values) == [1, 2]
    assert "(collapsed, stopped at 2)" in stage.stdout
    assert "the finalist collapsed" in lucky_runs[1].user_attrs[keys.FAIL_REASON_ATTR]
    # The search's best configuration replaced it, over both seeds.
    assert list(by_finalist) == [searched[0].number]
    assert [r.state.name for r in by_finalist[searched[0].number]] == ["COMPLETE"] * 2
    assert f"confirmed champion: trial {searched[0].number}" in stage.stdout
    assert "unstable" in stage.stdout


def test_confirm_of_a_study_without_complete_trials_creates_nothing(
    tmp_path, cached_home, synthetic_spec
):
    home = cached_home
    url = f"sqlite:///{home / 'optuna.db'}"
    storage = stores.open_storage(url)
    study = optuna.create_study(study_name="p", storage=storage)
    study.set_user_attr(keys.STUDY_FILE_ATTR, STUDY.format(
        name="p", n_trials=2, sampler="random", rates="0.1", baselines=""))  # fmt: skip
    study.add_trial(_trial(None, TrialState.PRUNED))
    result = run_main("confirm", "p", "--data-source", synthetic_spec,
                      env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert_one_line_error(result, "study 'p' has no complete trial to confirm")
    assert [s.study_name for s in storage.get_all_studies()] == ["p"]
    assert (
        keys.CONFIRM_PLAN_ATTR
        not in optuna.load_study(study_name="p", storage=url).user_attrs
    )


def test_confirm_of_an_unknown_study_is_one_line(tmp_path):
    # In this process: a real process's "no study" line is resume's, the same
    # code (tests/test_study.py).
    home = tmp_path / "h"
    result = run_main("confirm", "ghost", env={"SWEEP_HOME": str(home)})
    assert_one_line_error(result, "sweep confirm: error: no study 'ghost'")
    assert not home.exists() or not any(home.iterdir())  # no store made
    bad = run_main("confirm", "ghost", "--seeds", "0")
    assert_one_line_error(bad, "argument --seeds: 0 is below 1", code=2)
