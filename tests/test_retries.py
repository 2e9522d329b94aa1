"""A trial whose worker stopped sending Optuna heartbeats (another host, say)
is failed and re-queued by the next worker to look, and its MLflow run killed."""

import sqlite3

import optuna

from sweep import retries
from sweep import stores as stores_module
from sweep.keys import RUN_ID_ATTR, WORKER_ATTR


def test_stale_heartbeat_fails_the_trial_kills_its_run_and_queues_a_retry(tmp_path):
    stores = stores_module.resolve_stores(tmp_path)
    tracker = stores_module.open_tracker(stores)
    storage = stores_module.open_storage(stores.storage, tracker, max_retries=1)
    study = optuna.create_study(study_name="hb", storage=storage, direction="maximize")
    experiment = tracker.experiment("hb", [])
    parent = tracker.start_study_run(experiment, "hb", {})

    trial = study.ask({"depth": optuna.distributions.IntDistribution(1, 3)})
    run = tracker.start_trial(experiment, parent, "hb", trial.number, trial.params)
    trial.set_user_attr(RUN_ID_ATTR, run.run_id)
    trial.set_user_attr(WORKER_ATTR, {"host": "another-machine", "pid": 1})
    trial.report(0.25, 5)
    storage.record_heartbeat(trial._trial_id)
    # The worker went silent a minute ago (past the 30 s grace period).
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        db.execute(
            "update trial_heartbeats set heartbeat = datetime('now', '-60 seconds')"
        )

    optuna.storages.fail_stale_trials(study)

    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    retry = trials[1]
    assert retry.params == trials[0].params
    assert retry.intermediate_values == {5: 0.25}
    assert retry.system_attrs["failed_trial"] == 0
    killed = tracker.client.get_run(run.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["sweep.trial_state"] == "FAIL"
    assert "heartbeat" in killed.data.tags["sweep.fail_reason"]

    # max_retries=1: the retry, stale in turn, is not retried again.
    study._storage.set_trial_state_values(
        retry._trial_id, optuna.trial.TrialState.RUNNING
    )
    storage.record_heartbeat(retry._trial_id)
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        db.execute(
            "update trial_heartbeats set heartbeat = datetime('now', '-60 seconds')"
        )
    optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL"]


def test_fail_orphaned_trials_leaves_live_and_remote_workers_alone(tmp_path):
    stores = stores_module.resolve_stores(tmp_path)
    tracker = stores_module.open_tracker(stores)
    storage = stores_module.open_storage(stores.storage, tracker)
    study = optuna.create_study(study_name="o", storage=storage)
    alive = study.ask()
    alive.set_user_attr(WORKER_ATTR, retries.worker_identity())
    remote = study.ask()
    remote.set_user_attr(WORKER_ATTR, {"host": "another-machine", "pid": 999999})
    assert retries.fail_orphaned_trials(study, tracker) == []
    assert {t.state.name for t in study.get_trials()} == {"RUNNING"}


def test_trials_no_worker_took_up_are_failed_and_queued_again(tmp_path):
    stores = stores_module.resolve_stores(tmp_path)
    tracker = stores_module.open_tracker(stores)
    storage = stores_module.open_storage(stores.storage, tracker)
    study = optuna.create_study(study_name="u", storage=storage)
    # A queued configuration taken from the queue, and a sampled trial, whose
    # commits reached the database but not their workers; a trial a worker
    # claimed; one made just now.
    study.enqueue_trial({"depth": 2})
    depth = {"depth": optuna.distributions.IntDistribution(1, 3)}
    queued = study.ask(depth)
    sampled = study.ask()
    claimed = study.ask()
    claimed.set_user_attr(WORKER_ATTR, {"host": "another-machine", "pid": 1})
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        db.execute("update trials set datetime_start = datetime('now', '-5 minutes')")
    recent = study.ask()

    failed = retries.fail_unclaimed_trials(study, study.get_trials(), tracker)

    assert sorted(failed) == [queued.number, sampled.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[claimed.number] == "RUNNING" and states[recent.number] == "RUNNING"
    # Only the queued configuration is queued again (the sampled one had no
    # params yet: the sampler proposes afresh).
    (again,) = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert again.params == {"depth": 2}
