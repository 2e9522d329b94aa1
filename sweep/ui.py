"""`sweep ui`: the MLflow UI on a sweep's tracking store, light enough for a laptop.

Plain `mlflow ui` starts four server workers, a job runner and its queue
consumers (for GenAI jobs a sweep never uses). Beside a running
sweep one server worker is plenty, and the job runner is switched off through
MLflow's own `MLFLOW_SERVER_ENABLE_JOB_EXECUTION`. The UI reads the same SQLite
file the workers write; in WAL mode (`sweep.sqlite`) reading does not
block writing.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mlflow.exceptions import MlflowException

from sweep import servers
from sweep.errors import SweepError
from sweep.tracking import EXPERIMENT_KIND, VIEW_KEY, is_server

STARTUP_SECONDS = 120


def browse_hint(stores, experiment_id: str) -> str:
    """The line that tells where to browse a study's trials after a sweep.

    Args:
        stores: The study's `sweep.stores.Stores`.
        experiment_id: Its MLflow experiment.
    """
    uri = stores.tracking_uri
    if is_server(uri):
        # A tracking server serves its own UI.
        return f"Browse the trials: {runs_url(uri.rstrip('/'), experiment_id)}"
    command = "sweep ui" + ("" if stores.default_tracking else f" --tracking-uri {uri}")
    return (
        f"Browse the trials: {command}, then open "
        f"{runs_url('http://127.0.0.1:5000', experiment_id)}"
    )


def runs_url(base_url: str, experiment_id: str) -> str:
    """The runs table of an experiment, best trial first, in the model view.

    Without `workflowType=machine_learning` MLflow 3 may open an experiment in
    its GenAI view (traces, "Detect issues"). The study's shared view
    (`tracking.runs_view`) sorts by the trials' best accuracy, so the first row
    answers "which configuration won", and shows the scores and params as
    columns (MLflow ignores a shared view if the URL carries a sort itself).
    """
    return (
        f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={VIEW_KEY}"
    )


def sweep_experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(name, id) of every study's experiment in the store, by name."""
    from mlflow.tracking import MlflowClient

    ((key, value),) = EXPERIMENT_KIND.items()
    experiments = MlflowClient(tracking_uri).search_experiments(
        filter_string=f"tags.`{key}` = '{value}'"
    )
    return sorted((e.name, e.experiment_id) for e in experiments)


def check_port(host: str, port: int) -> None:
    """Fails with a clear message if `host:port` cannot be listened on.

    Raises:
        SweepError: The port is taken (or the host is not an address here).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                raise SweepError(
                    f"--host {host} is not an address of this machine "
                    f"({e.strerror}); pass one it has, e.g. --host 127.0.0.1 (this "
                    "machine only) or --host 0.0.0.0 (every interface)"
                ) from None
            raise SweepError(
                f"cannot listen on {host}:{port} ({e.strerror}); is another UI "
                f"running there? Pass another --port, e.g. --port {port % 65535 + 1}"
            ) from None


def server_command(tracking_uri: str, artifact_root: Path | None, host: str,
                   port: int) -> list[str]:  # fmt: skip
    """The `mlflow server` command line: one worker, this store's artifacts."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri,
        "--registry-store-uri", tracking_uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if artifact_root is not None:
        command += ["--artifacts-destination", str(artifact_root)]
    return command


def serve(
    tracking_uri: str,
    artifact_root: Path | None,
    server_log: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    log: Callable[[str], None] = print,
) -> int:
    """Runs the MLflow UI until Ctrl-C; prints each study's runs URL once it is up.

    Args:
        tracking_uri: The MLflow store to browse.
        artifact_root: Where its local artifacts live (None for a server's).
        server_log: The file the server's own log goes to.
        host: The interface to bind (loopback unless told otherwise).
        port: The port to listen on.
        log: Where the URLs are printed.

    Returns:
        0 when stopped with Ctrl-C (or SIGTERM), else the server's exit code.

    Raises:
        SweepError: The tracking server cannot be read, or the port is taken.
    """
    if is_server(tracking_uri):
        # A tracking server already serves its own UI.
        try:
            experiments = sweep_experiments(tracking_uri)
        except MlflowException as e:
            shown = servers.redact(tracking_uri)
            raise SweepError(
                f"cannot read the MLflow tracking server {shown} "
                f"({servers.one_line(e)[:200]}); check the URI, that the server is "
                "up, and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
            ) from None
        for name, experiment_id in experiments:
            log(f"study {name}: {runs_url(tracking_uri.rstrip('/'), experiment_id)}")
        return 0
    check_port(host, port)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server_log.parent.mkdir(parents=True, exist_ok=True)
    with open(server_log, "w") as output:
        server = subprocess.Popen(
            server_command(tracking_uri, artifact_root, host, port),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{host}:{port}"
    try:
        _wait_until_up(server, base, server_log)
        experiments = sweep_experiments(tracking_uri)
        log(f"MLflow UI at {base} (Ctrl-C stops it)")
        for name, experiment_id in experiments:
            log(f"study {name}: {runs_url(base, experiment_id)}")
        if not experiments:
            log("no study has logged to this store yet")
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_until_up(server: subprocess.Popen, base: str, server_log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            lines = server_log.read_text(errors="replace").strip().splitlines()
            raise SweepError(
                f"the MLflow server stopped at start (exit {server.returncode}): "
                + (lines[-1] if lines else "no message")
                + f"; its log is {server_log}"
            )
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SweepError(f"the MLflow server did not answer at {base} within "
                     f"{STARTUP_SECONDS} s")  # fmt: skip
