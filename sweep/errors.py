"""Errors a user can act on, and the split between a failed trial and a fatal one.

A `SweepError` is printed by the CLI as one line (the traceback only with
`--debug`) and exits with code 1. Its message says what was given, what was
expected and how to fix it.
"""


class SweepError(Exception):
    """A mistake the user can fix: bad input, a missing file, a wrong name."""


class ConfigError(SweepError):
    """A study file or command-line value that is not valid."""


class DataError(SweepError):
    """MovieLens data that is missing, malformed or cannot be fetched."""


class TrialFailed(Exception):
    """One trial could not finish (e.g. its loss diverged); the sweep goes on.

    Not a `SweepError`: it is recorded on the trial, not shown as a user mistake.
    """
