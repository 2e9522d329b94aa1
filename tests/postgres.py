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


def binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Server:
    """Starts a throwaway cluster (trust auth, loopback only) and stops it."""

    def __init__(self):
        self.bin = binaries()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
        self.data = self.dir / "data"
        # The server refuses to run as root; Debian's package makes `postgres`.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True)

    def start(self) -> str:
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "sweep"
        )
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
            "-U", "sweep", name,
        )  # fmt: skip
        return f"postgresql://sweep@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
             "fast", "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
