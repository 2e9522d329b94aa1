"""`sweep delete`: a study's trials, MLflow runs, artifacts and checkpoints, gone."""

import io
import os
import signal
import socket
import subprocess
import time

import mlflow
import optuna
import pytest
from mlflow.exceptions import MlflowException

from sweep import deletion, keys, presence
from sweep.errors import SweepError
from sweep.home import Home
from sweep.stores import resolve_stores
from tests.helpers import (
    STUDY,
    assert_one_line_error,
    run_main,
    run_sweep,
    start_sweep,
    study_in_home,
)


def _study_file(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text(
        STUDY.format(name="d", n_trials=2, sampler="random", rates="0.05, 0.2",
                     baselines="")
        + "\n[confirm]\nfinalists = 1\nseeds = 1\n"
    )  # fmt: skip
    return path


def _client(home):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _names(home):
    storage = f"sqlite:///{home / 'optuna.db'}"
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


@pytest.mark.slow
def test_delete_removes_the_study_everywhere_and_the_file_launches_again(
    tmp_path, cached_home, synthetic_spec, monkeypatch
):
    home = cached_home
    env = {"SWEEP_HOME": str(home)}
    path = _study_file(tmp_path)
    launched = run_main("launch", str(path), "--data-source", synthetic_spec, env=env)
    assert launched.returncode == 0, launched.stderr
    exported = run_main("export", "d", "--out", str(tmp_path / "x"),
                        "--data-source", synthetic_spec, env=env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    client = _client(home)
    experiment = client.get_experiment_by_name("d")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 + 2 + 1  # the study's run, two trials, one seed
    folders = [home / "mlartifacts" / "d" / r.info.run_id for r in runs]
    assert any(f.is_dir() for f in folders)
    # The study's plotters shared their lock file in its checkpoint folder.
    assert (home / "checkpoints" / "d" / "plotter.lock").is_file()

    # Asked first: anything but yes keeps it.
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    kept = run_main("delete", "d", env=env)
    assert kept.returncode == 1
    assert "delete study 'd': 3 trials" in kept.stdout
    assert "keeping 1 registered model versions of 'd'" in kept.stdout
    assert _names(home) == ["d", "d:confirm"]

    # A `sweep resume` process that has the study open but runs no trial
    # (here: stopped while it loads the data) keeps it from deletion.
    worker = start_sweep("resume", "d", "--data-source", synthetic_spec, env=env)
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{home / 'optuna.db'}")
    try:
        while not presence.live(study) and worker.poll() is None:
            time.sleep(0.02)
        worker.send_signal(signal.SIGSTOP)
        assert presence.live(study) == [f"{socket.gethostname()}:{worker.pid}"]
        refused = run_main("delete", "d", "--yes", env=env)
        assert_one_line_error(
            refused, "study 'd' has a live worker", f":{worker.pid}", "stop it"
        )
    finally:
        worker.send_signal(signal.SIGCONT)
        _, errors = worker.communicate(timeout=300)
    assert worker.returncode == 0, errors
    assert presence.live(study) == [] and _names(home) == ["d", "d:confirm"]

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    deleted = run_main("delete", "d", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted study 'd'" in deleted.stdout
    assert _names(home) == []
    assert client.get_experiment_by_name("d") is None
    assert not any(f.exists() for f in folders)
    assert not (home / "checkpoints" / "d").exists()
    # The registered version stays, and still serves (its files are the
    # logged model's, outside the runs' folders).
    version = client.get_model_version("d", "1")
    assert version.tags[keys.STUDY_TAG] == "d"
    served = run_main("recommend", "--model", "models:/d/1", "--user-id", "1",
                      "--k", "2", env=env)  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert "top 2 movies for user 1" in served.stdout
    status = run_main("status", env=env)
    assert "d:" not in status.stdout

    # The same file launches again, under the same name, from scratch.
    again = run_main("launch", str(path), "--data-source", synthetic_spec, env=env)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 finished" in run_main("status", "d", env=env).stdout
    experiment = client.get_experiment_by_name("d")
    # --models: the registered model goes too, and with nothing left that
    # needs them, the experiment's rows and folder go for good.
    gone = run_main("delete", "d", "--models", "--yes", env=env)
    assert gone.returncode == 0, gone.stderr
    with pytest.raises(MlflowException):
        client.get_registered_model("d")
    with pytest.raises(MlflowException):
        client.get_experiment(experiment.experiment_id)
    assert not (home / "mlartifacts" / "d").exists()
    assert _names(home) == []


def test_delete_refuses_while_a_worker_is_alive(tmp_path, monkeypatch):
    study, storage = study_in_home(tmp_path / "home", monkeypatch, name="busy")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
    study._storage.set_trial_user_attr(  # noqa: SLF001
        trial._trial_id,  # noqa: SLF001
        keys.WORKER_ATTR,
        {"host": socket.gethostname(), "pid": os.getpid()},
    )
    result = run_main("delete", "busy", "--yes")
    assert_one_line_error(
        result,
        "study 'busy' has a live worker",
        f"{socket.gethostname()}:{os.getpid()} (trial 0)",
        "stop it",
    )
    assert [s.study_name for s in storage.get_all_studies()] == ["busy"]


def test_delete_of_an_unknown_study_is_one_line(tmp_path, monkeypatch):
    study_in_home(tmp_path / "home", monkeypatch, name="kept")
    result = run_sweep("delete", "ghost", "--yes")
    assert_one_line_error(result, "no study 'ghost'", "(studies there: kept)")


def test_a_process_counts_as_live_while_announced_and_fresh(tmp_path, monkeypatch):
    study, storage = study_in_home(tmp_path / "home", monkeypatch, name="open")
    me = f"{socket.gethostname()}:{os.getpid()}"
    with presence.announced(study):
        assert presence.live(study) == [me]
        result = run_main("delete", "open", "--yes")
        assert_one_line_error(result, "study 'open' has a live worker", me)
        assert run_main("status", "open").stdout.endswith(
            f"workers alive: {me} (no trial)\n"
        )
    assert presence.live(study) == []
    # Another machine's process counts until its entry goes stale; a process
    # of this machine that is gone (killed with -9) does not count at all.
    gone = subprocess.Popen(["true"])  # a pid that has just exited
    gone.wait()
    host, now = socket.gethostname(), time.time()
    for name, seen in [("far:1", now), ("far:2", now - 10 * 60),
                       (f"{host}:{gone.pid}", now)]:  # fmt: skip
        storage.set_study_system_attr(
            study._study_id,  # noqa: SLF001
            keys.PRESENCE_PREFIX + name,
            seen,
        )
    assert presence.live(study) == ["far:1"]
    assert run_main("delete", "open", "--yes").returncode == 1
    storage.set_study_system_attr(study._study_id, keys.PRESENCE_PREFIX + "far:1", -now)  # noqa: SLF001
    assert run_main("delete", "open", "--yes").returncode == 0
    assert storage.get_all_studies() == []


def test_a_worker_and_a_deletion_that_start_together_never_both_go_on(
    tmp_path, monkeypatch
):
    study, storage = study_in_home(tmp_path / "home", monkeypatch, name="race")
    stores = resolve_stores(Home.from_environment())
    # A worker that announces itself after the deletion's plan: the deletion,
    # looking again once it has marked the study, refuses and clears its mark.
    what = deletion.plan(stores, tmp_path / "home" / "checkpoints", "race", False)
    with presence.announced(study):
        with pytest.raises(SweepError, match="has a live worker"):
            deletion.delete(stores, what)
    assert presence.deleting_since(study) is None
    # A worker that announces itself after the mark stops, and leaves no live
    # entry; a deletion cut short keeps its mark, the next one finishes it.
    began = time.time() - 3600
    presence.mark_deleting(study, began)
    with pytest.raises(SweepError, match="study 'race' is being deleted: a `sweep de"):
        with presence.announced(study):
            pytest.fail("the worker went on under a deletion")
    assert presence.live(study) == []
    # Refused by a live worker of another machine, it leaves the earlier mark.
    far = keys.PRESENCE_PREFIX + "far:1"
    storage.set_study_system_attr(study._study_id, far, time.time())  # noqa: SLF001
    with pytest.raises(SweepError, match=r"live worker \(far:1 \(no trial\)"):
        deletion.delete(stores, what)
    assert presence.deleting_since(study) == began
    storage.set_study_system_attr(study._study_id, far, -time.time())  # noqa: SLF001
    deletion.delete(stores, what)
    assert storage.get_all_studies() == []
    # A worker that opened the study before it was removed says so in one line.
    with pytest.raises(SweepError, match="study 'race' was deleted"):
        with presence.announced(study):
            pass
