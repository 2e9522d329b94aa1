"""A study's trial loop: launch or resume it, then run trials to its target.

A study's trials are Optuna trials in an RDB storage (SQLite under
`$SWEEP_HOME` by default, PostgreSQL when shared); each runs `Objective`
(`sweep.objective`) and logs to a nested MLflow run under the study's parent
run. Any number of workers (processes here, or on other machines) run one
study's loop at once; they meet only in the stores.

After the search, the same loop runs the confirmation stage's queued trials
(what they are and how the champion is chosen: `sweep.confirm`); that second
use of the loop is why this module runs past 450 lines.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import config as config_module
from sweep import confirm, keys, presence, retries, servers, space, summary, warmstart
from sweep.data import Features
from sweep.errors import SweepError, TrialFailed
from sweep.objective import Objective
from sweep.plotter import Plotter
from sweep.report import StudyReport
from sweep.retries import DEFAULT_MAX_RETRIES
from sweep.stores import (
    Stores,
    check_exists,
    open_existing_storage,
    open_storage,
    open_tracker,
    study_names,
)
from sweep.tracking import Tracker

# A space where every trial fails (e.g. every rate diverges) would otherwise
# loop forever; this many failures in a row stop the sweep.
MAX_CONSECUTIVE_FAILURES = 10


@dataclasses.dataclass
class Session:
    """One process's handle on a study: the Optuna study and its MLflow side."""

    study: optuna.Study
    study_file: config_module.Study
    tracker: Tracker
    target: int
    storage_url: str
    # What a warm start imported (`warmstart.describe`), at launch.
    warm_start: str | None = None

    @property
    def imported(self) -> int:
        """Trials a warm start added: in the target, not in `n_trials`."""
        return self.study.user_attrs.get(keys.IMPORTED_ATTR, 0)


def launch(
    study_file: config_module.Study,
    stores: Stores,
    n_trials: int | None = None,
    join: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Session:
    """Creates the study and its MLflow experiment and parent run.

    Stores the study file, the target and the MLflow ids in the study, adds
    the finished trials of the studies it warm-starts from, and queues the
    baselines.

    Args:
        study_file: The parsed study file.
        stores: Where the Optuna study and the MLflow runs go.
        n_trials: Overrides the study file's `n_trials`.
        join: If the study exists (with the same file), open it instead.
        max_retries: How many times a trial whose worker died is retried.

    Raises:
        SweepError: The study exists already (and not `join`, or with another
            file), a study to warm-start from does not, or a store cannot be used.
    """
    settings = study_file.study
    # Optuna announces each new study at INFO (the CLI says what it launches),
    # and warns of a query it retries another way when the database is away
    # (`Storage` says so once).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = open_tracker(stores)
    storage = open_storage(stores.storage, tracker, max_retries)
    if settings.name in study_names(storage):
        if join:
            return _open(settings.name, tracker, storage, stores, n_trials,
                         study_file, max_retries, join=True)  # fmt: skip
        raise _exists(settings.name, stores.storage)
    # Before anything is created: every study to start from must exist.
    sources = warmstart.sources(storage, stores.storage, settings.warm_start)
    imports = [
        warmstart.collect(source, study_file, space.distributions(study_file))
        for source in sources
    ]
    imported = [trial for i in imports for trial in i.trials]
    experiment_id = tracker.experiment(settings.name, list(study_file.space))
    parent_run_id = tracker.start_study_run(
        experiment_id, settings.name, {keys.STUDY_FILE_TAG: study_file.path.name}
    )
    try:
        study = optuna.create_study(
            study_name=settings.name,
            storage=storage,
            # Seeded past the imported trials, as a resumed study is past its
            # own: a source launched with the same seed and sampler would
            # otherwise be proposed again, point for point.
            sampler=space.make_sampler(settings, len(imported)),
            pruner=space.make_pruner(settings, study_file.training),
            direction="maximize",
        )
    except optuna.exceptions.DuplicatedStudyError:
        # Another worker created it between our check and now.
        tracker.client.delete_run(parent_run_id)
        if join:
            return _open(settings.name, tracker, storage, stores, n_trials,
                         study_file, max_retries, join=True)  # fmt: skip
        raise SweepError(
            f"study {settings.name!r} was just created elsewhere"
        ) from None
    # Before the baselines: the imported trials are numbered first.
    study.add_trials(imported)
    note = None
    if imports:
        note = warmstart.describe(imports)
        study.set_user_attr(keys.IMPORTED_ATTR, len(imported))
        tracker.client.set_tag(parent_run_id, keys.WARM_START_TAG, note)
    target = (n_trials or settings.n_trials) + len(imported)
    _record(study, study_file, target, experiment_id, parent_run_id,
            ran=[t.params for t in imported])  # fmt: skip
    return Session(study, study_file, tracker, target, stores.storage, note)


def check_launchable(
    study_file: config_module.Study, stores: Stores, join: bool
) -> None:
    """Refuses, before the data is built, a launch that `launch` would refuse.

    Reads the storage only: a launch refused here creates nothing (no store
    file, no MLflow experiment).

    Raises:
        SweepError: The study exists (and not `join`, or with another file),
            or a study to warm-start from does not.
    """
    settings = study_file.study
    storage = open_existing_storage(stores.storage)
    if storage is None:
        if settings.warm_start:
            raise warmstart.missing(settings.warm_start[0], stores.storage, [])
        return
    if settings.name in study_names(storage):
        if not join:
            raise _exists(settings.name, stores.storage)
        attrs = optuna.load_study(study_name=settings.name, storage=storage).user_attrs
        # A study another launch is still setting up is checked by `launch`.
        if keys.STUDY_FILE_ATTR in attrs:
            _launched_file(settings.name, attrs, study_file)
    warmstart.sources(storage, stores.storage, settings.warm_start)


def _exists(name: str, url: str) -> SweepError:
    return SweepError(
        f"study {name!r} already exists in {servers.redact(url)}; continue it "
        f"with `sweep resume {name}`, or give the study file another [study] name"
    )


def _record(
    study: optuna.Study,
    study_file: config_module.Study,
    target: int,
    experiment_id: str,
    parent_run_id: str,
    ran: Sequence[dict] = (),
) -> None:
    """Keeps a new study's file, target and MLflow ids; queues its baselines.

    A baseline among `ran` (the params of trials a warm start imported) is
    not queued: its result is already in the study.
    """
    study.set_user_attr(keys.STUDY_FILE_ATTR, study_file.text)
    study.set_user_attr(keys.EXPERIMENT_ATTR, experiment_id)
    study.set_user_attr(keys.PARENT_RUN_ATTR, parent_run_id)
    if study_file.confirm is not None:
        study.set_user_attr(keys.CONFIRM_PLAN_ATTR, study_file.confirm.as_attr())
    for baseline in study_file.baselines:
        if baseline not in ran:
            study.enqueue_trial(baseline, user_attrs={keys.BASELINE_ATTR: True})
    # Last: a worker joining the launch waits for it (`_wait_until_set_up`).
    study.set_user_attr(keys.TARGET_ATTR, target)


def resume(
    name: str,
    stores: Stores,
    n_trials: int | None = None,
    study_file: config_module.Study | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    worker: int = 0,
) -> Session:
    """Opens an existing study to run more of its trials.

    Trials left RUNNING by a dead process on this host are failed and re-queued
    at once; those of other hosts when their heartbeat goes stale.

    Args:
        name: The study name.
        stores: Where it lives.
        n_trials: Raises the study's target of finished trials.
        study_file: If given, must be the file the study was launched with.
        max_retries: How many times a trial whose worker died is retried.
        worker: This worker's index (seeds its sampler apart from the others).

    Raises:
        SweepError: No such study, or `study_file` differs from the stored one.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = open_tracker(stores)
    storage = open_storage(stores.storage, tracker, max_retries)
    check_exists(storage, stores.storage, name)
    return _open(name, tracker, storage, stores, n_trials, study_file, max_retries,
                 worker)  # fmt: skip


def _open(
    name: str,
    tracker: Tracker,
    storage: optuna.storages.BaseStorage,
    stores: Stores,
    n_trials: int | None,
    study_file: config_module.Study | None,
    max_retries: int,
    worker: int = 0,
    join: bool = False,
) -> Session:
    """`resume` once the stores are open (`launch --join` has them open too).

    A joining launch may find the study a moment after another launch created
    it: it waits until that launch has set it up (imported its warm start,
    queued its baselines, recorded its target).
    """
    study = optuna.load_study(study_name=name, storage=storage)
    if join:
        _wait_until_set_up(study)
    launched = _launched_file(name, study.user_attrs, study_file)
    # Reseeded past the trials already run: a resumed sampler must not replay
    # the proposals of the first run.
    study.sampler = space.make_sampler(
        launched.study, len(study.get_trials(deepcopy=False)) + 1, worker
    )
    study.pruner = space.make_pruner(launched.study, launched.training)
    target = study.user_attrs.get(keys.TARGET_ATTR, launched.study.n_trials)
    # Trials a warm start imported are not among the `n_trials` asked for.
    if n_trials is not None:
        n_trials += study.user_attrs.get(keys.IMPORTED_ATTR, 0)
    if n_trials is not None and n_trials > target:
        target = n_trials
        study.set_user_attr(keys.TARGET_ATTR, target)
    retries.fail_orphaned_trials(study, tracker, max_retries)
    return Session(study, launched, tracker, target, stores.storage)


def _launched_file(
    name: str, attrs: dict, study_file: config_module.Study | None
) -> config_module.Study:
    """The file study `name` runs by: as launched, with `study_file`'s budget.

    Args:
        name: The study.
        attrs: Its user attrs (the launched file's text is kept there).
        study_file: The file given now, if any.

    Returns:
        The launched file; with `study_file`'s time budget if one is given.

    Raises:
        SweepError: `study_file` differs from the launched file.
    """
    text = attrs.get(keys.STUDY_FILE_ATTR)
    if study_file is not None and study_file.text == text:
        return study_file
    launched = config_module.launched_file(name, text)
    if study_file is None:
        return launched
    changed = config_module.differences(launched, study_file)
    if changed:
        raise SweepError(
            f"{study_file.path} differs from the file study {name!r} was launched "
            f"with ({changed}); the study is "
            "unchanged: resume it without a file, or launch the new file under "
            "another [study] name"
        )
    # The file given now sets this run's time budget (`differences` allows it).
    settings = dataclasses.replace(launched.study, timeout=study_file.study.timeout)
    return dataclasses.replace(launched, study=settings)


def _wait_until_set_up(study: optuna.Study, timeout: float = 120) -> None:
    """Waits for the launch that created `study` to record its target (its last step).

    Raises:
        SweepError: Not recorded within `timeout` seconds (that launch died).
    """
    deadline = time.monotonic() + timeout
    while keys.TARGET_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise SweepError(
                f"study {study.study_name!r} exists but the launch that created "
                f"it did not finish setting it up within {timeout:.0f} s; if that "
                f"launch was stopped, remove the study with `sweep delete "
                f"{study.study_name}` and launch again"
            )
        time.sleep(0.5)


def run(
    session: Session,
    features: Features,
    checkpoints: Path,
    progress: bool = True,
    max_retries: int = DEFAULT_MAX_RETRIES,
    search: bool = True,
    deadline: float | None = None,
) -> None:
    """Runs the session's trials until the study reaches its target.

    Then, if the study has a confirmation plan (`sweep.confirm`), its
    finalists' runs until every one has run. No trial starts after the
    deadline (search or confirmation); the trials in flight finish.

    The study's MLflow run is RUNNING meanwhile, then FINISHED (or KILLED when
    interrupted, FAILED when stopped by an error).

    Args:
        session: The opened study.
        features: The data.
        checkpoints: The folder of the trials' checkpoints (one per study).
        progress: Show a progress bar and one line per trial.
        max_retries: How many times a trial whose worker died is retried.
        search: Run the search; False: the confirmation stage only.
        deadline: The time budget's end (`time.time()`), if any.
    """
    study, tracker = session.study, session.tracker
    parent_run_id = study.user_attrs[keys.PARENT_RUN_ATTR]
    tracker.reopen_run(parent_run_id)
    folder = checkpoints / study.study_name
    objective = Objective(
        session.study_file,
        features,
        tracker,
        study.user_attrs[keys.EXPERIMENT_ATTR],
        parent_run_id,
        folder,
    )
    try:
        plotter = Plotter(
            session.storage_url,
            study.study_name,
            tracker.tracking_uri,
            parent_run_id,
            folder,
        )
    except OSError as e:  # the report must never stop the sweep
        print(f"sweep: no plotter process ({e}); plots drawn once a minute",
              file=sys.stderr)  # fmt: skip
        plotter = None
    report = StudyReport(
        tracker, parent_run_id, str(session.study_file.path), features.source, plotter
    )
    status = "FAILED"
    out_of_time = False
    try:
        if search:
            out_of_time = run_trials(
                study, objective, session.target, progress, [report], deadline=deadline
            )
        plan = confirm.stored_plan(study)
        if plan is not None and not out_of_time:
            out_of_time = _confirm(session, objective, plan, checkpoints, progress,
                                   max_retries, report, deadline)  # fmt: skip
        if plotter is not None:
            # The final plots are drawn here; the child's drawing would be stale.
            plotter.stop(wait=False)
        # By the last worker to finish: another one still training draws them
        # when its trial ends (a dead one's trial does not count, nor does a
        # process between trials, this one included).
        report.refresh(study, draw=not presence.trial_workers(confirm.stages(study)))
        status = "FINISHED"
    except servers.ServerUnavailable:
        status = "KILLED"
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = "KILLED"
        for one in confirm.stages(study):
            retries.requeue_interrupted(one, tracker, max_retries)
        raise
    finally:
        if plotter is not None:
            plotter.stop(wait=False)
        tracker.finish_run(parent_run_id, status)


def _confirm(
    session: Session,
    search: Objective,
    plan: config_module.ConfirmSettings,
    checkpoints: Path,
    progress: bool,
    max_retries: int,
    report: StudyReport,
    deadline: float | None,
) -> bool:
    """Runs the confirmation stage: its finalists over its fresh seeds.

    A finalist's seeds stop at its first collapse; the next configuration
    joins only once every finalist has collapsed (`confirm.queue`).

    Returns:
        Whether the deadline ended it first.
    """
    study = session.study
    # Before anything is created: a search without a complete trial has
    # nothing to confirm.
    confirm.check_confirmable(
        study.study_name, confirm.finalists(study.get_trials(deepcopy=False), 1)
    )
    companion = confirm.open_companion(study, study._storage)  # noqa: SLF001
    retries.fail_orphaned_trials(companion, session.tracker, max_retries)
    settings = session.study_file.study

    def current_plan() -> confirm.Plan:
        # Read each time: `sweep confirm --seeds` may have changed it meanwhile.
        return confirm.stored_plan(study) or plan

    def queue(runs: list[FrozenTrial] | None = None) -> int:
        if runs is None:
            runs = companion.get_trials(deepcopy=False)
        # A run an interrupt failed is retried here too (from its checkpoint),
        # should its worker be gone before it could re-queue it.
        if retries.requeue_interrupted(companion, session.tracker, max_retries, runs):
            runs = None
        return confirm.queue(study, companion, current_plan(), settings.seed, runs)

    def outside_plan(run: FrozenTrial, runs: list[FrozenTrial]) -> bool:
        return confirm.outside_plan(study, current_plan(), settings.seed, run, runs)

    target = queue()
    if progress:
        print(f"confirming {_count(plan.finalists, 'finalist')} over "
              f"{_count(plan.seeds, 'seed')}")  # fmt: skip
    objective = Objective(
        search.study,
        search.features,
        search.tracker,
        search.experiment_id,
        search.parent_run_id,
        checkpoints / companion.study_name,
        outside_plan=outside_plan,
    )
    # The finalists' table and plot are the search study's report.
    out_of_time = run_trials(companion, objective, target, progress,
                             [lambda _, trial: report(study, trial)], refill=queue,
                             deadline=deadline)  # fmt: skip
    if progress:
        # The champion's line follows in the sweep's summary.
        print(confirm.table(confirm.results(study, companion)))
    return out_of_time


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def run_trials(
    study: optuna.Study,
    objective: Objective,
    target: int,
    progress: bool = True,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    refill: Callable[[list[FrozenTrial]], int] | None = None,
    deadline: float | None = None,
) -> bool:
    """Runs trials, one at a time, until the study holds `target` finished trials.

    Optuna's `MaxTrialsCallback` stops a worker once the target is reached, but
    workers that start a trial at the same moment overshoot it; here a worker
    starts a trial only while finished + running trials are short of the target
    (and `Objective` drops a trial that lost that race), and waits otherwise:
    if a running trial fails or its worker dies, the target is open again.

    Stops early, with a `SweepError`, after `MAX_CONSECUTIVE_FAILURES` failed
    trials in a row.

    Args:
        study: The study.
        objective: What each trial runs.
        target: The finished trials to reach.
        progress: Show a progress bar and one line per trial.
        callbacks: Optuna trial callbacks (after the progress line).
        refill: Given the study's trials, queues those still to run and
            returns the target, for a study whose every trial is queued
            (confirmation runs): called before each trial starts, so that
            nothing is ever sampled.
        deadline: No trial starts after this `time.time()`.

    Returns:
        Whether the deadline came before the target.
    """
    objective.target = target
    bar = Progress(target, summary.finished_count(study), enabled=progress)
    verbosity = optuna.logging.get_verbosity()
    # Each trial's outcome is printed by `Progress`; Optuna's own lines (with a
    # traceback for every failed trial) would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def run_one() -> None:
        study.optimize(
            objective,
            n_trials=1,
            catch=(TrialFailed,),
            callbacks=[bar, *callbacks],
            gc_after_trial=True,
        )

    try:
        while True:
            # One read of the study per trial: each costs a query of the store.
            trials = study.get_trials(deepcopy=False)
            if refill is not None:
                # The plan grows when every finalist has collapsed (the next
                # configuration joins them); what it queues now is seen on the
                # next pass.
                target = objective.target = refill(trials)
                bar.retarget(target)
            states = [t.state for t in trials]
            done = sum(state in keys.FINISHED for state in states)
            values = [t.value for t in trials if t.state == TrialState.COMPLETE]
            bar.count(done, max(values, default=None))
            if done >= target:
                if refill is None or TrialState.WAITING not in states:
                    return False
                # A run two workers queued at once: started, it is dropped
                # before it trains (`Objective`), so the stage leaves no queue.
                run_one()
                continue
            if deadline is not None and time.time() >= deadline:
                # Trials other workers run finish with them.
                return True
            running = states.count(TrialState.RUNNING)
            if done + running >= target:
                # Others are finishing the last trials; a dead one's heartbeat
                # goes stale and this frees its place.
                optuna.storages.fail_stale_trials(study)
                retries.fail_unclaimed_trials(study, trials, objective.tracker)
                time.sleep(1)
                continue
            if refill is not None and TrialState.WAITING not in states:
                # Every run is queued, never sampled: none is left to start.
                time.sleep(1)
                continue
            run_one()
            if bar.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise SweepError(
                    f"the last {MAX_CONSECUTIVE_FAILURES} trials of study "
                    f"{study.study_name!r} all failed (the last: "
                    f"{study.trials[-1].user_attrs.get(keys.FAIL_REASON_ATTR)}); "
                    "check the [space] ranges (e.g. a learning rate too high to "
                    "converge)"
                )
    finally:
        optuna.logging.set_verbosity(verbosity)
        bar.close()


class Progress:
    """A progress bar over the study's finished trials, and one line per trial.

    Args:
        target: Finished trials the study aims for.
        done: Finished trials before this run.
        enabled: Show the bar and the per-trial lines.
    """

    def __init__(self, target: int, done: int, enabled: bool = True):
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal; lines still print.
        self.bar = tqdm(
            total=target,
            initial=done,
            unit="trial",
            disable=None if enabled else True,
            dynamic_ncols=True,
        )
        self.enabled = enabled
        self.failures_in_a_row = 0

    def retarget(self, target: int) -> None:
        """Sets the finished trials aimed for (a confirmation plan that grew)."""
        self.bar.total = target

    def write(self, line: str) -> None:
        """Prints a line above the bar."""
        if self.enabled:
            self.bar.write(line)

    def count(self, done: int, best: float | None) -> None:
        """Shows the study's finished trials and best value (every worker's)."""
        self.bar.n = min(done, self.bar.total)
        if best is not None:
            self.bar.set_postfix(best=f"{best:.4f}", refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: prints the trial's outcome (`count` moves the bar)."""
        if trial.user_attrs.get(keys.SURPLUS_ATTR):
            return  # a race lost to another worker; nothing ran
        # A confirmation run is named by the finalist it retrains: its own
        # number is the confirmation study's.
        finalist = trial.user_attrs.get(keys.FINALIST_OF_ATTR)
        label = f"trial {trial.number:4d}"
        if finalist is not None:
            label = f"finalist {finalist:4d}"
        line = f"{label} {trial.state.name:8s} {summary.trial_text(trial)}"
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            reason = trial.user_attrs.get(keys.FAIL_REASON_ATTR, "unknown")
            line += f"  failed: {reason}"
        else:
            self.failures_in_a_row = 0
            epoch = trial.user_attrs.get(keys.BEST_EPOCH_ATTR)
            line += f"  val top-100 {summary.best_accuracy(trial):.4f} @ epoch {epoch}"
            if trial.state == TrialState.PRUNED:
                line += f" (pruned at {trial.user_attrs.get(keys.PRUNED_AT_ATTR)})"
            elif keys.COLLAPSED_AT_ATTR in trial.user_attrs:
                stopped = trial.user_attrs[keys.COLLAPSED_AT_ATTR]
                line += f" (collapsed, stopped at {stopped})"
            elif trial.user_attrs.get(keys.DIVERGED_ATTR):
                line += " (diverged)"
        self.write(line)
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            study.stop()

    def close(self) -> None:
        """Removes the bar."""
        self.bar.close()
