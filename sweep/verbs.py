"""What each `sweep` verb does, from its parsed arguments to its output.

`sweep.cli` parses the command line and calls one function here per verb;
these open the home and the stores, load the data, call the module that does
the work, and print what the user sees. The training stack (Keras, JAX) is
imported by the verbs that train, so `sweep status` answers without it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sweep import config as config_module
from sweep import data, keys, presence, retries, servers, summary, ui, workers
from sweep.errors import SweepError
from sweep.home import Home
from sweep.stores import (
    Stores,
    check_servers,
    check_tracking_file,
    open_study,
    resolve_stores,
)

if TYPE_CHECKING:
    from sweep.data import Features
    from sweep.study import Session


def train(config, data_source: str, as_json: bool = False) -> int:
    """`sweep train`: trains one configuration, prints its validations and best.

    Args:
        config: The `sweep.train.TrainConfig` to train.
        data_source: Where MovieLens comes from.
        as_json: Print one JSON summary on stdout (progress on stderr) instead.
    """
    from sweep import train as train_module

    log = (lambda line: print(line, file=sys.stderr)) if as_json else print
    home = Home.from_environment()
    features = data.load(data_source, home=home, log=log)
    home.use_compilation_cache()
    log(
        f"training layer sizes {list(config.layer_sizes)}, embedding "
        f"{config.embedding_dim}, Adagrad {config.learning_rate}, "
        f"{config.epochs} epochs"
    )

    def report(v: train_module.Validation) -> None:
        log(
            f"epoch {v.epoch:3d}  val_loss {v.val_loss:.4f}  "
            f"val_top100_accuracy {v.val_top100_accuracy:.4f}"
        )

    result = train_module.train(config, features, on_validation=report, test=True)
    if as_json:
        print(json.dumps(result.summary()))
        return 0
    line = (
        f"best val_top100_accuracy {result.best.val_top100_accuracy:.4f} at "
        f"epoch {result.best.epoch} ({result.train_seconds:.1f} s)"
    )
    if result.test_top100_accuracy is not None:
        line += f"; test_top100_accuracy {result.test_top100_accuracy:.4f}"
    print(line)
    return 0


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a `sweep launch` or `sweep resume` process runs its study.

    Attributes:
        n_trials: The finished trials to reach (None: the study's own).
        workers: Worker processes on this machine.
        max_retries: Times a trial whose worker died or was interrupted runs again.
        data_source: Where MovieLens comes from (`sweep.data.load`).
        storage: The Optuna storage URL (None: environment, then the home's).
        tracking_uri: The MLflow tracking URI (None: likewise).
        server_wait: Seconds to wait for a server that stopped answering.
        worker_index: This process's index among the workers a `--workers N`
            command started (None: not such a worker; it prints the summary).
        cpus: The cores this worker process is pinned to (None: all).
        timeout: Seconds after the command's start when no more trials start
            (None: the study file's `[study] timeout`, if any).
        deadline: That moment (`time.time()`), as a worker's parent set it.
    """

    n_trials: int | None = None
    workers: int = 1
    max_retries: int = retries.DEFAULT_MAX_RETRIES
    data_source: str = "auto"
    storage: str | None = None
    tracking_uri: str | None = None
    server_wait: float = servers.DEFAULT_WAIT_SECONDS
    worker_index: int | None = None
    cpus: list[int] | None = None
    timeout: float | None = None
    deadline: float | None = None


def launch(
    path: Path, options: RunOptions, join: bool = False, warm_start: Sequence[str] = ()
) -> int:
    """`sweep launch`: creates the study from its file and runs it to its target.

    Args:
        path: The study file.
        options: How to run it.
        join: Join the study if it exists (launched from the same file).
        warm_start: Studies to start from, besides the file's `warm_start`.

    Returns:
        The exit code (130 when interrupted).
    """
    started = time.time()
    study_file = config_module.load_study(path)
    if warm_start:
        study_file = config_module.with_warm_start(study_file, warm_start)
    home = Home.from_environment()
    stores = resolve_stores(home, options.storage, options.tracking_uri)
    # Servers that cannot be reached, and a launch that would be refused, are
    # told before the data is built.
    check_servers(stores)
    from sweep import study

    study.check_launchable(study_file, stores, join)
    features = data.load(options.data_source, home=home, log=print)

    session = study.launch(
        study_file,
        stores,
        options.n_trials,
        join=join,
        max_retries=options.max_retries,
    )
    settings, training = study_file.study, study_file.training
    if session.warm_start:
        print(session.warm_start)
    print(
        f"study {settings.name!r}: {session.target - session.imported} trials of "
        f"{training.epochs} epochs, sampler {settings.sampler}, pruner "
        f"{settings.pruner_text}"
    )
    with presence.announced(session.study):
        return _work(session, stores, home, features, options, started)


def resume(name: str, options: RunOptions, path: Path | None = None) -> int:
    """`sweep resume`: continues a study (as one more worker, if others run it).

    Returns:
        The exit code (130 when interrupted).
    """
    started = time.time()
    if options.cpus:
        workers.limit_to(options.cpus)
    study_file = config_module.load_study(path) if path else None
    home = Home.from_environment()
    stores = resolve_stores(home, options.storage, options.tracking_uri)
    # The study first: an unknown name is told at once, before the training
    # stack is imported or any data built.
    open_study(stores, name)
    from sweep import study

    session = study.resume(
        name,
        stores,
        options.n_trials,
        study_file,
        options.max_retries,
        options.worker_index or 0,
    )
    # Announced before the data is built: `sweep delete` waits for it from now.
    with presence.announced(session.study):
        features = data.load(options.data_source, home=home, log=print)
        done = summary.finished_count(session.study)
        print(
            f"study {name!r}: {done} of {session.target} trials finished"
            + (f" (worker {options.worker_index})" if options.worker_index else "")
        )
        return _work(session, stores, home, features, options, started)


def confirm(
    name: str, finalists: int | None, seeds: int | None, options: RunOptions
) -> int:
    """`sweep confirm`: retrains a study's finalists over fresh seeds.

    Runs (or continues) the confirmation stage of any study, one launched
    before the stage existed included; the search itself is not continued.
    Sizes not given come from the study's plan, then its file's `[confirm]`,
    then `config.ConfirmSettings`'s defaults.

    Returns:
        The exit code (130 when interrupted).
    """
    from sweep import confirm as confirm_module

    if options.cpus:
        workers.limit_to(options.cpus)
    home = Home.from_environment()
    stores = resolve_stores(home, options.storage, options.tracking_uri)
    # Before any store is opened for writing or the training stack imported:
    # an unknown study, or one with nothing to confirm, is told at once.
    searched = open_study(stores, name).get_trials(deepcopy=False)
    confirm_module.check_confirmable(name, confirm_module.finalists(searched, 1))
    from sweep import study

    session = study.resume(name, stores, None, None, options.max_retries)
    stored = confirm_module.stored_plan(session.study)
    plan = stored or session.study_file.confirm or config_module.ConfirmSettings()
    plan = dataclasses.replace(
        plan,
        finalists=finalists or plan.finalists,
        seeds=seeds or plan.seeds,
    )
    if stored is not None and stored != plan:
        # The champion may change with the plan: say so rather than silently.
        print(
            f"confirmation plan (finalists x seeds): {stored.finalists} x "
            f"{stored.seeds} -> {plan.finalists} x {plan.seeds}; the champion is "
            "chosen again on the new plan (runs it does not need are kept, not "
            "counted)"
        )
    with presence.announced(session.study):
        features = data.load(options.data_source, home=home, log=print)
        session.study.set_user_attr(keys.CONFIRM_PLAN_ATTR, plan.as_attr())
        return _work(session, stores, home, features, options, None, search=False)


def _work(
    session: Session,
    stores: Stores,
    home: Home,
    features: Features,
    options: RunOptions,
    started: float | None,
    search: bool = True,
) -> int:
    """Runs the session here, or in worker processes; then prints the summary.

    `started`: when the command started, for its time budget (None: no
    budget). `search=False` runs the confirmation stage only (its workers:
    `sweep confirm` processes).
    """
    name = session.study.study_name
    deadline = _deadline(session, options, started)
    if options.workers > 1:
        verb = "resume" if search else "confirm"
        code = workers.run_workers(
            options.workers, _worker_args(name, stores, options, deadline), verb
        )
        if code:
            # A worker that did not stop in time (after Ctrl-C, say) was killed
            # mid-trial: its trial is re-queued now, not by the next resume.
            from sweep import confirm

            for one in confirm.stages(session.study):
                retries.fail_orphaned_trials(one, session.tracker, options.max_retries)
        if code == 130:
            print(
                "interrupted: the trials in flight are re-queued; continue with "
                f"`sweep resume {name}`",
                file=sys.stderr,
            )
        if code:
            return code
    else:
        home.use_compilation_cache()
        try:
            from sweep import study

            study.run(
                session,
                features,
                home.checkpoints,
                progress=not options.worker_index,
                max_retries=options.max_retries,
                search=search,
                deadline=deadline,
            )
        except servers.ServerUnavailable as e:
            # What the command line adds to its one line once trials have run.
            e.then = (
                "; the trial in flight is re-queued once it is back: continue "
                f"then with `sweep resume {name}`"
            )
            raise
        except KeyboardInterrupt:
            # Workers leave the line to the command that started them.
            if options.worker_index is None:
                print(
                    "interrupted: the trial in flight is re-queued; continue with "
                    f"`sweep resume {name}`",
                    file=sys.stderr,
                )
            return 130
        if options.worker_index is not None:
            return 0  # the command that started the workers sums them up
    if deadline is not None and time.time() >= deadline and _unfinished(session):
        budget = summary.duration_text(_budget(session, options))
        print(
            f"the time budget ({budget}) ended the sweep before all its trials ran; "
            f"continue with `sweep resume {name}`"
        )
    print(summary.summary_table(session.study))
    print(ui.browse_hint(stores, session.study.user_attrs[keys.EXPERIMENT_ATTR]))
    return 0


def _deadline(
    session: Session, options: RunOptions, started: float | None
) -> float | None:
    """When no more trials start: the parent's deadline, else the budget's end."""
    if options.deadline is not None:
        return options.deadline
    timeout = _budget(session, options)
    return started + timeout if timeout and started is not None else None


def _budget(session: Session, options: RunOptions) -> float | None:
    """The time budget in seconds: --timeout, else the study file's."""
    return options.timeout or session.study_file.study.timeout


def _unfinished(session: Session) -> bool:
    """Whether the study is short of its target or of its confirmation runs."""
    from sweep import confirm

    study = session.study
    if summary.finished_count(study) < session.target:
        return True
    return any(not f.done for f in confirm.results(study, confirm.companion_of(study)))


def _worker_args(
    name: str, stores: Stores, options: RunOptions, deadline: float | None
) -> list[str]:
    """`sweep resume` arguments that make a worker process join this study."""
    return [
        name, "--storage", stores.storage, "--tracking-uri", stores.tracking_uri,
        "--data-source", options.data_source,
        "--max-retries", str(options.max_retries),
        "--server-wait", str(options.server_wait),
        *(["--deadline", repr(deadline)] if deadline is not None else []),
    ]  # fmt: skip


def status(name: str | None, storage: str | None) -> int:
    """`sweep status`: studies, their trials per state, best trial, live workers."""
    stores = resolve_stores(Home.from_environment(), storage, None)
    print(summary.status_report(stores.storage, name))
    return 0


def enqueue(name: str, pairs: list[str], path: Path | None, storage: str | None) -> int:
    """`sweep enqueue`: queues hand-picked configurations into a study.

    Each is checked against the study's space (as a baseline is) before any
    is queued, and raises the study's target by one, so that it runs beside
    the search's own trials rather than in place of one.
    """
    if bool(pairs) == (path is not None):
        raise SweepError(
            "give the configuration as NAME=VALUE arguments (depth=2 width=64 "
            "embedding_dim=32 learning_rate=0.1) or --file FILE, "
            + ("not both" if pairs else "one of them")
        )
    study = _stored_study(name, storage)
    text = study.user_attrs.get(keys.STUDY_FILE_ATTR)
    space = config_module.launched_file(name, text).space
    if path is not None:
        configurations = config_module.load_configurations(path)
        sources = [
            f"{path}: [[baselines]] #{i + 1}" for i in range(len(configurations))
        ]
    else:
        configurations = [config_module.parse_assignments(pairs)]
        sources = [f"study {name!r}"]
    for values, source in zip(configurations, sources, strict=True):
        config_module.check_configuration(values, space, source)
    for values in configurations:
        study.enqueue_trial(values, user_attrs={keys.ENQUEUED_ATTR: True})
    target = study.user_attrs.get(keys.TARGET_ATTR, 0) + len(configurations)
    study.set_user_attr(keys.TARGET_ATTR, target)
    print(
        f"queued {len(configurations)} configuration(s) in study {name!r}; its "
        f"target is now {target} finished trials: a running worker takes them "
        f"next, or `sweep resume {name}`"
    )
    return 0


def best(name: str, as_json: bool, storage: str | None) -> int:
    """`sweep best`: the best complete trial (and the confirmed champion)."""
    from sweep import queries

    record = queries.best_record(_stored_study(name, storage))
    print(json.dumps(record, indent=2) if as_json else queries.best_text(record))
    return 0


def trials(name: str, fmt: str, state: str | None, storage: str | None) -> int:
    """`sweep trials`: a study's trials as a table, CSV or JSON."""
    from sweep import queries

    study = _stored_study(name, storage)
    print(queries.render(queries.trial_records(study, state), fmt))
    return 0


def delete(
    name: str, yes: bool, models: bool, storage: str | None, tracking_uri: str | None
) -> int:
    """`sweep delete`: a study's trials, MLflow runs and checkpoints, after asking."""
    from sweep import deletion

    home = Home.from_environment()
    stores = resolve_stores(home, storage, tracking_uri)
    what = deletion.plan(stores, home.checkpoints, name, models)
    if not yes:
        print(f"delete {what.describe()}? [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print(f"kept study {name!r} (answer y to delete, or pass --yes)")
            return 1
    deletion.delete(stores, what)
    print(f"deleted {what.describe()}")
    return 0


def _stored_study(name: str, storage: str | None):
    """An existing study to read or queue into (the home's store by default)."""
    return open_study(resolve_stores(Home.from_environment(), storage, None), name)


def export(
    name: str,
    out: Path,
    trial: int | None,
    force: bool,
    register: bool,
    data_source: str,
    storage: str | None,
    tracking_uri: str | None,
) -> int:
    """`sweep export`: a study's champion (or a chosen trial), made servable."""
    from sweep import export as export_module
    from sweep import registry

    home = Home.from_environment()
    stores = resolve_stores(home, storage, tracking_uri)
    chosen = export_module.select(stores, name, out, trial, force)
    features = data.load(data_source, home=home, log=print)
    home.use_compilation_cache()
    result = export_module.export(
        name, chosen, out, stores, features, register=register
    )
    print(f"exported trial {result.trial} of study {name!r} to {result.folder}")
    if result.model_version is not None:
        model = (
            f"models:/{name}@{registry.CHAMPION_ALIAS}"
            if result.alias
            else f"models:/{name}/{result.model_version}"
        )
        where = (
            ""
            if stores.default_tracking
            else f" --tracking-uri {servers.redact(stores.tracking_uri)}"
        )
        print(f"serve it: sweep recommend --model {model} --user-id 1{where}")
    return 0


def recommend(model: str, user_id: int, k: int, tracking_uri: str | None) -> int:
    """`sweep recommend`: the top-k movies for a MovieLens user."""
    from sweep import serving

    if model.startswith(("models:/", "runs:/")):
        home = Home.from_environment()
        stores = resolve_stores(home, None, tracking_uri)
        check_tracking_file(stores.tracking_uri, given=not stores.default_tracking)
        home.use_compilation_cache()
        picks = serving.recommend_registered(model, stores.tracking_uri, user_id, k)
    else:
        picks = serving.recommend(Path(model), user_id, k)
    print(f"top {len(picks)} movies for user {user_id} ({model}):")
    for rank, pick in enumerate(picks, 1):
        print(f"{rank:3d}. {pick.title}  (score {pick.score:.4f})")
    return 0


def serve_ui(host: str, port: int, tracking_uri: str | None) -> int:
    """`sweep ui`: the MLflow UI on the sweep's tracking store."""
    home = Home.from_environment()
    stores = resolve_stores(home, None, tracking_uri)
    check_tracking_file(stores.tracking_uri, given=not stores.default_tracking)
    return ui.serve(
        stores.tracking_uri,
        stores.artifact_root,
        home.logs / "mlflow-ui.log",
        host,
        port,
    )
