"""Parallel workers on one machine: N processes joining one study.

Each worker is a `sweep resume NAME` process of its own (JAX and Keras hold
process-wide state, so processes, not threads). Each is pinned to its share of
the cores, so N workers split the machine instead of oversubscribing it.
SIGINT and SIGTERM reach every worker, which fails and re-queues its trial in
flight and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# How long workers get to stop cleanly after a signal before they are killed.
STOP_SECONDS = 20
# A worker past the cores still has work while another trains (the stores,
# its validations), so a few per core keep the cores busy; each is a Python
# process holding the training stack and the data, so many more only fill
# the memory.
WORKERS_PER_CORE = 4


def max_workers() -> tuple[int, int]:
    """The most worker processes this machine takes, and its cores.

    Returns:
        (`WORKERS_PER_CORE` times the cores this process may use, those cores).
    """
    cores = len(os.sched_getaffinity(0))
    return WORKERS_PER_CORE * cores, cores


def core_shares(workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """Splits the cores this process may use among `workers` (round robin)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    per = len(cores) // workers
    return [cores[i * per : (i + 1) * per] for i in range(workers)]


def limit_to(cores: list[int]) -> None:
    """Pins this process to `cores` and sizes XLA's CPU threads to match."""
    os.sched_setaffinity(0, cores)
    if len(cores) == 1:
        # XLA's Eigen thread pool would still start one thread per host core.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false"


def run_workers(workers: int, resume_args: list[str], verb: str = "resume") -> int:
    """Starts `workers` resume processes and waits for all of them.

    Args:
        workers: How many.
        resume_args: Arguments after `sweep resume` (study name, stores, ...).
        verb: `resume`, or `confirm` for workers of the confirmation stage only.

    Returns:
        0 if every worker succeeded, 130 if interrupted, else the first failure.
    """
    procs = []
    for index, cores in enumerate(core_shares(workers)):
        env = {**os.environ, "SWEEP_CPUS": ",".join(map(str, cores))}
        command = [
            sys.executable, "-m", "sweep.cli", verb, *resume_args,
            "--worker-index", str(index),
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    interrupted = False
    try:
        while any(proc.poll() is None for proc in procs):
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                # A terminal's Ctrl-C reached the workers too; a SIGINT sent to
                # this process alone did not. Workers ignore a second signal.
                interrupted = True
                forward(signal.SIGINT, None)
                _stop(procs)
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = [proc.returncode for proc in procs]
    if interrupted or 130 in codes:
        return 130
    return next((code for code in codes if code), 0)


def _stop(procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STOP_SECONDS
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
