import mlflow
import optuna
import pytest

from tests.conftest import REPO
from tests.test_cli import run_sweep


@pytest.fixture(scope="session")
def smoke(real_home, real_features, tmp_path_factory):
    """`sweep launch studies/smoke.toml` on the real data, run once per session.

    Returns the launch's result, the study, an MLflow client of its store and
    the sweep home it ran in.
    """
    home = tmp_path_factory.mktemp("smoke-home")
    # Share the real data's cache and wheel rather than fetching them again.
    (home / "cache").symlink_to(real_home / "cache")
    (home / "downloads").symlink_to(real_home / "downloads")
    result = run_sweep(
        "launch", str(REPO / "studies" / "smoke.toml"), "--data-source", "recbole",
        env={"SWEEP_HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{home / 'optuna.db'}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return result, study, client, home
