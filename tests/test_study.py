"""`sweep launch` on the synthetic data: what the stores hold afterwards."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing

import mlflow
import optuna
import pytest

from sweep import config, train
from sweep import stores as stores_module
from sweep import study as study_module
from sweep.errors import SweepError
from sweep.keys import (
    BEST_ARTIFACT,
    PARENT_RUN_ATTR,
    RUN_ID_ATTR,
    TARGET_ATTR,
    WORKER_ATTR,
)
from tests.helpers import (
    STUDY,
    SWEEP,
    assert_one_line_error,
    baseline,
    one_architecture,
    run_main,
    run_sweep,
    share_cache,
    study_file,
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


def load(home, name="t"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{home / 'optuna.db'}")


@pytest.fixture(scope="module")
def spec(synthetic_spec):
    return synthetic_spec


@pytest.fixture(scope="module")
def launched(tmp_path_factory, synthetic_home, spec):
    """One study file (a baseline, then sampled trials) launched in two fresh
    homes, as a user would twice: the file, both homes and each one's trials as
    the launch left them.
    """
    folder = tmp_path_factory.mktemp("launched")
    path = study_file(folder, n_trials=3, sampler="random", rates="0.05, 0.1, 0.2",
                      baselines=baseline(0.05))  # fmt: skip
    homes, trials = [], []
    for name in ("a", "b"):
        home = share_cache(folder / name, synthetic_home / "cache")
        result = launch(path, spec, home)
        assert result.returncode == 0, result.stderr
        homes.append(home)
        trials.append(load(home).trials)
    return path, homes, trials


@pytest.mark.slow
def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, spec, cached_home):
    path = study_file(
        tmp_path,
        n_trials=1,
        rates="1e30, 0.05",
        baselines=baseline(1e30) + baseline(0.05),
    )
    home = cached_home
    # In this process (a real `sweep launch` runs in the tests around it).
    result = run_main("launch", str(path), "--data-source", spec,
                      env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = load(home)
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


@pytest.mark.slow
def test_a_launched_study_its_stores_its_status_and_a_second_launch(launched, spec):
    path, (home, _), _ = launched
    # Two SQLite files under SWEEP_HOME: Optuna and MLflow each keep their own
    # alembic_version table.
    for name in ("optuna.db", "mlflow.db"):
        tables = sqlite3.connect(home / name).execute(
            "select name from sqlite_master where type='table'"
        )
        assert "alembic_version" in {row[0] for row in tables}
    study = load(home)
    parent = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(
        study.user_attrs[PARENT_RUN_ATTR]
    )
    assert parent.data.tags["sweep.role"] == "study"
    assert parent.info.status == "FINISHED"

    again = launch(path, spec, home)
    assert_one_line_error(again, "study 't' already exists", "sweep resume t")
    assert len(load(home).trials) == 3

    result = run_sweep("status", env={"SWEEP_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "t: 3 of 3 finished (3 complete)" in result.stdout
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


@pytest.mark.slow
def test_same_study_file_proposes_the_same_first_trials(launched):
    _, _, (a, b) = launched
    # The baseline, then two trials the sampler proposed.
    assert [bool(t.user_attrs.get("sweep.baseline")) for t in a] == [
        True, False, False,
    ]  # fmt: skip
    assert [t.params for t in a] == [t.params for t in b]
    # Each trial's seed (weights, data order) follows from study seed + number.
    assert [t.values for t in a] == [t.values for t in b]


@pytest.mark.slow
def test_four_workers_share_one_sqlite_study_exactly(tmp_path, spec, cached_home):
    path = study_file(tmp_path, name="par", n_trials=6, sampler="random",
                      rates="0.05, 0.1, 0.2")  # fmt: skip
    one_architecture(path)
    home = cached_home
    result = launch(path, spec, home, "--workers", "4")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    # The summary once, from the command that started the workers.
    assert output.count("Browse the trials") == 1, output
    study = load(home, "par")
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


@pytest.mark.slow
def test_ctrl_c_on_workers_requeues_every_trial_and_says_so_once(
    tmp_path, spec, cached_home
):
    path = study_file(tmp_path, name="stop", n_trials=50, sampler="random",
                      rates="0.05, 0.1, 0.2")  # fmt: skip
    one_architecture(path)
    proc = subprocess.Popen(
        [SWEEP, "launch", str(path), "--data-source", spec, "--workers", "2"],
        env={**os.environ, "SWEEP_HOME": str(cached_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # One worker stops cleanly; the other cannot (as if stuck in a long XLA
    # compilation) and is killed with its trial RUNNING once its time is up.
    # It is frozen inside a trial it has named itself on: frozen between
    # Optuna's making a trial and its naming itself, it would leave the trial
    # to a later worker or resume (`retries.fail_unclaimed_trials`).
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never ran two trials"
        running = _running_pids(cached_home, "stop")
        frozen = next(iter(running), None)
        if len(running) == 2 and frozen in _workers_of(proc.pid):
            os.kill(frozen, signal.SIGSTOP)
            if frozen in _running_pids(cached_home, "stop"):
                break
            os.kill(frozen, signal.SIGCONT)  # its trial ended meanwhile
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.count("continue with `sweep resume stop`") == 1, stderr
    # Both trials in flight were failed and queued again, the frozen one's too.
    assert _count(cached_home, "stop", "RUNNING") == 0
    assert _count(cached_home, "stop", "WAITING") == 2


def _workers_of(pid: int) -> list[int]:
    """The worker processes a `--workers` command started."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    workers = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"--worker-index" in f.read():
                workers.append(child)
    return workers


def _read(home, sql: str, args: tuple) -> list[tuple]:
    """Rows of the home's Optuna store, read without creating anything.

    No rows before the store and its tables exist.
    """
    path = home / "optuna.db"
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # its tables not made yet
        return []


def _running_pids(home, name: str) -> set[int]:
    """The processes named on the study's RUNNING trials."""
    rows = _read(
        home,
        "SELECT value_json FROM trial_user_attributes "
        "JOIN trials USING (trial_id) JOIN studies USING (study_id) "
        "WHERE study_name = ? AND state = 'RUNNING' AND key = ?",
        (name, WORKER_ATTR),
    )
    return {json.loads(value)["pid"] for (value,) in rows}


def _count(home, name: str, state: str) -> int:
    """The study's trials in `state` (0 before the store exists)."""
    rows = _read(
        home,
        "SELECT count(*) FROM trials JOIN studies USING (study_id) "
        "WHERE study_name = ? AND state = ?",
        (name, state),
    )
    return rows[0][0] if rows else 0


def test_resume_of_unknown_study_is_one_line(tmp_path, spec):
    result = run_sweep("resume", "ghost", "--data-source", spec,
                       env={"SWEEP_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(result, "no study 'ghost'", "sweep launch STUDY_FILE")


@pytest.mark.slow
def test_resume_raises_the_target_and_never_requeues_baselines(launched, spec):
    _, (_, home), _ = launched
    # Launched with a baseline and 3 trials in all.
    # In this process (a real `sweep resume` runs in tests/e2e/test_resume.py).
    result = run_main("resume", "t", "--n-trials", "5", "--data-source", spec,
                      env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = load(home)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
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


def test_tpe_counts_running_trials_of_other_workers():
    from sweep.config import StudySettings
    from sweep.space import make_sampler

    # Any study may gain workers (resume on another machine): TPE always
    # treats their running trials as bad results (constant_liar).
    sampler = make_sampler(StudySettings(name="x", n_trials=5, sampler="tpe"))
    assert sampler._constant_liar is True  # noqa: SLF001  (no public getter)


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


def test_no_trial_starts_after_the_deadline(monkeypatch):
    study = optuna.create_study(direction="maximize")
    now = [0.0]
    monkeypatch.setattr(study_module.time, "time", lambda: now[0])

    class PastTheDeadline:
        """A trial that ends after the deadline."""

        target = tracker = None

        def __call__(self, trial):
            now[0] = 200.0
            return 0.5

    ended = study_module.run_trials(
        study, PastTheDeadline(), 3, progress=False, deadline=100.0
    )
    assert ended is True
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    # Without a deadline (or before it) the target is what stops it.
    assert study_module.run_trials(study, PastTheDeadline(), 2, progress=False) is False
    assert len(study.trials) == 2


def test_a_time_budget_ends_the_sweep_and_resume_takes_another(
    tmp_path, spec, synthetic_home
):
    home = share_cache(tmp_path / "home", synthetic_home / "cache")
    path = study_file(tmp_path, n_trials=2)
    # A budget shorter than opening the study: over before the first trial.
    path.write_text(path.read_text().replace("[study]", "[study]\ntimeout = 0.001"))
    env = {"SWEEP_HOME": str(home)}
    result = run_main("launch", str(path), "--data-source", spec, env=env)
    assert result.returncode == 0, result.stderr
    assert "the time budget (0.001s) ended the sweep" in result.stdout
    assert "sweep resume t" in result.stdout
    assert load(home).trials == []
    more = run_main("resume", "t", "--timeout", "1h", "--data-source", spec,
                    env=env)  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert "time budget" not in more.stdout
    assert [t.state.name for t in load(home).trials] == ["COMPLETE"] * 2
    bad = run_main("resume", "t", "--timeout", "5x")
    assert_one_line_error(bad, "argument --timeout: '5x' is not a duration", code=2)


@pytest.mark.parametrize(
    ("pruning", "named"),
    [
        ('pruner = "median"\nprune_from_epoch = 2', "pruner median from epoch 2"),
        (
            'pruner = "percentile"\npruner_percentile = 75\nprune_from_epoch = 2',
            "pruner percentile 75 from epoch 2",
        ),
        ('pruner = "hyperband"', "pruner hyperband\n"),
        ('pruner = "none"', "pruner none\n"),
    ],
)
def test_the_launch_line_names_the_pruner_and_its_first_epoch(
    tmp_path, spec, synthetic_home, pruning, named
):
    home = share_cache(tmp_path / "home", synthetic_home / "cache")
    path = study_file(tmp_path, n_trials=2)
    # Over before the first trial: only the launch's own lines are printed.
    text = path.read_text().replace('pruner = "none"', f"timeout = 0.001\n{pruning}")
    path.write_text(text)
    result = run_main("launch", str(path), "--data-source", spec,
                      env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"study 't': 2 trials of 2 epochs, sampler tpe, {named}" in result.stdout


def test_a_joining_launch_waits_until_the_study_is_set_up(tmp_path):
    import threading

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="j", storage=url)
    # The launch that created it records the target last, a moment later.
    threading.Timer(1.0, study.set_user_attr, (TARGET_ATTR, 7)).start()
    started = time.monotonic()
    study_module._wait_until_set_up(optuna.load_study(study_name="j", storage=url))
    assert time.monotonic() - started >= 0.9
    assert study.user_attrs[TARGET_ATTR] == 7


def test_a_joining_launch_gives_up_on_a_study_never_set_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="j", storage=url)
    with pytest.raises(SweepError, match="did not finish setting it up within 1 s"):
        study_module._wait_until_set_up(study, timeout=1)


def test_a_confirmation_line_says_how_its_run_ended(capsys):
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from sweep import keys

    def run(**attrs):
        return create_trial(
            value=0.04,
            params={"depth": 3, "width": 64, "embedding_dim": 64,
                    "learning_rate": 0.24},
            distributions={
                "depth": CategoricalDistribution([3]),
                "width": CategoricalDistribution([64]),
                "embedding_dim": CategoricalDistribution([64]),
                "learning_rate": FloatDistribution(0.01, 0.25),
            },
            user_attrs={keys.FINALIST_OF_ATTR: 23, keys.BEST_EPOCH_ATTR: 5, **attrs},
        )  # fmt: skip

    progress = study_module.Progress(target=3, done=0)
    progress(None, run(**{keys.COLLAPSED_AT_ATTR: 10}))
    progress(None, run(**{keys.DIVERGED_ATTR: True}))
    progress(None, run())
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("@ epoch 5")[1] for line in lines] == [
        " (collapsed, stopped at 10)", " (diverged)", "",
    ]  # fmt: skip
    assert all(line.startswith("finalist   23 COMPLETE") for line in lines)
