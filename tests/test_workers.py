"""Worker processes on one machine: the cores split between them."""

import os
import subprocess
import sys

import pytest

from sweep.workers import core_shares


@pytest.mark.parametrize(
    "workers, cores, shares",
    [
        (1, [0, 1], [[0, 1]]),
        (2, [0, 1], [[0], [1]]),
        (2, [0, 1, 2, 3, 4], [[0, 1], [2, 3]]),
        (4, [0, 1], [[0], [1], [0], [1]]),  # more workers than cores: round robin
        (3, [5, 2, 7], [[2], [5], [7]]),
    ],
)
def test_cores_are_split_without_overlap_while_there_are_enough(workers, cores, shares):
    assert core_shares(workers, cores) == shares


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux")
def test_a_one_core_worker_is_pinned_and_xla_runs_one_thread():
    core = sorted(os.sched_getaffinity(0))[0]
    code = (
        "import os; from sweep.workers import limit_to; "
        f"limit_to([{core}]); print(sorted(os.sched_getaffinity(0)), "
        "os.environ['XLA_FLAGS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout  # fmt: skip
    assert out.split("]")[0] == f"[{core}"
    assert "--xla_cpu_multi_thread_eigen=false" in out
