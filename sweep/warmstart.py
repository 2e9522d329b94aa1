"""Warm start: a new study begins with the finished trials of earlier ones.

A launch with `[study] warm_start = ["old", ...]` (or `--warm-start OLD`) adds
the complete and pruned trials of those studies (in the same storage) to the
new one before its first trial, with Optuna's `add_trials`: the sampler and the
pruner start from what they learned. Only a trial whose params the new
`[space]` can propose is imported, and only from a study that trained as the
new one does (the same `[training]` and `[data]`): otherwise its value
measures something else. Imported trials keep their source's value, curve
(intermediate values) and MLflow run, which they link to instead of copying;
they do not count toward `n_trials`.
"""

from __future__ import annotations

import dataclasses

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweep import config as config_module
from sweep import confirm, keys, servers
from sweep.errors import SweepError
from sweep.stores import study_names

# The user attrs an imported trial keeps from its source (the rest are about
# the source's worker and retries).
_KEPT = (keys.BEST_EPOCH_ATTR, keys.PRUNED_AT_ATTR, keys.RUN_ID_ATTR)


@dataclasses.dataclass(frozen=True)
class Imported:
    """What one source study gave.

    Attributes:
        source: The source study's name.
        trials: The trials to add, in the new study's distributions.
        outside: Finished trials skipped: a param outside the new space.
        other_training: Finished trials skipped: trained another way.
    """

    source: str
    trials: tuple[FrozenTrial, ...]
    outside: int
    other_training: int


def sources(
    storage: optuna.storages.BaseStorage, url: str, names: tuple[str, ...]
) -> list[optuna.Study]:
    """The studies to import from; all must exist.

    Raises:
        SweepError: One is not in the storage (nothing is created).
    """
    known = study_names(storage)
    for name in names:
        if name not in known or confirm.is_companion(name):
            raise missing(name, url, known)
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def missing(name: str, url: str, known: list[str]) -> SweepError:
    """The one line for a study to warm-start from that is not in `url`.

    Args:
        name: The study asked for.
        url: The storage it was looked for in.
        known: The studies that are there.

    Returns:
        The error to raise.
    """
    there = ", ".join(sorted(n for n in known if not confirm.is_companion(n)))
    return SweepError(
        f"warm start from study {name!r}: there is no such study in "
        f"{servers.redact(url)} (studies there: {there or 'none'}); expected a "
        "finished study of the same storage: launch it first, or take it out of "
        "[study] warm_start / --warm-start"
    )


def collect(
    source: optuna.Study,
    study_file: config_module.Study,
    distributions: dict[str, optuna.distributions.BaseDistribution],
) -> Imported:
    """The finished trials of `source` that the new study can use."""
    finished = source.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    if not _trains_alike(source, study_file):
        return Imported(source.study_name, (), 0, len(finished))
    trials, outside = [], 0
    for trial in finished:
        if set(trial.params) != set(distributions) or not all(
            _contains(distributions[name], value)
            for name, value in trial.params.items()
        ):
            outside += 1
            continue
        attrs = {k: trial.user_attrs[k] for k in _KEPT if k in trial.user_attrs}
        attrs[keys.IMPORTED_FROM_ATTR] = {
            "study": source.study_name,
            "trial": trial.number,
        }
        trials.append(
            create_trial(
                state=trial.state,
                value=trial.value if trial.state == TrialState.COMPLETE else None,
                params=trial.params,
                distributions=distributions,
                intermediate_values=trial.intermediate_values,
                user_attrs=attrs,
            )
        )
    return Imported(source.study_name, tuple(trials), outside, 0)


def _trains_alike(source: optuna.Study, study_file: config_module.Study) -> bool:
    """Whether a source study's trials trained as the new study's will."""
    text = source.user_attrs.get(keys.STUDY_FILE_ATTR)
    if text is None:  # not a sweep study: nothing says how it trained
        return False
    old = config_module.launched_file(source.study_name, text)
    return old.training == study_file.training and old.data == study_file.data


def _contains(distribution: optuna.distributions.BaseDistribution, value) -> bool:
    """Whether the new space can propose `value` (a choice, or inside a range)."""
    try:
        internal = distribution.to_internal_repr(value)
    except ValueError:
        return False
    return distribution._contains(internal)  # noqa: SLF001  (Optuna's own check)


def describe(imports: list[Imported]) -> str:
    """One line: what was imported from where, and what was skipped."""
    added = sum(len(i.trials) for i in imports)
    names = ", ".join(f"{i.source!r} ({len(i.trials)})" for i in imports)
    line = f"warm start: {added} finished trials imported from {names}"
    outside = sum(i.outside for i in imports)
    other = sum(i.other_training for i in imports)
    if outside or other:
        line += (
            f"; skipped {outside} outside the [space] and {other} trained with "
            "another [training] or [data]"
        )
    return line
