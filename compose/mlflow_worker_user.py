"""Creates the MLflow user the workers log as, or resets its password.

The compose stack's one-shot `mlflow-init` service runs this once the MLflow
server answers. It signs in as the admin (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, read by MLflow's client itself) and makes the
account named by WORKER_USERNAME with WORKER_PASSWORD; run again, it sets the
password from .env, so changing it there and restarting the stack rotates it.
"""

import os

from mlflow.exceptions import RestException
from mlflow.server import get_app_client


def main() -> None:
    """Creates the worker's account, or sets its password if it exists."""
    client = get_app_client(
        "basic-auth", tracking_uri=os.environ["MLFLOW_TRACKING_URI"]
    )
    username = os.environ["WORKER_USERNAME"]
    password = os.environ["WORKER_PASSWORD"]
    try:
        client.create_user(username, password)
        print(f"created MLflow user {username}")
    except RestException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(username, password)
        print(f"MLflow user {username} exists; password set from .env")


if __name__ == "__main__":
    main()
