"""What a study holds, in words and tables: for the terminal and the report.

Everything here reads a study and writes nothing: the best trials, the table
printed at the end of a sweep, `sweep status`, the share of wall time spent on
MLflow, and the one-line form of a trial's configuration.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import confirm, keys, params, presence, servers


def best_accuracy(trial: FrozenTrial) -> float | None:
    """A trial's best validation top-100 accuracy (pruned ones included)."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return max(values) if values else None


def finished_count(study: optuna.Study) -> int:
    """Complete and pruned trials: what `n_trials` counts."""
    return len(study.get_trials(deepcopy=False, states=keys.FINISHED))


def best_complete(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The complete trial of highest value (the earliest on ties), if any.

    Only a complete trial kept its model, so this is what the study's best is
    for export and for the report.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def top_trials(study: optuna.Study, count: int = 10) -> list[FrozenTrial]:
    """The finished trials with the highest validation top-100 accuracy."""
    trials = [
        t
        for t in study.get_trials(states=keys.FINISHED)
        if best_accuracy(t) is not None
    ]
    return sorted(trials, key=lambda t: (-best_accuracy(t), t.number))[:count]


def trial_text(trial: FrozenTrial) -> str:
    """A trial's configuration on one line (empty before it has params)."""
    return params.text(trial.params)


def summary_table(study: optuna.Study, count: int = 10) -> str:
    """A text table of the top trials: number, state, params, best accuracy, epoch."""
    header = (
        f"{'trial':>5}  {'state':8}  {params.header()}  {'val top-100':>11}  "
        f"{'epoch':>5}"
    )
    lines = [header, "-" * len(header)]
    for t in top_trials(study, count):
        lines.append(
            f"{t.number:5d}  {t.state.name:8}  {params.row(t.params)}  "
            f"{best_accuracy(t):11.4f}  {t.user_attrs.get(keys.BEST_EPOCH_ATTR, ''):>5}"
        )
    counts = keys.count_states(
        study.get_trials(deepcopy=False), (*keys.FINISHED, TrialState.FAIL)
    )
    lines.append(", ".join(f"{n} {state.lower()}" for state, n in counts.items()))
    lines.append(tracking_share(study))
    finalists = confirm.results(study, confirm.companion_of(study))
    champion = confirm.champion_text(finalists)
    if champion:
        lines.append(champion)
    return "\n".join(lines)


def duration_text(seconds: float) -> str:
    """A duration as the study file and the command line write it: 2h, 30m, 90s."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def tracking_share(study: optuna.Study) -> str:
    """How much of the trials' wall time went to MLflow calls."""
    tracked = wall = 0.0
    for t in study.get_trials(deepcopy=False):
        if keys.TRACKING_SECONDS_ATTR in t.user_attrs and t.duration is not None:
            tracked += t.user_attrs[keys.TRACKING_SECONDS_ATTR]
            wall += t.duration.total_seconds()
    if not wall:
        return "MLflow logging: no finished trial"
    return (
        f"MLflow logging: {tracked:.2f} s of {wall:.1f} s of trials "
        f"({100 * tracked / wall:.1f}%)"
    )


def status_report(storage_url: str, name: str | None = None) -> str:
    """The studies in a storage: trials per state, best trial, live workers.

    Raises:
        SweepError: `name` is not a study there.
    """
    from sweep import stores

    storage = stores.open_existing_storage(storage_url, name)
    if storage is None:
        return f"no studies in {servers.redact(storage_url)}"
    # A confirmation stage is shown with the study it confirms.
    summaries = [
        s for s in storage.get_all_studies() if not confirm.is_companion(s.study_name)
    ]
    if name is not None:
        summaries = [s for s in summaries if s.study_name == name]
    if not summaries:
        return f"no studies in {servers.redact(storage_url)}"
    blocks = []
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        blocks.append(_status(study))
    return "\n".join(blocks)


def _status(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = keys.count_states(trials)
    target = study.user_attrs.get(keys.TARGET_ATTR, "?")
    lines = [
        f"{study.study_name}: {finished_count(study)} of {target} finished ("
        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        + ")"
    ]
    best = top_trials(study, 1)
    if best:
        t = best[0]
        epoch = t.user_attrs.get(keys.BEST_EPOCH_ATTR)
        lines.append(
            f"  best: trial {t.number} ({t.state.name.lower()}) val top-100 "
            f"{best_accuracy(t):.4f} at epoch {epoch}, {trial_text(t)}"
        )
    companion = confirm.companion_of(study)
    champion = confirm.champion_text(confirm.results(study, companion))
    if champion:
        lines.append(f"  {champion}")
    alive = presence.workers(confirm.stages(study))
    lines.append(f"  workers alive: {', '.join(alive) if alive else 'none'}")
    return "\n".join(lines)
