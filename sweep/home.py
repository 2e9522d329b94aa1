"""`$SWEEP_HOME`: where one machine keeps a sweep's state.

    optuna.db      the Optuna storage (default; `--storage` elsewhere)
    mlflow.db      the MLflow tracking store (default; `--tracking-uri` elsewhere)
    mlartifacts/   MLflow's artifacts, when the tracking store is local
    cache/         the preprocessed MovieLens features, keyed by source checksum
    downloads/     the RecBole wheel that carries MovieLens 100k
    checkpoints/   each running trial's last checkpoint, by study, and the
                   study's plotter lock (`sweep.plotter`)
    jax-cache/     XLA's compiled programs (JAX's persistent cache)
    logs/          `sweep ui`'s server log

Files that readers may find half-written are written with `atomic_write`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sweep.errors import SweepError

DEFAULT = ".sweep"


@dataclasses.dataclass(frozen=True)
class Home:
    """The folders and default stores under one sweep home.

    Attributes:
        root: The home folder.
    """

    root: Path

    @classmethod
    def at(cls, root: Path | Home) -> Home:
        """The home at `root` (a path or a `Home`), without checking it."""
        return root if isinstance(root, Home) else cls(Path(root))

    @classmethod
    def from_environment(cls) -> Home:
        """`$SWEEP_HOME`, default `./.sweep`, created if missing.

        Raises:
            SweepError: The path, or the nearest part of it that exists, is not
                a folder, or the folder cannot be created or written.
        """
        root = Path(os.environ.get("SWEEP_HOME", DEFAULT)).expanduser()
        existing = nearest_existing(root)
        if not existing.is_dir():
            what = "is" if existing == root else f"is under {existing}, which is"
            raise SweepError(
                f"SWEEP_HOME={root} {what} a file, not a folder; point SWEEP_HOME "
                f"at a folder (it is created if missing) or unset it to use "
                f"./{DEFAULT}"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SweepError(
                f"SWEEP_HOME={root} cannot be created ({e.strerror}); point "
                f"SWEEP_HOME at a folder you can write, or unset it to use ./{DEFAULT}"
            ) from None
        if not os.access(root, os.W_OK):
            raise SweepError(
                f"SWEEP_HOME={root} is not writable; point SWEEP_HOME at a folder "
                f"you can write, or unset it to use ./{DEFAULT}"
            )
        return cls(root)

    @property
    def optuna_url(self) -> str:
        """The default Optuna storage: `optuna.db`."""
        return f"sqlite:///{self.root.resolve() / 'optuna.db'}"

    @property
    def mlflow_uri(self) -> str:
        """The default MLflow tracking store: `mlflow.db`.

        Not the Optuna file: both tools keep their own alembic version table,
        so they cannot share one database.
        """
        return f"sqlite:///{self.root.resolve() / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        """MLflow's artifacts when the tracking store is local."""
        return self.root.resolve() / "mlartifacts"

    @property
    def cache(self) -> Path:
        """The preprocessed features (`sweep.data`)."""
        return self.root / "cache"

    @property
    def downloads(self) -> Path:
        """Downloaded data (the RecBole wheel)."""
        return self.root / "downloads"

    @property
    def checkpoints(self) -> Path:
        """The trials' checkpoints, one folder per study."""
        return self.root / "checkpoints"

    @property
    def jax_cache(self) -> Path:
        """JAX's persistent compilation cache."""
        return self.root / "jax-cache"

    @property
    def logs(self) -> Path:
        """Logs of the servers `sweep` starts."""
        return self.root / "logs"

    def use_compilation_cache(self) -> None:
        """Keeps XLA compilations in `jax-cache/` (JAX's persistent cache).

        Trials of the same shapes, in this process or a later one, then skip
        compiling, which is most of a short trial's first seconds. A folder the
        user chose with JAX's own `JAX_COMPILATION_CACHE_DIR` wins.
        """
        import jax

        if not jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", str(self.jax_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest ancestor that does.

    A folder to be created under a file cannot be; callers check this one to
    say so before trying.
    """
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes `path` so that a reader sees the whole file or the old one.

    `write` fills a temporary file beside `path`; it is flushed to disk and
    renamed over `path`, or removed if anything fails (a crash mid-write
    leaves the old file, never a torn one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
