"""The confirmation stage: the search's finalists retrained over fresh seeds.

A trial's value is the best validation of one seed (weights and data order),
chosen among many trials on the same validation ratings: the search's best is
often a lucky draw of an unstable configuration. After the search, the K best
distinct configurations are each trained again from scratch with S seeds that
no search trial used, and the champion is the finalist with the highest mean
over its seeds. A finalist with a seed that collapses (its best below
`COLLAPSE_SHARE` of the finalist's own search value, or a loss that diverged)
is marked unstable and is never the champion: the collapsed run stops at the
validation that shows it, and the finalist's remaining seeds are not run.
Only when every finalist has collapsed does the next configuration in search
order join them (at most K times), so that the stage still names a champion
when the search found a stable configuration; a finalist that holds needs no
company, which keeps the stage's cost near its K x S runs.

The stage's runs are trials of a companion Optuna study in the same storage
(`companion_name`), queued with their fixed configuration and seed, so the
study machinery applies unchanged: heartbeats and retries, checkpoints, any
number of workers, and `sweep resume` to finish it. The plan (how many
finalists, how many seeds) is kept on the search study.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import keys, params
from sweep.config import ConfirmSettings as Plan
from sweep.errors import SweepError

# A seed whose best is below this share of the finalist's search value has
# collapsed (the default study's lucky champion retrained at a tenth of its
# search value; stable finalists stay within a few hundredths).
COLLAPSE_SHARE = 0.5
# Mixed into the study seed so that confirmation seeds are a stream apart from
# the search's per-trial seeds (`space.trial_seed`).
_SEED_STREAM = 0x636F6E66  # "conf"
_SUFFIX = ":confirm"


def companion_name(name: str) -> str:
    """The Optuna study holding a study's confirmation runs.

    `:` cannot appear in a study file's name, so no user study can take it.
    """
    return name + _SUFFIX


def is_companion(name: str) -> bool:
    """Whether a stored study is some study's confirmation stage."""
    return name.endswith(_SUFFIX)


def confirmed_name(name: str) -> str:
    """The study a confirmation study confirms (`companion_name` undone)."""
    return name.removesuffix(_SUFFIX)


def stored_plan(study: optuna.Study) -> Plan | None:
    """The plan kept on a search study, if its stage was asked for."""
    attr = study.user_attrs.get(keys.CONFIRM_PLAN_ATTR)
    return Plan(**attr) if attr else None


def confirmation_seeds(study_seed: int, count: int, taken: set[int]) -> list[int]:
    """`count` seeds for the finalists, derived from the study seed.

    Every finalist trains with the same seeds (a paired comparison). None is a
    seed a search trial used (`taken`).
    """
    return fresh_seeds(study_seed, count, taken, _SEED_STREAM)


def fresh_seeds(study_seed: int, count: int, taken: set[int], stream: int) -> list[int]:
    """The first `count` seeds of a stream derived from the study seed, not `taken`.

    A smaller `count` gives a prefix of a larger one's seeds.
    """
    seeds, index = [], 0
    while len(seeds) < count:
        state = np.random.SeedSequence([study_seed, stream, index])
        seed = int(state.generate_state(1)[0])
        index += 1
        if seed not in taken:
            seeds.append(seed)
    return seeds


def finalists(trials: list[FrozenTrial], count: int) -> list[FrozenTrial]:
    """The `count` best distinct configurations among the complete trials.

    The candidates of a plan in search order; `results` says which of them the
    stage retrains (those a collapse did not make unnecessary).

    Each configuration is represented by its best trial (the earliest on ties).
    """
    best: dict[tuple, FrozenTrial] = {}
    for trial in sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (-t.value, t.number),
    ):
        best.setdefault(_config_key(trial.params), trial)
    return list(best.values())[:count]


def _config_key(values: dict) -> tuple:
    return tuple(sorted(values.items()))


def open_companion(
    study: optuna.Study, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """The study's confirmation study, created if it does not exist yet."""
    name = companion_name(study.study_name)
    try:
        companion = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            # Every trial is queued with its configuration: nothing is sampled.
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )
        companion.set_user_attr(keys.CONFIRM_OF_ATTR, study.study_name)
        for attr in (keys.EXPERIMENT_ATTR, keys.PARENT_RUN_ATTR):
            companion.set_user_attr(attr, study.user_attrs[attr])
        return companion
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )


def queue(
    study: optuna.Study,
    companion: optuna.Study,
    plan: Plan,
    seed: int,
    runs: list[FrozenTrial] | None = None,
) -> int:
    """Queues every (finalist, seed) run of the plan not queued or run yet.

    Called again as runs finish: a finalist that collapsed gets no more runs,
    and once every finalist has, the next configuration gets its seeds. Safe
    to call from several workers at once: a run queued twice is dropped when
    it starts (`duplicate_of`), and so is one of a finalist that has collapsed
    since it was queued (`collapsed`) or one the plan no longer needs
    (`outside_plan`).

    Args:
        study: The search study.
        companion: Its confirmation study.
        plan: How many finalists, how many seeds.
        seed: The study seed.
        runs: The companion's trials, if just read (else they are read here).

    Returns:
        The companion study's target: the finished runs it will hold once the
        plan's runs have run. Runs outside the plan (of a configuration the
        finalists no longer include, a seed beyond the plan's, a collapsed
        finalist's that is still running) count as well, so that a run the
        plan still needs is never taken for surplus.

    Raises:
        SweepError: The search has no complete trial to confirm.
    """
    trials = study.get_trials(deepcopy=False)
    if runs is None:
        runs = companion.get_trials(deepcopy=False)
    chosen, seeds, needed = _needs(trials, runs, plan, seed)
    check_confirmable(study.study_name, [f.trial for f in chosen])
    # A failed run is queued again: an interrupted one was retried already
    # (its retry is here) unless its retries were used up.
    have = {_run_key(t) for t in runs if t.state != TrialState.FAIL}
    for finalist in chosen:
        if finalist.unstable:
            continue
        for run_seed in seeds:
            if (_config_key(finalist.trial.params), run_seed) in have:
                continue
            companion.enqueue_trial(
                finalist.trial.params,
                user_attrs={
                    keys.FINALIST_OF_ATTR: finalist.trial.number,
                    keys.SEED_ATTR: run_seed,
                    keys.SEARCH_VALUE_ATTR: finalist.trial.value,
                    keys.SEARCH_CURVE_ATTR: {
                        str(epoch): value
                        for epoch, value in finalist.trial.intermediate_values.items()
                    },
                },
                skip_if_exists=False,
            )
    finished = sum(t.state in keys.FINISHED for t in runs)
    missing = sum(max(f.needed - len(f.runs), 0) for f in chosen)
    # A running run the plan does not need (its finalist collapsed meanwhile)
    # counts when it ends; until then the target leaves it room (`Objective`
    # counts it as ahead).
    unneeded = sum(
        1 for t in runs if t.state == TrialState.RUNNING and _run_key(t) not in needed
    )
    return finished + missing + unneeded


def outside_plan(
    study: optuna.Study,
    plan: Plan,
    seed: int,
    run: FrozenTrial,
    runs: list[FrozenTrial],
) -> bool:
    """Whether a queued run is one the plan no longer needs.

    Its configuration is no finalist any more (a better search trial displaced
    it, or `sweep confirm --finalists` asked for fewer), or its seed is beyond
    the plan's (`--seeds` asked for fewer). Such a run was queued before the
    plan changed; it is dropped when it starts rather than trained.

    Args:
        study: The search study.
        plan: The plan as stored now.
        seed: The study seed.
        run: The run about to start.
        runs: The confirmation study's trials.

    Returns:
        True if `run` should be dropped untrained.
    """
    _, _, needed = _needs(study.get_trials(deepcopy=False), runs, plan, seed)
    return _run_key(run) not in needed


def _needs(
    trials: list[FrozenTrial], runs: list[FrozenTrial], plan: Plan, seed: int
) -> tuple[list[Finalist], list[int], set[tuple]]:
    """The plan's finalists, its seeds, and the (configuration, seed) runs it needs.

    The runs of a finalist that collapsed are not needed.
    """
    from sweep import space  # the training stack: not for `sweep status`

    chosen = _plan(trials, runs, plan)
    taken = {space.trial_seed(seed, t.number) for t in trials}
    seeds = confirmation_seeds(seed, plan.seeds, taken)
    needed = {
        (_config_key(f.trial.params), run_seed)
        for f in chosen
        if not f.unstable
        for run_seed in seeds
    }
    return chosen, seeds, needed


def _run_key(run: FrozenTrial) -> tuple:
    """A run's (configuration, seed): what no two runs of a plan share."""
    return _config_key(params.of_trial(run)), run.user_attrs.get(keys.SEED_ATTR)


def check_confirmable(name: str, chosen: list[FrozenTrial]) -> None:
    """Raises the one "nothing to confirm" error if no finalist was found.

    Raises:
        SweepError: The search has no complete trial.
    """
    if not chosen:
        raise SweepError(
            f"study {name!r} has no complete trial to confirm; its search "
            f"must finish one first (`sweep resume {name}`)"
        )


def companion_of(study: optuna.Study) -> optuna.Study | None:
    """A study's confirmation study, if the stage has started."""
    storage = study._storage  # noqa: SLF001  (the same storage, already open)
    name = companion_name(study.study_name)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def stages(study: optuna.Study) -> list[optuna.Study]:
    """The study and, once its confirmation stage has started, that stage's study."""
    companion = companion_of(study)
    return [study] if companion is None else [study, companion]


def duplicate_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> int | None:
    """Another run of the same finalist and seed: finished, or running and earlier.

    A finished one counts whatever its number: a copy queued before it (two
    workers queuing at once, or a retry) must not train the same seed again.
    """
    seed = trial.user_attrs.get(keys.SEED_ATTR)
    for other in trials:
        if (
            other.number != trial.number
            and other.user_attrs.get(keys.SEED_ATTR) == seed
            and params.of_trial(other) == params.of_trial(trial)
            and keys.ahead_of(other, trial.number)
        ):
            return other.number
    return None


def collapsed(trial: FrozenTrial, trials: list[FrozenTrial]) -> int | None:
    """A complete run in which the same finalist collapsed, making this one moot."""
    value = trial.user_attrs.get(keys.SEARCH_VALUE_ATTR)
    if value is None:  # queued before runs carried their finalist's value
        return None
    for other in trials:
        if (
            other.state == TrialState.COMPLETE
            and params.of_trial(other) == params.of_trial(trial)
            and _collapsed(other, value)
        ):
            return other.number
    return None


def _collapsed(run: FrozenTrial, search_value: float) -> bool:
    """Whether a complete run collapsed or diverged, for a finalist of that value."""
    return (
        run.value < COLLAPSE_SHARE * search_value
        or bool(run.user_attrs.get(keys.DIVERGED_ATTR))
        or keys.COLLAPSED_AT_ATTR in run.user_attrs
    )


def collapsed_by(best: float, epoch: int, search_curve: dict[str, float]) -> bool:
    """Whether a confirmation run has collapsed by this validation.

    From the finalist's second validation on, its best so far is below
    `COLLAPSE_SHARE` of its finalist's own validation at the same epoch (so
    also below that share of the finalist's search value). Never at the
    first: that early the curves are steep and one seed's start is not
    another's (a sound seed of the default study was at 0.52 of its
    finalist's first validation, and 0.97 of its second). Measured, not
    enforced: the collapsed seeds of the default study stayed near or below a
    random ranking for the rest of their epochs, at a quarter of their
    finalist's curve or less (benchmarks/README.md, selection).

    Args:
        best: The run's best validation top-100 accuracy so far.
        epoch: The epoch of its latest validation.
        search_curve: The finalist's validations (`keys.SEARCH_CURVE_ATTR`).
    """
    reached = search_curve.get(str(epoch))
    first = min((int(e) for e in search_curve), default=None)
    return reached is not None and epoch != first and best < COLLAPSE_SHARE * reached


@dataclasses.dataclass(frozen=True)
class Finalist:
    """One finalist's search value and its confirmation runs.

    Attributes:
        trial: The search trial whose configuration it is.
        runs: Its complete confirmation trials (one per seed run so far).
        seeds: The seeds the plan gives it.
    """

    trial: FrozenTrial
    runs: tuple[FrozenTrial, ...]
    seeds: int

    @property
    def values(self) -> list[float]:
        """Each seed's best validation top-100 accuracy."""
        return [r.value for r in self.runs]

    @property
    def mean(self) -> float | None:
        """The mean over its seeds (None before any has run)."""
        return statistics.fmean(self.values) if self.runs else None

    @property
    def std(self) -> float:
        """The sample standard deviation over its seeds (0 for one seed)."""
        return statistics.stdev(self.values) if len(self.runs) > 1 else 0.0

    @property
    def stderr(self) -> float:
        """The standard error of its mean (unknown, so infinite, below two seeds)."""
        if len(self.runs) < 2:
            return math.inf
        return self.std / math.sqrt(len(self.runs))

    @property
    def unstable(self) -> bool:
        """Whether a seed collapsed or diverged."""
        return any(_collapsed(r, self.trial.value) for r in self.runs)

    @property
    def needed(self) -> int:
        """Its runs the plan needs: every seed, or those run until it collapsed."""
        return len(self.runs) if self.unstable else self.seeds

    @property
    def done(self) -> bool:
        """Whether it needs no more runs (every seed ran, or one collapsed)."""
        return len(self.runs) >= self.needed

    @property
    def best_run(self) -> FrozenTrial | None:
        """Its seed run with the best score (what an export serves)."""
        return max(self.runs, key=lambda r: (r.value, -r.number), default=None)

    @property
    def test_values(self) -> list[float]:
        """Each seed's test top-100 accuracy (empty without held-out ratings)."""
        values = [r.user_attrs.get(keys.TEST_ACCURACY_ATTR) for r in self.runs]
        return [v for v in values if v is not None]

    @property
    def test_mean(self) -> float | None:
        """The mean test top-100 accuracy over its seeds, if measured."""
        return statistics.fmean(self.test_values) if self.test_values else None

    @property
    def mean_best_epoch(self) -> float | None:
        """The mean over its seeds of the epoch of the best validation."""
        epochs = [r.user_attrs.get(keys.BEST_EPOCH_ATTR) for r in self.runs]
        epochs = [e for e in epochs if e is not None]
        return statistics.fmean(epochs) if epochs else None


def results(study: optuna.Study, companion: optuna.Study | None) -> list[Finalist]:
    """The plan's finalists with their runs, in search order (best first)."""
    plan = stored_plan(study)
    if plan is None:
        return []
    runs = [] if companion is None else companion.get_trials(deepcopy=False)
    return _plan(study.get_trials(deepcopy=False), runs, plan)


def study_results(study: optuna.Study) -> list[Finalist]:
    """`results` with the study's confirmation study looked up in its storage."""
    return results(study, companion_of(study))


def _plan(
    trials: list[FrozenTrial], runs: list[FrozenTrial], plan: Plan
) -> list[Finalist]:
    """The K best configurations, and more only while every one has collapsed.

    When all K finalists have collapsed, the next configuration in search order
    joins them, up to K more (a search whose best configurations all collapse
    ends the stage without a champion rather than run on).
    """
    out = []
    for trial in finalists(trials, 2 * plan.finalists):
        own = {}
        for run in runs:
            if (
                run.state == TrialState.COMPLETE
                and params.of_trial(run) == trial.params
            ):
                own.setdefault(run.user_attrs.get(keys.SEED_ATTR), run)
        out.append(Finalist(trial, tuple(own.values()), plan.seeds))
        if len(out) >= plan.finalists and not all(f.unstable for f in out):
            break
    return out


def champion(finalists: list[Finalist]) -> Finalist | None:
    """The stable finalist of highest mean, once every finalist's seeds have run."""
    if not finalists or not all(f.done for f in finalists):
        return None
    stable = [f for f in finalists if not f.unstable]
    return max(stable, key=lambda f: (f.mean, -f.trial.number), default=None)


def close_call(finalists: list[Finalist]) -> bool:
    """Whether the top two stable means are within one standard error."""
    stable = sorted(
        (f for f in finalists if not f.unstable and f.runs), key=lambda f: -f.mean
    )
    if len(stable) < 2:
        return False
    first, second = stable[:2]
    return first.mean - second.mean <= max(first.stderr, second.stderr)


def rows(finalists: list[Finalist]) -> list[dict]:
    """The finalists table as records (the parent run's `confirm.csv`), best first."""
    best = champion(finalists)
    out = []
    for f in _ranked(finalists):
        values = f.values
        out.append(
            {
                "trial": f.trial.number,
                **{name: f.trial.params.get(name) for name in params.NAMES},
                "search_value": f.trial.value,
                "mean": f.mean,
                "std": f.std if values else None,
                "min": min(values, default=None),
                "max": max(values, default=None),
                "seeds_run": len(values),
                "seeds": f.seeds,
                "mean_best_epoch": f.mean_best_epoch,
                "test_mean": f.test_mean,
                "unstable": f.unstable,
                "champion": best is f,
            }
        )
    return out


def _ranked(finalists: list[Finalist]) -> list[Finalist]:
    """Finalists by mean, best first (those without a run yet last)."""
    return sorted(finalists, key=lambda f: -(f.mean if f.runs else -1))


def table(finalists: list[Finalist]) -> str:
    """The finalists as a text table: configuration, search value, seeds' spread."""
    header = (
        f"{'trial':>5}  {params.header()}  {'search':>7}  {'mean':>7}  {'std':>7}  "
        f"{'min':>7}  {'max':>7}  {'seeds':>5}"
    )
    lines = [header, "-" * len(header)]
    for f in _ranked(finalists):
        values = f.values
        spread = (
            f"{f.mean:7.4f}  {f.std:7.4f}  {min(values):7.4f}  {max(values):7.4f}"
            if values
            else f"{'-':>7}  {'-':>7}  {'-':>7}  {'-':>7}"
        )
        note = "  unstable" if f.unstable else ""
        lines.append(
            f"{f.trial.number:>5}  {params.row(f.trial.params)}  "
            f"{f.trial.value:7.4f}  {spread}  {len(values):>2}/{f.seeds:<2}{note}"
        )
    return "\n".join(lines)


def confirmed_text(
    number: int, trial_params: dict, mean: float, std: float, seeds: int
) -> str:
    """A confirmed configuration as the verbs print it: trial, params, mean +- std."""
    return (
        f"trial {number} ({params.text(trial_params)}), val top-100 "
        f"{spread_text(mean, std, seeds)}"
    )


def spread_text(mean: float, std: float, seeds: int, bold: str = "") -> str:
    """A mean over seeds with its spread; one seed has none to show.

    Args:
        mean: The mean over the seeds.
        std: Their standard deviation.
        seeds: How many.
        bold: Markdown emphasis around the figures (the run description's).
    """
    if seeds == 1:
        return f"{bold}{mean:.4f}{bold} on 1 seed (no spread)"
    return f"{bold}{mean:.4f} +- {std:.4f}{bold} over {seeds} seeds"


def champion_text(finalists: list[Finalist]) -> str | None:
    """One line naming the champion with its mean and spread, if there is one."""
    if not finalists:
        return None
    best = champion(finalists)
    if best is None:
        if all(f.done for f in finalists):
            return "confirmed champion: none (every finalist collapsed on a seed)"
        runs = sum(len(f.runs) for f in finalists)
        total = sum(f.needed for f in finalists)
        if not runs:
            return f"confirmation: {total} runs after the search, none finished"
        return f"confirmation: {runs} of {total} runs finished"
    line = (
        "confirmed champion: "
        + confirmed_text(
            best.trial.number, best.trial.params, best.mean, best.std, len(best.runs)
        )
        + f" (search {best.trial.value:.4f})"
    )
    if best.test_mean is not None:
        line += f"; test top-100 {best.test_mean:.4f}"
    if close_call(finalists):
        line += "; the runner-up is within one standard error"
    return line
