"""A real PostgreSQL server on loopback for the tests (Debian's `postgresql`)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudyPoll:
    """Reads a study that a sweep process is making, through one connection pool.

    Opening a storage per look would leave PostgreSQL a connection per look
    (it refuses past 100); the storage is opened once the sweep has made its
    tables, and a look while the server is away sees nothing.
    """

    def __init__(self, url: str, study: str):
        self.url = url
        self.study = study
        self.storage = None

    def trials(self) -> list:
        """The study's trials so far ([] before it exists or while unreachable)."""
        import optuna

        try:
            if self.storage is None:
                self.storage = optuna.storages.RDBStorage(
                    self.url, skip_table_creation=True
                )
            study = optuna.load_study(study_name=self.study, storage=self.storage)
            return study.get_trials(deepcopy=False)
        except (KeyError, optuna.exceptions.StorageInternalError):
            return []
        except Exception as e:  # tables not made yet, or the server restarting
            if type(e).__module__.startswith(("sqlalchemy", "psycopg")):
                return []
            raise

    def close(self) -> None:
        if self.storage is not None:
            self.storage.engine.dispose()


def binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Server:
    """Starts a throwaway cluster (loopback only) and stops it.

    By default every connection is trusted and the superuser is `sweep`. With a
    `password` the cluster is set up as the postgres image sets up its own: the
    superuser `user` has that password, TCP connections must prove theirs with
    scram-sha-256 and only the server's own socket is trusted.
    """

    def __init__(self, user: str = "sweep", password: str | None = None):
        self.user = user
        self.password = password
        self.bin = binaries()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
        self.data = self.dir / "data"
        # The server refuses to run as root; Debian's package makes `postgres`.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *args: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password} if self.password else None
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, env=env)

    def start(self) -> str:
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        if self.password is None:
            auth = ["-A", "trust"]
        else:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.as_user:
                shutil.chown(pwfile, "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}"]  # fmt: skip
        self.run(str(self.bin / "initdb"), "-D", str(self.data), *auth, "-U", self.user)
        self.serve()
        return self.create_database("sweep")

    def serve(self) -> None:
        """Starts the server on the cluster (again, after `halt`)."""
        self.run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
            str(self.dir / "log"), "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip

    def halt(self) -> None:
        """Stops the server as an administrator's restart does (`-m fast`: open
        connections are terminated); `serve` starts it again."""
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                 "stop")  # fmt: skip

    def create_database(self, name: str) -> str:
        """Creates a database; returns its URL."""
        self.run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", self.user, name,
        )  # fmt: skip
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
             "fast", "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
