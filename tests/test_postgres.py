"""Two workers in separate processes share one study on a real PostgreSQL."""

import collections
import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import optuna
import pytest

from tests import postgres, synthetic
from tests.test_cli import start_sweep
from tests.test_study import study_file


@pytest.fixture(scope="module")
def postgres_server():
    if postgres.binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian package postgresql; "
            "scripts/test.sh installs it where apt-get is available)"
        )
    server = postgres.Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_url(postgres_server):
    return f"postgresql://sweep@127.0.0.1:{postgres_server.port}/sweep"


@pytest.fixture(scope="module")
def mlflow_server(postgres_server, tmp_path_factory):
    """A real `mlflow server`: runs in PostgreSQL, artifacts served by it."""
    store = postgres_server.create_database("mlflow")
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = postgres.free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", store, "--serve-artifacts",
         "--artifacts-destination", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_two_workers_on_postgres_share_the_study_exactly(
    tmp_path, postgres_url, mlflow_server
):
    spec = f"grouplens:{synthetic.write_grouplens(tmp_path / 'ml')}"
    path = study_file(tmp_path, name="pg", n_trials=6, sampler="random",
                      rates="0.05, 0.1, 0.2")  # fmt: skip
    tracking = mlflow_server
    # Like the compose workers: each launches-or-joins the same study file.
    procs = [
        start_sweep(
            "launch",
            "--join",
            str(path),
            "--storage",
            postgres_url,
            "--tracking-uri",
            tracking,
            "--data-source",
            spec,
            env={"SWEEP_HOME": str(tmp_path / f"home{i}")},
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    pids = {t.user_attrs["sweep.worker"]["pid"] for t in finished}
    assert len(pids) == 2, "both workers should have run trials"
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs(
        [client.get_experiment_by_name("pg").experiment_id],
        "tags.`sweep.role` = 'trial'",
    )
    per_trial = collections.Counter(
        r.data.tags["optuna.trial_number"] for r in runs if r.info.status == "FINISHED"
    )
    # No trial evaluated twice: one FINISHED run per finished trial, no more.
    assert per_trial == collections.Counter(str(t.number) for t in finished)
    # Checkpoints went to the server's artifact store, where any worker finds them.
    run = client.get_run(finished[0].user_attrs["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
