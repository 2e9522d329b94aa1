"""An export -> a model version in the MLflow Model Registry, and `@champion`.

The registered model is an MLflow pyfunc "model from code"
(`sweep.mlflow_model` plus the export's files), logged on the exported run so
that the registry links back to its curves; it is registered under the study's
name, and the alias `champion` moves to it when it is the study's champion.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sweep import serving
from sweep.data import QUERY_FEATURES

CHAMPION_ALIAS = "champion"
# The packages the registered model pins for `mlflow.pyfunc.load_model`.
PINNED = ("keras", "keras-rs", "jax", "numpy", "mlflow")

# MLflow logs its check of the input example and each retry of a model
# version it could not create; `export` says what was registered, or why not,
# in one line of its own.
for _chatty in ("mlflow.pyfunc", "mlflow.store.model_registry.sqlalchemy_store"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


def register(
    tracking_uri: str,
    name: str,
    model_file: Path,
    run_id: str,
    tags: dict[str, str],
    versions: dict[str, str | None],
    alias: bool,
) -> str:
    """Logs an export as a pyfunc model on its run and registers it.

    Args:
        tracking_uri: The MLflow tracking (and registry) URI.
        name: The registered model's name (the study's).
        model_file: The export's `model.keras`; its folder holds the indexes.
        run_id: The exported run.
        tags: The version's tags.
        versions: Installed package versions (those in `PINNED` are pinned).
        alias: Move `@champion` to the new version.

    Returns:
        The new model version.
    """
    import mlflow
    import pandas as pd

    from sweep import mlflow_model

    folder = model_file.parent
    users = serving.UserIndex.load(folder / serving.USERS_FILE)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=mlflow_model.__file__,
            artifacts={
                "model": str(model_file),
                "candidates": str(folder / serving.CANDIDATES_FILE),
                "users": str(folder / serving.USERS_FILE),
            },
            signature=_signature(),
            input_example=pd.DataFrame({"user_id": users.user_ids[:2]}),
            pip_requirements=[
                f"{package}=={versions[package]}"
                for package in PINNED
                if versions.get(package)
            ],
            registered_model_name=name,
            tags=tags,
        )
    client = mlflow.MlflowClient(tracking_uri)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if alias:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version


def _signature():
    """The registered model's signature: query features in, top-k movies out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from sweep import mlflow_model

    optional = [
        ColSpec("long", f, required=False) for f in QUERY_FEATURES if f != "user_id"
    ]
    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), *optional]),
        outputs=Schema(
            [
                ColSpec(Array("long"), "movie_ids"),
                ColSpec(Array("string"), "titles"),
                ColSpec(Array("double"), "scores"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", mlflow_model.DEFAULT_K)]),
    )
