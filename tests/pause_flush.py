"""`sweep` with a pause before the N-th MLflow batch: a known point to kill it at.

    python -m tests.pause_flush MARKER N launch STUDY_FILE ...

Runs the `sweep` command line in this process, with `TrialRun.flush` made to
touch MARKER and sleep at its N-th call (before that batch reaches MLflow),
so a crash test can kill the worker exactly there.
"""

import sys
import time
from pathlib import Path

from sweep import cli, tracking


def main() -> int:
    marker, count, *argv = sys.argv[1:]
    flush = tracking.TrialRun.flush
    calls = 0

    def paused_flush(self, wait=True):
        nonlocal calls
        if self._metrics or self._tags or self.params:
            calls += 1
            if calls == int(count):
                Path(marker).touch()
                time.sleep(120)
        return flush(self, wait)

    tracking.TrialRun.flush = paused_flush
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
