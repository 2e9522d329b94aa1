"""Deleting a study: its trials, its MLflow runs and artifacts, its checkpoints.

What a study leaves behind is spread over four places: the Optuna storage (the
study and its confirmation stage), the MLflow experiment of the same name (runs,
metrics, artifacts), the Model Registry (versions its exports registered) and
the home's `checkpoints/`. `sweep delete` removes all of them so that the name
can be launched again.

The Optuna study goes last: it is what names the rest, so a deletion cut short
(a server away, Ctrl-C) is finished by running `sweep delete` again.

The MLflow experiment is renamed before it is deleted (MLflow keeps a deleted
experiment's name taken) and its runs' artifacts are deleted through MLflow's
artifact repositories (a server's proxied ones included). On a tracking store
`sweep` reaches as a database (the home's SQLite file), `mlflow gc` then removes
the experiment and its runs for good; a tracking server's rows stay in its
database as deleted, for `mlflow gc` on the server. Registered versions are
deleted only with `models`; kept ones keep the experiment (deleted, renamed)
so that their logged models still resolve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
from mlflow.entities import Experiment, LifecycleStage, ViewType
from mlflow.exceptions import MlflowException

from sweep import confirm, keys, presence, retries, servers
from sweep.errors import SweepError
from sweep.stores import Stores, open_study, open_tracker
from sweep.tracking import Tracker, is_server


@dataclasses.dataclass(frozen=True)
class Plan:
    """What deleting a study removes (shown before the user confirms).

    Attributes:
        name: The study.
        studies: The Optuna studies: the study, and its confirmation stage.
        trials: Their trials, all states.
        tracker: The MLflow side, open.
        experiment: Its MLflow experiment, if it still has one.
        runs: The artifact URIs of the experiment's runs (deleted ones too).
        versions: Its registered model versions.
        models: Whether the registered versions go too.
        checkpoints: Its checkpoint folders on this machine.
    """

    name: str
    studies: tuple[optuna.Study, ...]
    trials: int
    tracker: Tracker
    experiment: Experiment | None
    runs: tuple[str, ...]
    versions: tuple[str, ...]
    models: bool
    checkpoints: tuple[Path, ...]

    def describe(self) -> str:
        """One line: what goes, and what stays."""
        parts = [f"{self.trials} trials"]
        if self.experiment is not None:
            parts.append(
                f"MLflow experiment {self.experiment.experiment_id} "
                f"({len(self.runs)} runs)"
            )
        if self.versions and self.models:
            parts.append(f"{len(self.versions)} registered model versions")
        if self.checkpoints:
            parts.append("its checkpoints")
        line = f"study {self.name!r}: " + ", ".join(parts)
        if self.versions and not self.models:
            line += (
                f" (keeping {len(self.versions)} registered model versions of "
                f"{self.name!r}; --models deletes them too)"
            )
        return line


def plan(stores: Stores, checkpoints: Path, name: str, models: bool) -> Plan:
    """What `delete` would remove; refuses while a worker of the study is alive.

    Args:
        stores: Where the study lives.
        checkpoints: The home's checkpoint folder (one folder per study).
        name: The study.
        models: Delete its registered model versions too.

    Raises:
        SweepError: No such study, or a worker still runs one of its trials.
    """
    study = open_study(stores, name)
    studies = confirm.stages(study)
    _refuse_if_live(name, studies)
    trials = sum(len(one.get_trials(deepcopy=False)) for one in studies)
    tracker = open_tracker(stores)
    experiment = _experiment(tracker, study)
    runs = () if experiment is None else _artifact_uris(tracker, experiment)
    versions = _versions(tracker, name)
    folders = tuple(
        checkpoints / one.study_name
        for one in studies
        if (checkpoints / one.study_name).is_dir()
    )
    return Plan(name, tuple(studies), trials, tracker, experiment, runs, versions,
                models, folders)  # fmt: skip


def _refuse_if_live(name: str, studies: list[optuna.Study]) -> None:
    """Raises unless no process works on the study.

    Args:
        name: The study.
        studies: The study and its confirmation stage (`confirm.stages`).

    Raises:
        SweepError: A worker runs one of its trials, or a `sweep` process has
            the study open (loading data, between trials).
    """
    live = presence.workers(studies)
    if live:
        raise SweepError(
            f"study {name!r} has a live worker ({', '.join(live)}, seen within "
            f"the last {retries.GRACE_SECONDS} s); stop it (Ctrl-C) or wait for "
            "it to end, then delete"
        )


def _experiment(tracker: Tracker, study: optuna.Study) -> Experiment | None:
    """The study's MLflow experiment, if it still has one."""
    experiment_id = study.user_attrs.get(keys.EXPERIMENT_ATTR)
    if experiment_id is None:
        return None
    try:
        return tracker.client.get_experiment(experiment_id)
    except MlflowException:
        return None  # removed by a deletion cut short


def _artifact_uris(tracker: Tracker, experiment: Experiment) -> tuple[str, ...]:
    """The artifact URI of every run of the experiment, deleted ones included."""
    uris, token = [], None
    while True:
        page = tracker.client.search_runs(
            [experiment.experiment_id], run_view_type=ViewType.ALL,
            max_results=1000, page_token=token,
        )  # fmt: skip
        uris += [run.info.artifact_uri for run in page]
        token = page.token
        if not token:
            return tuple(uris)


def _versions(tracker: Tracker, name: str) -> tuple[str, ...]:
    """The registered versions of the study's model (named after the study)."""
    found = tracker.client.search_model_versions(f"name = '{name}'")
    return tuple(sorted((v.version for v in found), key=int))


def delete(stores: Stores, deletion: Plan) -> None:
    """Removes everything `deletion` lists, the Optuna study last.

    Raises:
        SweepError: A worker started on the study since `plan` (nothing is
            removed), or a store refused (the study stays, to delete again).
    """
    # Marked first, then looked at again (the user may have taken a while to
    # confirm): a worker that starts from now on sees the mark and stops. A
    # deletion cut short earlier left its mark; that one stays until the end.
    study = deletion.studies[0]
    earlier = presence.deleting_since(study)
    presence.mark_deleting(study, earlier or time.time())
    try:
        _refuse_if_live(deletion.name, list(deletion.studies))
    except BaseException:  # a live worker, Ctrl-C: nothing was removed
        with contextlib.suppress(Exception, servers.ServerUnavailable):
            presence.mark_deleting(study, earlier)
        raise
    try:
        if deletion.versions and deletion.models:
            deletion.tracker.client.delete_registered_model(deletion.name)
        if deletion.experiment is not None:
            _delete_experiment(stores, deletion)
    except MlflowException as e:
        presence.mark_deleting(study, earlier)
        raise SweepError(
            f"MLflow refused to delete study {deletion.name!r}'s runs or models "
            f"({servers.one_line(e)[:300]}); the study is kept: run `sweep delete "
            f"{deletion.name}` again as a user allowed to manage its experiment"
        ) from None
    for folder in deletion.checkpoints:
        shutil.rmtree(folder, ignore_errors=True)
    # The confirmation stage first: a study without it is still a study.
    for one in reversed(deletion.studies):
        optuna.delete_study(study_name=one.study_name, storage=one._storage)  # noqa: SLF001


def _delete_experiment(stores: Stores, deletion: Plan) -> None:
    """Deletes the runs' artifacts, frees the experiment's name, deletes it."""
    client = deletion.tracker.client
    experiment = deletion.experiment
    experiment_id = experiment.experiment_id
    for uri in deletion.runs:
        _delete_artifacts(uri, stores.tracking_uri)
        folder = _local_path(uri)
        if folder is not None:
            # The run's own folder, which holds its `artifacts/`, on this disk.
            shutil.rmtree(folder.parent, ignore_errors=True)
    if is_server(stores.tracking_uri) and (deletion.models or not deletion.versions):
        # No registered version needs the exports' logged models any more; a
        # server keeps their files (a local store's folder goes below).
        _delete_logged_models(client, experiment_id, stores.tracking_uri)
    if experiment.name == deletion.name:
        # A deleted experiment keeps its name taken; this one no longer needs it.
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        client.rename_experiment(
            experiment_id, f"{deletion.name} (deleted {stamp}, id {experiment_id})"
        )
    if experiment.lifecycle_stage == LifecycleStage.ACTIVE:
        client.delete_experiment(experiment_id)
    if is_server(stores.tracking_uri) or (deletion.versions and not deletion.models):
        return
    _collect(stores.tracking_uri, experiment_id)
    folder = _local_path(experiment.artifact_location)
    if folder is not None:
        # The experiment's own folder (its logged models' files, now unused).
        shutil.rmtree(folder, ignore_errors=True)


def _delete_logged_models(client, experiment_id: str, tracking_uri: str) -> None:
    """Deletes the experiment's logged models (an export's), files included."""
    models, token = [], None
    while True:  # every page first: deleting shifts the later ones
        page = client.search_logged_models([experiment_id], page_token=token)
        models += list(page)
        token = page.token
        if not token:
            break
    for model in models:
        _delete_artifacts(model.artifact_location, tracking_uri)
        client.delete_logged_model(model.model_id)


def _delete_artifacts(uri: str, tracking_uri: str) -> None:
    """Deletes the artifacts under `uri` through MLflow's artifact repository."""
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    repository = get_artifact_repository(uri, tracking_uri=tracking_uri)
    # Nothing was logged there, or a deletion cut short removed it.
    with contextlib.suppress(FileNotFoundError):
        repository.delete_artifacts()


def _local_path(uri: str) -> Path | None:
    """The folder a `file://` artifact URI names (None for any other scheme)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def _collect(tracking_uri: str, experiment_id: str) -> None:
    """`mlflow gc`: removes a deleted experiment and its runs from the database.

    Raises:
        SweepError: It failed (its last line is shown).
    """
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", tracking_uri,
         "--tracking-uri", tracking_uri, "--experiment-ids", experiment_id],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise SweepError(
            f"mlflow gc could not remove experiment {experiment_id} from "
            f"{servers.redact(tracking_uri)} ({lines[-1][:300]}); its runs are "
            f"deleted but kept; run `mlflow gc --backend-store-uri "
            f"{servers.redact(tracking_uri)} --experiment-ids {experiment_id}`"
        )
