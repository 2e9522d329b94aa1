"""A study's best trial -> a servable recommender on disk and in the MLflow registry.

Every complete trial logged its best epoch's weights (`sweep.study`), so the
export rebuilds that exact model rather than retraining it. Everything is
written to a hidden folder beside the target and checked there: the saved
`model.keras` is loaded back (safe mode) and evaluated on the validation split,
and must score what the trial logged (within `PARITY_TOLERANCE`); the serving
SavedModel is loaded back and must give the Keras query tower's outputs. Only
then is the model registered and the folder renamed into place, so the target
holds a complete export or nothing new.

The export folder holds:
    model.keras      the two-tower model (`keras.saving.load_model`, safe mode;
                     `import sweep.model` first to register its classes)
    candidates.npz   every movie's id, title and candidate embedding
    users.npz        every user's query features and query embedding
    serving/         a TensorFlow SavedModel of the query tower (signature
                     `serve`: the query features in, the query embedding out)
    export.json      study, trial, params, scores, data checksum, versions
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import keys, serving, summary, train
from sweep.data import QUERY_FEATURES, Features
from sweep.errors import SweepError
from sweep.home import nearest_existing
from sweep.stores import Stores, open_study, open_tracker

PARITY_TOLERANCE = 0.002
# Serving outputs may differ from Keras's by float rounding between runtimes.
SERVING_TOLERANCE = 1e-4
MODEL_FILE = "model.keras"
SERVING_DIR = "serving"
EXPORT_FILE = "export.json"
CHAMPION_ALIAS = "champion"
PACKAGES = ("sweep", "keras", "keras-rs", "jax", "tensorflow-cpu", "numpy", "optuna",
            "mlflow")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export made.

    Attributes:
        folder: The export folder.
        trial: The exported trial's number.
        logged_accuracy: The trial's logged best val top-100 accuracy.
        exported_accuracy: The exported model's, measured again.
        model_version: The registered model version (None if not registered).
    """

    folder: Path
    trial: int
    logged_accuracy: float
    exported_accuracy: float
    model_version: str | None


def choose_trial(optuna_study: optuna.Study, number: int | None) -> FrozenTrial:
    """The study's best complete trial, or trial `number` if it completed.

    Raises:
        SweepError: No complete trial, or `number` is not a complete trial.
    """
    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    name = optuna_study.study_name
    if number is None:
        best = summary.best_complete(trials)
        if best is None:
            raise SweepError(
                f"study {name!r} has no complete trial yet ({len(trials)} trials); "
                f"run more with `sweep resume {name}`"
            )
        return best
    chosen = next((t for t in trials if t.number == number), None)
    numbers = ", ".join(str(t.number) for t in complete) or "none"
    if chosen is None:
        raise SweepError(
            f"study {name!r} has no trial {number} (trials 0..{len(trials) - 1}); "
            f"complete ones: {numbers}"
        )
    if chosen.state != TrialState.COMPLETE:
        raise SweepError(
            f"trial {number} of study {name!r} is {chosen.state.name}, not COMPLETE, "
            f"so it kept no model; complete trials: {numbers}"
        )
    return chosen


def select(
    stores: Stores,
    name: str,
    out: Path,
    trial_number: int | None = None,
    force: bool = False,
) -> FrozenTrial:
    """Checks an export's inputs before any work: the folder, study and trial.

    Returns:
        The trial to export.

    Raises:
        SweepError: A non-empty folder (without `force`), an unknown study, or a
            trial that is missing or not complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file; expected a folder (new or empty)")
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise SweepError(
            f"--out {out} is under {existing}, which is a file; expected a folder "
            "path (new or empty)"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SweepError(
            f"--out {out} exists and is not empty; choose a new folder or pass "
            "--force to replace it"
        )
    return choose_trial(open_study(stores, name), trial_number)


def export(
    name: str,
    trial: FrozenTrial,
    out: Path,
    stores: Stores,
    features: Features,
    register: bool = True,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Exports one complete trial of a study to `out` (see `select`).

    Args:
        name: The study name.
        trial: The trial, from `select`.
        out: The export folder; replaced if it exists (`select` checked it may be).
        stores: The study's Optuna and MLflow stores.
        features: The data the trial was trained on.
        register: Also register the model in the MLflow Model Registry under
            the study name, with alias `champion`.
        log: Where progress lines go.

    Returns:
        What was exported.

    Raises:
        SweepError: The trial's model is missing, does not load, was trained on
            other data, or fails the parity check; `out` is then left as it was.
    """
    out = Path(out)
    tracker = open_tracker(stores)
    run_id = trial.user_attrs.get(keys.RUN_ID_ATTR)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log(f"exporting trial {trial.number} of study {name!r} (run {run_id})")
        model, best = _rebuild(tracker, trial, run_id, features, work / "fetched")
        folder = work / "export"
        folder.mkdir()
        model.save(folder / MODEL_FILE)
        # Everything below comes from the saved file, as a user will load it.
        model = load_model(folder / MODEL_FILE, features)
        accuracy = parity_check(model, features, trial)
        log(
            f"parity: exported model {accuracy:.4f}, trial logged {trial.value:.4f} "
            f"val top-100 accuracy"
        )
        write_indexes(model, features, folder)
        write_serving(model, folder / SERVING_DIR)
        description = {
            "study": name,
            "trial": trial.number,
            "mlflow_run_id": run_id,
            "params": trial.params,
            "config": dataclasses.asdict(best.config),
            "best_val_top100_accuracy": trial.value,
            "best_epoch": best.epoch,
            "exported_val_top100_accuracy": accuracy,
            "data_source": features.source,
            "data_checksum": features.checksum,
            "versions": _versions(),
        }
        (folder / EXPORT_FILE).write_text(json.dumps(description, indent=2) + "\n")
        version = None
        if register:
            version = register_model(stores, name, trial, folder)
            log(f"registered model {name!r} version {version} as @{CHAMPION_ALIAS}")
        _move_into_place(folder, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, trial.number, trial.value, accuracy, version)


def _rebuild(
    tracker, trial: FrozenTrial, run_id: str | None, features: Features, folder: Path
) -> tuple[object, train.BestModel]:
    """The trial's best model, rebuilt from its logged weights, and its record.

    Raises:
        SweepError: The weights are missing, were trained on other data, or do
            not load into the model they describe.
    """
    best = _fetch_best(tracker, trial, run_id, folder)
    if best.data_checksum != features.checksum:
        raise SweepError(
            f"trial {trial.number} was trained on {best.data_source} "
            f"(checksum {best.data_checksum[:12]}), not on {features.source} "
            f"(checksum {features.checksum[:12]}); pass that --data-source"
        )
    try:
        return best.model(features), best
    except (ValueError, OSError) as e:
        raise SweepError(
            f"the weights trial {trial.number} logged do not load into its model ({e})"
        ) from None


def _fetch_best(
    tracker, trial: FrozenTrial, run_id: str | None, folder: Path
) -> train.BestModel:
    """Downloads the trial's best model (its weights and their description)."""
    missing = SweepError(
        f"trial {trial.number} kept no model in MLflow (run {run_id}, artifact "
        f"{keys.BEST_ARTIFACT}/); it was trained before trials kept their best "
        "weights, or its run was deleted; export another trial with --trial"
    )
    if run_id is None:
        raise missing
    local = tracker.download_folder(run_id, keys.BEST_ARTIFACT, folder)
    best = train.BestModel.load(local) if local is not None else None
    if best is None:
        raise missing
    return best


def load_model(path: Path, features: Features):
    """Loads an exported `model.keras` (safe mode) with its candidate features."""
    import sweep.model  # noqa: F401  (registers the model's Keras classes)
    from sweep.backend import keras

    model = keras.saving.load_model(path)
    model.set_candidates(features.movies)
    return model


def evaluate(model, features: Features) -> float:
    """The model's val top-100 accuracy on the validation split."""
    _, val_rows = features.split()
    x, y = features.examples(val_rows)
    metrics = model.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
    return float(metrics[train.METRIC_NAME])


def parity_check(model, features: Features, trial: FrozenTrial) -> float:
    """Evaluates a model; fails unless it scores what the trial logged.

    Returns:
        The saved model's val top-100 accuracy.

    Raises:
        SweepError: The two differ by more than `PARITY_TOLERANCE`.
    """
    accuracy = evaluate(model, features)
    if abs(accuracy - trial.value) > PARITY_TOLERANCE:
        raise SweepError(
            f"parity check failed: the exported model scores {accuracy:.4f} val "
            f"top-100 accuracy, trial {trial.number} logged {trial.value:.4f} "
            f"(tolerance {PARITY_TOLERANCE}); its logged weights do not reproduce "
            "it (changed or corrupted?), so nothing was exported"
        )
    return accuracy


def write_indexes(model, features: Features, folder: Path) -> None:
    """Writes the candidate and user indexes the model gives."""
    embeddings = np.asarray(model.retrieval.candidate_embeddings)
    # Row 0 of the movie table is the unused id 0.
    serving.CandidateIndex(
        movie_ids=features.movies["movie_id"][1:],
        titles=features.movie_titles[1:],
        embeddings=embeddings[1:],
    ).save(folder / serving.CANDIDATES_FILE)
    user_ids = np.unique(features.rating_user)
    user_features = {name: features.users[name][user_ids] for name in QUERY_FEATURES}
    serving.UserIndex(
        user_ids=user_ids,
        features=user_features,
        embeddings=np.asarray(model.query_model(user_features)),
    ).save(folder / serving.USERS_FILE)


def write_serving(model, folder: Path) -> None:
    """Writes the query tower as a TensorFlow SavedModel and checks it loads.

    Top-k stays out of the graph (JAX's `top_k` through jax2tf gives a StableHLO
    composite TensorFlow 2.21 cannot load); the candidate index ranks instead.

    Raises:
        SweepError: The SavedModel's outputs differ from the Keras model's.
    """
    import tensorflow as tf

    from sweep.backend import keras

    # Loading warns that the tower's custom gradients were not saved: serving
    # never asks for gradients.
    logging.getLogger("absl").setLevel(logging.ERROR)
    archive = keras.export.ExportArchive()
    archive.track(model.query_model)
    signature = {
        name: tf.TensorSpec([None], tf.int32, name=name) for name in QUERY_FEATURES
    }
    archive.add_endpoint("serve", model.query_model.call, input_signature=[signature])
    archive.write_out(str(folder), verbose=False)
    users = serving.UserIndex.load(folder.parent / serving.USERS_FILE)
    loaded = tf.saved_model.load(str(folder))
    outputs = loaded.serve({k: tf.constant(v) for k, v in users.features.items()})
    difference = float(np.max(np.abs(outputs.numpy() - users.embeddings)))
    if difference > SERVING_TOLERANCE:
        raise SweepError(
            f"the serving SavedModel's query embeddings differ from the Keras "
            f"model's by {difference:.2e} (tolerance {SERVING_TOLERANCE})"
        )


def register_model(stores: Stores, name: str, trial: FrozenTrial, folder: Path) -> str:
    """Registers an export as an MLflow pyfunc model and moves `champion` to it.

    Returns:
        The new model version.
    """
    import mlflow
    import pandas as pd

    from sweep import mlflow_model

    users = serving.UserIndex.load(folder / serving.USERS_FILE)
    mlflow.set_tracking_uri(stores.tracking_uri)
    mlflow.set_registry_uri(stores.tracking_uri)
    run_id = trial.user_attrs[keys.RUN_ID_ATTR]
    tags = {
        keys.STUDY_TAG: name,
        keys.TRIAL_TAG: str(trial.number),
        keys.RUN_ID_TAG: run_id,
    }
    versions = _versions()
    # Logged on the trial's run, so the registry links back to its curves.
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=mlflow_model.__file__,
            artifacts={
                "model": str(folder / MODEL_FILE),
                "candidates": str(folder / serving.CANDIDATES_FILE),
                "users": str(folder / serving.USERS_FILE),
            },
            signature=_signature(),
            input_example=pd.DataFrame({"user_id": users.user_ids[:2]}),
            pip_requirements=[
                f"{package}=={versions[package]}"
                for package in ("keras", "keras-rs", "jax", "numpy", "mlflow")
                if versions.get(package)
            ],
            registered_model_name=name,
            tags=tags,
        )
    client = mlflow.MlflowClient(stores.tracking_uri)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
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


def _move_into_place(folder: Path, out: Path) -> None:
    """Renames the finished export to `out` (replacing what --force allowed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(old)
    folder.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
