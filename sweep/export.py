"""A study's champion -> a servable recommender on disk and in the MLflow registry.

What is exported: once the confirmation stage (`sweep.confirm`) has named a
champion, that finalist's seed run with the best score, with the confirmed
mean and spread beside its own value; otherwise the search's best trial, and
the export says its value is unconfirmed. `--trial N` exports search trial N.
The registry's `@champion` alias follows the confirmed champion (in a study
without a confirmation stage, the search's best, as exported).

Every complete trial logged its best epoch's weights (`sweep.objective`), so the
export rebuilds that exact model rather than retraining it. Everything is
written to a hidden folder beside the target and checked there: the saved
`model.keras` is loaded back (safe mode) and evaluated on the validation split,
and must score what the trial logged (within `PARITY_TOLERANCE`); the serving
SavedModel is loaded back and must give the Keras query tower's outputs. Only
then is the folder renamed into place, so the target holds a complete export
or nothing new, and then the model registered (`sweep.registry`), so a
registered version always has its export.

The export folder holds:
    model.keras      the two-tower model (`keras.saving.load_model`, safe mode;
                     `import sweep.model` first to register its classes)
    candidates.npz   every movie's id, title and candidate embedding
    users.npz        every user's query features and query embedding
    serving/         a TensorFlow SavedModel of the query tower (signature
                     `serve`: the query features in, the query embedding out)
    export.json      study, trial, params, scores (and the confirmation's),
                     data checksum, versions
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
from typing import TYPE_CHECKING

import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from sweep import confirm, keys, registry, servers, serving, summary
from sweep.data import QUERY_FEATURES, Features
from sweep.errors import SweepError
from sweep.home import nearest_existing
from sweep.stores import Stores, open_study, open_tracker

if TYPE_CHECKING:
    from sweep import train

PARITY_TOLERANCE = 0.002
# Serving outputs may differ from Keras's by float rounding between runtimes.
SERVING_TOLERANCE = 1e-4
MODEL_FILE = "model.keras"
SERVING_DIR = "serving"
EXPORT_FILE = "export.json"
PACKAGES = ("sweep", "keras", "keras-rs", "jax", "tensorflow-cpu", "numpy", "optuna",
            "mlflow")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Choice:
    """What an export serves, and how far its value is confirmed.

    Attributes:
        trial: The trial whose logged model is exported: a search trial, or
            the champion's best seed run (a trial of the confirmation study).
        champion: The confirmed champion, when `trial` is its best seed run.
        unconfirmed: Why the value is not a confirmed one (None if it is).
        alias: Whether the registry's `@champion` moves to this export.
    """

    trial: FrozenTrial
    champion: confirm.Finalist | None = None
    unconfirmed: str | None = None
    alias: bool = True

    @property
    def number(self) -> int:
        """The search trial whose configuration is exported."""
        return self.champion.trial.number if self.champion else self.trial.number


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export made.

    Attributes:
        folder: The export folder.
        trial: The exported configuration's search trial number.
        logged_accuracy: The exported run's logged best val top-100 accuracy.
        exported_accuracy: The exported model's, measured again.
        model_version: The registered model version (None if not registered).
        alias: Whether `@champion` moved to that version.
    """

    folder: Path
    trial: int
    logged_accuracy: float
    exported_accuracy: float
    model_version: str | None
    alias: bool = False


def choose(optuna_study: optuna.Study, number: int | None) -> Choice:
    """The champion's best seed run; without one, the search's best or trial `number`.

    Raises:
        SweepError: No complete trial, or `number` is not a complete trial.
    """
    name = optuna_study.study_name
    finalists = confirm.study_results(optuna_study)
    best = confirm.champion(finalists)
    planned = confirm.stored_plan(optuna_study) is not None
    if number is None and best is not None:
        return Choice(best.best_run, champion=best)
    trial = choose_trial(optuna_study, number)
    if best is not None:
        why = f"trial {number}'s search run was asked for; the confirmed champion "
        why += f"is trial {best.trial.number} (`sweep export {name}` exports its "
        why += "best seed run)"
    elif finalists and all(f.done for f in finalists):
        why = "every finalist of the confirmation stage collapsed on a seed"
    elif planned:
        state = confirm.champion_text(finalists) or "confirmation: not started"
        why = f"the confirmation stage has not finished ({state}; `sweep resume "
        why += f"{name}` finishes it)"
    else:
        why = (
            "the study has no confirmation stage; one search value is one seed's "
            f"best (`sweep confirm {name}` retrains its finalists)"
        )
    # `@champion` means the confirmed champion wherever a stage was asked for.
    return Choice(trial, unconfirmed=why, alias=not planned and best is None)


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
) -> Choice:
    """Checks an export's inputs before any work: the folder, study and trial.

    Returns:
        What to export (`choose`).

    Raises:
        SweepError: A folder that cannot be written, is the current one or
            is not empty (without `force`); an unknown study; or a trial that
            is missing or not complete.
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
    # The export is renamed into place at the end: the current folder (or one
    # holding it) would be swapped from under the shell that runs `sweep`.
    where = _absolute(out)
    if where == Path.cwd() or where in Path.cwd().parents:
        raise SweepError(
            f"--out {out} is the current folder or holds it; expected a new or "
            "empty folder to export into, e.g. --out ./export"
        )
    # The export is built beside `out`, so that is where it must be writable.
    beside = nearest_existing(where.parent)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sweep-probe-", dir=beside))
    except OSError as e:
        raise SweepError(
            f"--out {out} cannot be written ({e.strerror} in {beside}); "
            "choose a folder you can write to"
        ) from None
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SweepError(
            f"--out {out} exists and is not empty; choose a new folder or pass "
            "--force to replace it"
        )
    return choose(open_study(stores, name), trial_number)


def _absolute(out: Path) -> Path:
    """`out` from the root, without `.` or `..` (so it always has a name)."""
    return Path(os.path.abspath(out))


def export(
    name: str,
    choice: Choice,
    out: Path,
    stores: Stores,
    features: Features,
    register: bool = True,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Exports one complete trial of a study to `out` (see `select`).

    Args:
        name: The study name.
        choice: What to export, from `select`.
        out: The export folder; replaced if it exists (`select` checked it may be).
        stores: The study's Optuna and MLflow stores.
        features: The data the trial was trained on.
        register: Also register the model in the MLflow Model Registry under
            the study name (and move `@champion` to it if `choice.alias`).
        log: Where progress lines go.

    Returns:
        What was exported.

    Raises:
        SweepError: The trial's model is missing, does not load, was trained on
            other data, or fails the parity check; `out` is then left as it was.
    """
    out = _absolute(out)
    trial = choice.trial
    tracker = open_tracker(stores)
    run_id = trial.user_attrs.get(keys.RUN_ID_ATTR)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log(_announce(name, choice, run_id))
        model, best = _rebuild(tracker, trial, run_id, features, work / "fetched")
        folder = work / "export"
        folder.mkdir()
        model.save(folder / MODEL_FILE)
        # Everything below comes from the saved file, as a user will load it.
        model = load_model(folder / MODEL_FILE, features)
        test_fraction = best.config.test_fraction
        accuracy = parity_check(model, features, trial, test_fraction)
        log(
            f"parity: exported model {accuracy:.4f}, trial logged {trial.value:.4f} "
            f"val top-100 accuracy"
        )
        description = {
            "study": name,
            "trial": choice.number,
            "mlflow_run_id": run_id,
            "params": trial.params,
            "config": dataclasses.asdict(best.config),
            "best_val_top100_accuracy": trial.value,
            "best_epoch": best.epoch,
            "exported_val_top100_accuracy": accuracy,
            "confirmed": choice.champion is not None,
            **_confirmation(choice),
            "data_source": features.source,
            "data_checksum": features.checksum,
            "versions": _versions(),
        }
        if test_fraction:
            from sweep import train

            test = train.evaluate(model, features, features.test_rows(test_fraction))
            description["test_top100_accuracy"] = test
            log(f"test top-100 accuracy {test:.4f} on the held-out ratings")
        if choice.unconfirmed:
            log(f"unconfirmed: {choice.unconfirmed}")
        write_indexes(model, features, folder)
        write_serving(model, folder / SERVING_DIR)
        (folder / EXPORT_FILE).write_text(json.dumps(description, indent=2) + "\n")
        # In place before it is registered: a version (and `@champion`) never
        # points at an export that did not land.
        _move_into_place(folder, out)
        version = None
        if register:
            try:
                version = registry.register(
                    stores.tracking_uri,
                    name,
                    out / MODEL_FILE,
                    run_id,
                    _version_tags(name, choice, run_id),
                    description["versions"],
                    choice.alias,
                )
            except MlflowException as e:
                raise SweepError(
                    f"exported to {out}, but MLflow refused to register it "
                    f"({servers.one_line(e)[:300]}); export again with --force "
                    "to register it"
                ) from None
            alias = f" as @{registry.CHAMPION_ALIAS}" if choice.alias else ""
            log(f"registered model {name!r} version {version}{alias}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        out, choice.number, trial.value, accuracy, version, register and choice.alias
    )


def _announce(name: str, choice: Choice, run_id: str | None) -> str:
    """The export's first line: what is exported, from which run."""
    champion = choice.champion
    if champion is None:
        return f"exporting trial {choice.number} of study {name!r} (run {run_id})"
    confirmed = confirm.confirmed_text(
        champion.trial.number,
        champion.trial.params,
        champion.mean,
        champion.std,
        len(champion.runs),
    )
    return (
        f"exporting the confirmed champion of study {name!r}, {confirmed}; its "
        f"best seed run (seed {choice.trial.user_attrs.get(keys.SEED_ATTR)}, run "
        f"{run_id})"
    )


def _confirmation(choice: Choice) -> dict:
    """export.json's record of the confirmation (or of why there is none)."""
    champion = choice.champion
    if champion is None:
        return {"unconfirmed": choice.unconfirmed}
    values = champion.values
    record = {
        "confirmation": {
            "seed": choice.trial.user_attrs.get(keys.SEED_ATTR),
            "seeds": len(values),
            "mean_val_top100_accuracy": champion.mean,
            "std_val_top100_accuracy": champion.std,
            "min_val_top100_accuracy": min(values),
            "max_val_top100_accuracy": max(values),
            "search_val_top100_accuracy": champion.trial.value,
            "search_mlflow_run_id": champion.trial.user_attrs.get(keys.RUN_ID_ATTR),
        }
    }
    if champion.test_mean is not None:
        record["confirmation"]["mean_test_top100_accuracy"] = champion.test_mean
    return record


def _version_tags(name: str, choice: Choice, run_id: str) -> dict[str, str]:
    """The registered version's tags: what it is, and whether it is confirmed."""
    tags = {
        keys.STUDY_TAG: name,
        keys.TRIAL_TAG: str(choice.number),
        keys.RUN_ID_TAG: run_id,
        keys.CONFIRMED_TAG: str(choice.champion is not None).lower(),
    }
    if choice.champion is not None:
        tags[keys.SEED_TAG] = str(choice.trial.user_attrs.get(keys.SEED_ATTR))
        tags[keys.CONFIRMED_MEAN_TAG] = f"{choice.champion.mean:.4f}"
    return tags


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
    from sweep import train

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


def evaluate(model, features: Features, test_fraction: float = 0.0) -> float:
    """The model's val top-100 accuracy on the validation split.

    Args:
        model: The model.
        features: The data.
        test_fraction: The held-out share the model was trained without (the
            validation split is of the rest).
    """
    from sweep import train

    _, val_rows = features.split(test_fraction)
    return train.evaluate(model, features, val_rows)


def parity_check(
    model, features: Features, trial: FrozenTrial, test_fraction: float = 0.0
) -> float:
    """Evaluates a model; fails unless it scores what the trial logged.

    Returns:
        The saved model's val top-100 accuracy.

    Raises:
        SweepError: The two differ by more than `PARITY_TOLERANCE`.
    """
    accuracy = evaluate(model, features, test_fraction)
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

    archive = keras.export.ExportArchive()
    archive.track(model.query_model)
    signature = {
        name: tf.TensorSpec([None], tf.int32, name=name) for name in QUERY_FEATURES
    }
    archive.add_endpoint("serve", model.query_model.call, input_signature=[signature])
    archive.write_out(str(folder), verbose=False)
    users = serving.UserIndex.load(folder.parent / serving.USERS_FILE)
    # Loading warns that the tower's custom gradients were not saved: serving
    # never asks for gradients. (Set here: writing the archive resets absl's
    # level.)
    logging.getLogger("absl").setLevel(logging.ERROR)
    loaded = tf.saved_model.load(str(folder))
    outputs = loaded.serve({k: tf.constant(v) for k, v in users.features.items()})
    difference = float(np.max(np.abs(outputs.numpy() - users.embeddings)))
    if difference > SERVING_TOLERANCE:
        raise SweepError(
            f"the serving SavedModel's query embeddings differ from the Keras "
            f"model's by {difference:.2e} (tolerance {SERVING_TOLERANCE})"
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
