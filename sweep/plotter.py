"""The study report's plots, redrawn during a sweep by a low-priority process.

Drawing the plots costs CPU (more as the study grows), a sizable share of a
short trial. In the worker's process that time would be taken from training;
a training worker leaves part of its cores idle (its Python dispatch and XLA's
kernels take turns), so the plots are drawn by a child process at the lowest
CPU priority (nice 19), which mostly runs on that idle time.

The worker asks for a drawing (the plots and trials.csv) when a trial ends and
the last drawing is a minute old (`sweep.report`), by writing a line to the
child's stdin; the child imports the plotting libraries at its first drawing.
The child draws the study as it is when it starts a drawing; requests that
arrive meanwhile are served by the next drawing (the latest state), so it never
falls behind by more than one. The child exits when its stdin closes: when the
worker ends it, and also when the worker dies, since the pipe closes with it.
The worker draws the final plots itself, after the child has stopped.

Every worker starts a plotter, but among the workers that share a home (as a
study's workers on one machine do) only one of a study's plotters draws: the
one holding the study's lock file (`plotter.lock` in the study's checkpoint
folder, so that `sweep delete` takes it with the rest of the study; the kernel
releases the lock when its holder exits). The others try to take it over at
each request, so the drawing goes on when the worker whose plotter held it
finishes first. Workers with another home (on other machines) draw the same
files on their own; the last drawing wins, which is the study as it was then.

    python -m sweep.plotter    (started by `Plotter`; reads its settings, then
                                one line per request, from stdin)
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# How long the end of a sweep waits for a drawing in progress to finish.
STOP_SECONDS = 30
# The lock file's name in the study's checkpoint folder.
LOCK_NAME = "plotter.lock"


class Plotter:
    """The worker's side: starts the child and asks it for drawings.

    Args:
        storage_url: The Optuna storage of the study.
        study_name: The study.
        tracking_uri: The MLflow store of its parent run.
        parent_run_id: The run the plots go to (under `report/`).
        folder: The study's checkpoint folder on this machine, where the
            plotters of the study share their lock file (created if missing).
    """

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        tracking_uri: str,
        parent_run_id: str,
        folder: Path,
    ):
        settings = {
            "storage": storage_url,
            "study": study_name,
            "tracking_uri": tracking_uri,
            "run_id": parent_run_id,
            "lock": str(folder / LOCK_NAME),
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sweep.plotter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # Ctrl-C goes to the worker, which stops the child itself.
            start_new_session=True,
            # The settings go through the pipe: a database URL may hold a password.
        )
        self._process.stdin.write((json.dumps(settings) + "\n").encode())
        self._process.stdin.flush()
        # A child stuck in a drawing must never block the worker: if the pipe
        # is full, requests are already waiting there.
        os.set_blocking(self._process.stdin.fileno(), False)

    def request(self) -> bool:
        """Asks for a drawing of the study as it is now.

        Returns:
            False if the child is gone (the caller draws itself instead).
        """
        if self._process.poll() is not None:
            return False
        try:
            os.write(self._process.stdin.fileno(), b"draw\n")
        except BlockingIOError:
            pass  # the pipe is full of requests the child has yet to serve
        except (BrokenPipeError, ValueError):  # the child has exited
            return False
        return True

    def stop(self, wait: bool = True) -> None:
        """Ends the child.

        Args:
            wait: Let a drawing in progress finish (up to `STOP_SECONDS`); if
                not, or it takes longer, the child is terminated.
        """
        if self._process.poll() is None and wait:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=STOP_SECONDS)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait()
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass


def _read_line(fd: int) -> bytes:
    """One line from `fd`, read unbuffered (the requests follow it on the pipe)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def _requests(fd: int) -> Iterator[None]:
    """Yields once per batch of request lines; returns when `fd` closes."""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        # Serve what queued up meanwhile with one drawing.
        while select.select([fd], [], [], 0)[0]:
            more = os.read(fd, 65536)
            if not more:
                yield
                return
        yield


def _take(lock) -> bool:
    """Whether this process now holds `lock` (an open file), without waiting."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def main() -> None:
    """The child: draws the study's plots into its parent run on request."""
    os.nice(19)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.fileno()
    settings = json.loads(_read_line(stdin))
    try:
        path = Path(settings["lock"])
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a")  # noqa: SIM115
    except OSError as e:  # the worker then draws the plots itself
        print(f"sweep: the plotter has no lock file ({e})", file=sys.stderr)
        sys.exit(1)
    holder = False
    upload = None
    for _ in _requests(stdin):
        holder = holder or _take(lock)
        if not holder:
            continue  # another plotter on this machine draws this study
        if upload is None:
            # Only the drawing plotter pays for Optuna, MLflow and the plots.
            upload = _open(settings)
        try:
            upload()
        except Exception as e:  # a report must never stop the sweep
            print(f"sweep: the study plots were not redrawn ({e})", file=sys.stderr)


def _open(settings: dict) -> Callable[[], None]:
    """What draws the study as it is now; exits if the study does not open."""
    import optuna
    from mlflow.tracking import MlflowClient

    from sweep import confirm
    from sweep.plots import upload_files

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(
            study_name=settings["study"], storage=settings["storage"]
        )
        client = MlflowClient(settings["tracking_uri"])
    except Exception as e:  # the worker then draws the plots itself
        print(f"sweep: the plotter could not open the study ({e})", file=sys.stderr)
        sys.exit(1)

    def upload() -> None:
        trials = study.get_trials(deepcopy=False)
        finalists = confirm.study_results(study)
        upload_files(client, settings["run_id"], study, trials, True, finalists)

    return upload


if __name__ == "__main__":
    main()
