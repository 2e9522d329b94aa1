"""`$SWEEP_HOME`'s layout, and the one careful way of writing its files."""

from pathlib import Path

import pytest

from sweep.errors import SweepError
from sweep.home import Home, atomic_write


def test_the_layout_and_default_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_HOME", str(tmp_path / "h"))
    home = Home.from_environment()
    assert home.root.is_dir()
    assert home.optuna_url == f"sqlite:///{(tmp_path / 'h' / 'optuna.db').resolve()}"
    assert home.mlflow_uri.endswith("/h/mlflow.db")
    assert home.optuna_url != home.mlflow_uri  # each tool its own database
    names = [home.cache, home.downloads, home.checkpoints, home.jax_cache, home.logs]
    assert [p.name for p in names] == [
        "cache", "downloads", "checkpoints", "jax-cache", "logs",
    ]  # fmt: skip
    assert Home.at(home) is home and Home.at(tmp_path).root == tmp_path


def test_a_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("SWEEP_HOME", str(tmp_path / "f" / "h"))
    with pytest.raises(SweepError, match="which is a file, not a folder"):
        Home.from_environment()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old"

    def torn(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_bytes() == b"old"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = Path(tmp_path / "f.bin")
    atomic_write(path, lambda f: f.write(b"a" * 10))
    atomic_write(path, lambda f: f.write(b"b"))
    assert path.read_bytes() == b"b"
