"""Variants of the default study's text for the benchmarks' runs."""

from __future__ import annotations

import re


def with_pruner(text: str, pruner: str) -> str:
    """The study text with another `[study] pruner`.

    Keys that belong to one pruner only (`pruner_percentile`) are dropped, as
    a study file may not name them beside another pruner.
    """
    text = re.sub(r"^pruner_percentile = .*\n", "", text, flags=re.MULTILINE)
    return re.sub(
        r'^pruner = ".*"$', f'pruner = "{pruner}"', text, count=1, flags=re.MULTILINE
    )


def with_study_key(text: str, line: str) -> str:
    """The study text with one more line at the top of its `[study]` table."""
    return text.replace("[study]\n", f"[study]\n{line}\n", 1)
