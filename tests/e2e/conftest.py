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

    Returns the launch's result, the study, an MLflow client of its store and
    the sweep home it ran in.
    """
    # Share the real data's cache and wheel rather than fetching them again.
    home = share_real_data(tmp_path_factory.mktemp("smoke-home"), real_home)
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
