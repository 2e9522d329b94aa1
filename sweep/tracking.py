"""MLflow: one experiment per study, a parent run, one nested run per trial.

Optuna's own MLflow callback logs a trial once it has ended and through the
fluent (process-global) API; a sweep needs per-epoch curves while the trial runs
and nested runs that several workers write at once, so this uses `MlflowClient`
directly. Metrics are buffered and sent with `log_batch` (one call per
validation and one at the end), and the time spent in MLflow is measured.

A validation's batch goes through MLflow's asynchronous logging, and a
checkpoint's upload through a thread of the trial's run, so training does not
wait for the store's writes; a trial's run is only ended once every batch and
upload it started has been written (MLflow drains its queue when a run ends),
and one whose write failed is made again synchronously.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from sweep import keys, servers
from sweep.errors import SweepError
from sweep.keys import ROLE_TAG, STATE_TAG

# The MLflow UI opens an experiment in its GenAI view unless it is marked as
# model development.
EXPERIMENT_KIND = {keys.EXPERIMENT_KIND_TAG: "custom_model_development"}
# The MLflow UI keeps its runs table's columns in the browser; a "shared view"
# (the UI's Share button) is that state stored as an experiment tag, opened by
# `?viewStateShareKey=<key>`. Each study's experiment carries one, so the
# printed URL shows the scores and params of every trial, best first.
VIEW_KEY = "sweep-trials"
VIEW_TAG = f"{keys.SHARED_VIEW_TAG}{VIEW_KEY}"
# How long a refused write to a just-created experiment is tried again
# (`Tracker._write`).
PERMISSION_LAG_SECONDS = 10
# The runs table's metric columns (the second is its sort order).
TRIAL_METRICS = (keys.VAL_ACCURACY, keys.BEST_ACCURACY, keys.BEST_EPOCH)

# MLflow's SQLite store runs alembic migrations on first use and logs each one.
logging.getLogger("alembic").setLevel(logging.WARNING)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

# A tracking server's restart is waited for by `RetryingClient`, within the
# server wait; MLflow's own retries (seven, over about four minutes) would
# stretch every wait past it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

# A batch that MLflow's async logging could not write is logged by MLflow as
# an ERROR; `TrialRun` checks every batch and sends a failed one again, so the
# line would only alarm.
logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(
    logging.CRITICAL
)

# MLflow's async logging thread otherwise blocks up to 1 s in a queue read, and
# ending a run joins that thread. With buffering it waits on the stop event
# instead, which ending a run sets: the run ends at once, its batches drained.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")


def _now_ms() -> int:
    return int(time.time() * 1000)


class RetryingClient:
    """An `MlflowClient` whose calls wait for a busy store or a restarting server.

    Against a tracking server, a call that fails for a reason that passes (the
    server restarting: refused or cut connections, HTTP 5xx) is made again for
    up to the server wait (`sweep.servers`); MLflow's own HTTP retries are kept
    short so that the server wait is what decides. On a SQLite store another
    worker may hold the write lock, and MLflow's SQLite store waits only
    SQLite's default 5 s for it; a locked write is retried a bounded number of
    times. A locked write was rolled back, so retrying it cannot write twice.

    Args:
        client: The client.
        server: The tracking server, or None for a local store.
    """

    ATTEMPTS = 6

    def __init__(self, client: MlflowClient, server: servers.Server | None = None):
        self._client = client
        self._server = server

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        if self._server is not None:
            server = self._server

            def through_server(*args, **kwargs):
                if kwargs.get("synchronous") is False:
                    # Only queued here: its return says nothing of the server,
                    # and must not end an outage (`TrialRun._check_pending`
                    # reads the write's own outcome).
                    return attribute(*args, **kwargs)
                return server.call(attribute, *args, **kwargs)

            return through_server

        def call(*args, **kwargs):
            for attempt in range(self.ATTEMPTS):
                try:
                    return attribute(*args, **kwargs)
                except Exception as e:
                    if (
                        "database is locked" not in str(e)
                        or attempt == self.ATTEMPTS - 1
                    ):
                        raise
                    time.sleep(0.2 * 2**attempt)

        return call


def is_server(tracking_uri: str) -> bool:
    """Whether the tracking URI is a tracking server's (not a local store)."""
    return tracking_uri.startswith(("http://", "https://"))


def runs_view(params: list[str]) -> str:
    """The MLflow UI state of a study's runs table, as its shared-view tag holds it.

    Columns for the trial state, the scores and the searched params, sorted by
    the best accuracy (the JSON the UI's Share button writes, in plain form).
    """
    columns = ["attributes.`Duration`", f"tags.`{STATE_TAG}`"]
    columns += [f"metrics.`{m}`" for m in TRIAL_METRICS]
    columns += [f"params.`{p}`" for p in params]
    return json.dumps(
        {
            "selectedColumns": columns,
            "orderByKey": f"metrics.`{TRIAL_METRICS[1]}`",
            "orderByAsc": False,
        }
    )


class Tracker:
    """The MLflow side of one study.

    Args:
        tracking_uri: The MLflow tracking URI (SQLite file, server URL, ...).
        artifact_root: Where a new experiment keeps artifacts, for local stores;
            None lets the tracking server decide.
    """

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        server = None
        if is_server(tracking_uri):
            server = servers.Server(f"the MLflow tracking server {tracking_uri}")
        self.client = RetryingClient(MlflowClient(tracking_uri), server)

    def check(self) -> None:
        """One request, so that a store that cannot be used is told at once."""
        self.client.search_experiments(max_results=1)

    def experiment(self, name: str, params: list[str]) -> str:
        """The id of the study's experiment, created (model development) if new.

        Args:
            name: The study's name, which the experiment takes.
            params: The searched hyperparameters, shown as columns of the
                experiment's runs view.
        """
        tags = {**EXPERIMENT_KIND, VIEW_TAG: runs_view(params)}
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise SweepError(
                    f"MLflow experiment {name!r} is deleted but still in "
                    f"{self.tracking_uri}; restore it (mlflow experiments restore "
                    f"--experiment-id {experiment.experiment_id}) or remove it for "
                    "good (mlflow gc), then launch again"
                )
            for key, value in tags.items():
                # Unchanged tags are not written: a worker may read them only.
                if experiment.tags.get(key) != value:
                    self._write(
                        experiment.experiment_id,
                        self.client.set_experiment_tag,
                        experiment.experiment_id,
                        key,
                        value,
                    )
            return experiment.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (Path(self.artifact_root) / name).resolve().as_uri()
        try:
            return self.client.create_experiment(
                name, artifact_location=location, tags=tags
            )
        except MlflowException as e:
            # Another worker created it since we looked.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise SweepError(
                    f"cannot create MLflow experiment {name!r}: {e}"
                ) from None
            return experiment.experiment_id

    def _write(self, experiment_id: str, call: Callable, *args, **kwargs):
        """Makes a write to an experiment another process may have just created.

        Args:
            experiment_id: The experiment written to (for the message).
            call: The client's method.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What `call` returns.

        Raises:
            SweepError: The tracking server refuses this user the write.
        """
        # MLflow's basic-auth server grants an experiment's creator MANAGE in a
        # second write after creating it: another worker of the same user that
        # reads the experiment in between is refused for a moment.
        deadline = time.monotonic() + PERMISSION_LAG_SECONDS
        while True:
            try:
                return call(*args, **kwargs)
            except MlflowException as e:
                if e.error_code != "PERMISSION_DENIED":
                    raise
                if time.monotonic() > deadline:
                    raise SweepError(
                        "the MLflow tracking server "
                        f"{servers.redact(self.tracking_uri)} refuses this user "
                        f"writes to experiment {experiment_id}; sign in as its "
                        "owner (MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD) or have it grant you EDIT"
                    ) from None
            time.sleep(0.5)

    def start_study_run(self, experiment_id: str, study_name: str, tags: dict) -> str:
        """Creates the study's parent run; returns its id."""
        run = self._write(
            experiment_id,
            self.client.create_run,
            experiment_id,
            run_name=study_name,
            tags={ROLE_TAG: "study", keys.STUDY_NAME_TAG: study_name, **tags},
        )
        return run.info.run_id

    def start_trial(
        self,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        trial_number: int,
        params: dict,
        tags: dict | None = None,
        run_name: str | None = None,
    ) -> TrialRun:
        """Creates a trial's run nested under the study's run, with its params.

        Named `trial-N` unless `run_name` is given; `tags` may override the
        role (`keys.ROLE_TAG`).
        """
        start = time.perf_counter()
        run_name = run_name or f"trial-{trial_number}"
        run = self._write(
            experiment_id,
            self.client.create_run,
            experiment_id,
            run_name=run_name,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                MLFLOW_RUN_NAME: run_name,
                ROLE_TAG: "trial",
                keys.STUDY_NAME_TAG: study_name,
                keys.TRIAL_NUMBER_TAG: str(trial_number),
                STATE_TAG: "RUNNING",
                **(tags or {}),
            },
        )
        trial_run = TrialRun(self.client, run.info.run_id)
        trial_run.params = [Param(k, str(v)) for k, v in params.items()]
        trial_run.seconds += time.perf_counter() - start
        trial_run.flush(wait=False)
        return trial_run

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Ends a run (e.g. the study's parent run) with an MLflow status."""
        self.client.set_terminated(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        """Marks an ended run RUNNING again (the study's run, on resume)."""
        self.client.update_run(run_id, status="RUNNING")

    def kill_trial_run(self, run_id: str, reason: str) -> None:
        """Ends a trial run whose worker is gone: KILLED, with the reason."""
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING":
            return
        self.client.log_batch(
            run_id,
            tags=[RunTag(STATE_TAG, "FAIL"), RunTag(keys.FAIL_REASON_TAG, reason)],
        )
        self.client.set_terminated(run_id, "KILLED")

    def download_checkpoint(
        self, run_id: str, artifact_path: str, folder: Path
    ) -> Path | None:
        """Fetches the checkpoint file a run logged, or None if it has none."""
        try:
            names = [f.path for f in self.client.list_artifacts(run_id, artifact_path)]
        except Exception:  # a run without artifacts, or an unreachable store
            return None
        if not names:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        local = self.client.download_artifacts(run_id, names[-1], str(folder))
        return Path(local)

    def download_folder(
        self, run_id: str, artifact_path: str, folder: Path
    ) -> Path | None:
        """Fetches a folder a run logged into `folder`, or None if it has none."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            local = self.client.download_artifacts(run_id, artifact_path, str(folder))
        except Exception:  # MLflow raises its own or OSError for a missing one
            return None
        return Path(local)


class TrialRun:
    """One trial's run: buffered metrics, flushed in batches, then ended.

    Attributes:
        run_id: The MLflow run id.
        seconds: Wall time spent in MLflow calls for this run so far.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self.seconds = 0.0
        self.params: list[Param] = []
        self._metrics: list[Metric] = []
        self._tags: list[RunTag] = []
        # Batches sent asynchronously and their MLflow RunOperations.
        self._pending: list[tuple[dict, object]] = []
        # Uploads started in the background: (file, artifact path, its future).
        self._uploads: list[tuple[Callable, Path, str, Future]] = []
        self._uploader: ThreadPoolExecutor | None = None

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Buffers one metric point (sent at the next `flush`)."""
        self._metrics.append(Metric(key, float(value), _now_ms(), step))

    def set_tag(self, key: str, value) -> None:
        """Buffers one tag."""
        self._tags.append(RunTag(key, str(value)))

    def flush(self, wait: bool = True) -> None:
        """Sends what is buffered in one `log_batch` call.

        Args:
            wait: Whether to wait for the write; if not, MLflow writes it in its
                async logging thread and `finish` checks it was written.
        """
        if not (self._metrics or self._tags or self.params):
            return
        start = time.perf_counter()
        batch = {"metrics": self._metrics, "params": self.params, "tags": self._tags}
        self._metrics, self._tags, self.params = [], [], []
        if wait:
            self.client.log_batch(self.run_id, **batch)
        else:
            operations = self.client.log_batch(self.run_id, **batch, synchronous=False)
            self._pending.append((batch, operations))
        self.seconds += time.perf_counter() - start

    def _check_pending(self) -> None:
        """Waits for the batches sent asynchronously; resends all if one failed.

        MLflow merges a run's queued batches into one write and reports its
        failure (e.g. another worker held a SQLite store's lock longer than
        MLflow waits) only on the first of them: the others read as written
        but are not. So after any failure every batch is sent again, in order;
        MLflow keeps one copy of a metric point or param sent twice.
        """
        start = time.perf_counter()
        pending, self._pending = self._pending, []
        failed = False
        for _, operations in pending:
            try:
                operations.wait()
            except MlflowException:
                failed = True
        if failed:
            for batch, _ in pending:
                self.client.log_batch(self.run_id, **batch)
        self.seconds += time.perf_counter() - start

    def log_artifact(self, path: Path, artifact_path: str, wait: bool = True) -> None:
        """Copies a local file into the run's artifacts (timed like the rest).

        Args:
            path: The file.
            artifact_path: The folder of the run's artifacts it goes to.
            wait: Whether to wait for the copy; if not, one thread of this run
                makes the copies in order and `finish` checks they were made.
                The file must then stay until the run ends, and be replaced
                atomically if it changes (a copy takes the file as it is when
                the copy starts).
        """
        self._upload(self.client.log_artifact, path, artifact_path, wait)

    def log_artifacts(
        self, folder: Path, artifact_path: str, wait: bool = True
    ) -> None:
        """Copies a local folder's files into the run's artifacts.

        Args:
            folder: The folder.
            artifact_path: The folder of the run's artifacts they go to.
            wait: As for `log_artifact`.
        """
        self._upload(self.client.log_artifacts, folder, artifact_path, wait)

    def _upload(self, call, path: Path, artifact_path: str, wait: bool) -> None:
        start = time.perf_counter()
        if wait:
            call(self.run_id, str(path), artifact_path)
        else:
            if self._uploader is None:
                self._uploader = ThreadPoolExecutor(1, f"sweep-upload-{self.run_id}")
            future = self._uploader.submit(call, self.run_id, str(path), artifact_path)
            self._uploads.append((call, path, artifact_path, future))
        self.seconds += time.perf_counter() - start

    def _check_uploads(self) -> None:
        """Waits for the background uploads; makes a failed one again."""
        start = time.perf_counter()
        uploads, self._uploads = self._uploads, []
        failed = [(c, p, a) for c, p, a, future in uploads if future.exception()]
        if self._uploader is not None:
            self._uploader.shutdown()
            self._uploader = None
        for call, path, artifact_path in dict.fromkeys(failed):
            # The files as they are now: the latest state of what was uploaded.
            call(self.run_id, str(path), artifact_path)
        self.seconds += time.perf_counter() - start

    def finish(self, state: str, status: str | None = None) -> None:
        """Tags the trial state, flushes, and ends the run.

        Args:
            state: The Optuna state: COMPLETE and PRUNED end the run FINISHED,
                FAIL ends it FAILED.
            status: The MLflow status, if not the one `state` implies (e.g.
                KILLED for an interrupted trial).
        """
        self.set_tag(STATE_TAG, state)
        self.flush()
        self._check_uploads()
        start = time.perf_counter()
        # Ending a run first drains MLflow's async queue (all our batches).
        self.client.set_terminated(self.run_id, status or keys.RUN_STATUS[state])
        self.seconds += time.perf_counter() - start
        self._check_pending()
