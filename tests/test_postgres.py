"""Two workers in separate processes share one study on a real PostgreSQL."""

import collections
import os
import subprocess
import sys

import mlflow
import optuna
import pytest

from tests import postgres, synthetic
from tests.test_study import study_file


@pytest.fixture(scope="module")
def postgres_url():
    if postgres.binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed (Debian package postgresql; "
            "scripts/test.sh installs it where apt-get is available)"
        )
    server = postgres.Server()
    try:
        yield server.start()
    finally:
        server.stop()


def test_two_workers_on_postgres_share_the_study_exactly(tmp_path, postgres_url):
    spec = f"grouplens:{synthetic.write_grouplens(tmp_path / 'ml')}"
    path = study_file(tmp_path, name="pg", n_trials=6, sampler="random",
                      rates="0.05, 0.1, 0.2")  # fmt: skip
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = os.path.join(os.path.dirname(sys.executable), "sweep")
    # Like the compose workers: each launches-or-joins the same study file.
    procs = [
        subprocess.Popen(
            [
                sweep,
                "launch",
                "--join",
                str(path),
                "--storage",
                postgres_url,
                "--tracking-uri",
                tracking,
                "--data-source",
                spec,
            ],
            env={**os.environ, "SWEEP_HOME": str(tmp_path / f"home{i}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
