import fcntl
import json
import os
import subprocess

import mlflow
import optuna
import pytest

from tests.helpers import REPO, run_sweep, share_real_data


@pytest.fixture
def home(real_home, real_features, tmp_path):
    """A fresh sweep home sharing the real data's cache and wheel."""
    return share_real_data(tmp_path / "home", real_home)


@pytest.fixture(scope="session")
def smoke(real_home, real_features, tmp_path_factory):
    """`sweep launch studies/smoke.toml` on the real data, run once per session.

    Under parallel test workers (pytest-xdist) the first worker to need it
    launches it in the folder the workers share, and the others wait for it
    and use the same stores.

    Returns the launch's result, the study, an MLflow client of its store and
    the sweep home it ran in.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent
    else:
        folder = tmp_path_factory.mktemp("smoke")
    home = folder / "smoke-home"
    with open(folder / "smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = folder / "smoke-launch.json"
        if not saved.is_file():
            # Share the real data's cache and wheel rather than fetching them.
            share_real_data(home, real_home)
            result = run_sweep(
                "launch", str(REPO / "studies" / "smoke.toml"),
                "--data-source", "recbole", env={"SWEEP_HOME": str(home)},
            )  # fmt: skip
            saved.write_text(json.dumps(
                [result.args, result.returncode, result.stdout, result.stderr]
            ))  # fmt: skip
        result = subprocess.CompletedProcess(*json.loads(saved.read_text()))
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{home / 'optuna.db'}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return result, study, client, home
