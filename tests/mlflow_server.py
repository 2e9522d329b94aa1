"""A real `mlflow server` on loopback for the tests, that can be restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from tests.postgres import free_port

MLFLOW = os.path.join(os.path.dirname(sys.executable), "mlflow")


class MlflowServer:
    """`mlflow server` with its runs in `store`, serving artifacts from `artifacts`.

    Args:
        store: The backend store URI (e.g. a PostgreSQL database).
        artifacts: The folder it serves artifacts from.
    """

    def __init__(self, store: str, artifacts):
        self.store = store
        self.artifacts = str(artifacts)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> str:
        """Starts it and waits until it answers; returns its URL."""
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", self.store,
             "--serve-artifacts", "--artifacts-destination", self.artifacts],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        """Stops it (SIGTERM), as a restart of the service does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
