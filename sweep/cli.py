"""The `sweep` command: each verb parses its arguments and calls one module.

User mistakes (`SweepError`) print as one line on stderr and exit with code 1;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from pathlib import Path

from sweep import interrupts, params
from sweep.errors import SweepError, TrialFailed

DATA_SOURCE_HELP = (
    "where MovieLens 100k comes from: auto (tfds's prepared copy, then "
    "$SWEEP_MOVIELENS_DIR, then the recbole wheel's copy, then a tfds download), "
    "tfds, recbole, or grouplens:PATH (a GroupLens ml-100k folder)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; expected one of at least {minimum}"
        ) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"{text} is below {minimum}; expected at least {minimum}"
        )
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _workers(text: str) -> int:
    from sweep.workers import max_workers

    value = _positive_int(text)
    most, cores = max_workers()
    if value > most:
        raise argparse.ArgumentTypeError(
            f"{value} is above {most}; expected at most {most} ({most // cores} per "
            f"core of the {cores} this process may use: more only share the cores "
            "and each holds its own copy of the libraries and data); on more "
            "machines, start `sweep resume NAME` on each"
        )
    return value


def _seed(text: str) -> int:
    from sweep.config import SEED_MAX

    value = _non_negative_int(text)
    # NumPy's global generator (seeded with it) takes 32-bit seeds only.
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"{text} is above {SEED_MAX}; expected a seed from 0 to {SEED_MAX}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number; expected one from 1 to 65535"
        ) from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text} is not a port number; expected one from 1 to 65535"
        )
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; expected a positive one such as 0.05"
        ) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} is not positive and finite; expected e.g. 0.05"
        )
    return value


def _test_fraction(text: str) -> float:
    from sweep.config import MAX_TEST_FRACTION

    expected = f"expected a number from 0 up to (not including) {MAX_TEST_FRACTION}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; {expected}, such as 0.1"
        ) from None
    if not 0 <= value < MAX_TEST_FRACTION:
        raise argparse.ArgumentTypeError(f"{text} is out of range; {expected}")
    return value


def _duration(text: str) -> float:
    from sweep import servers

    try:
        return servers.parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; expected seconds or a number with a "
            "unit s, m or h, such as 90, 30s, 5m or 1h"
        ) from None


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no time at all; expected a duration above 0, such as "
            "30m or 2h"
        )
    return seconds


def cmd_train(args: argparse.Namespace) -> int:
    """Trains one configuration and prints its validations and the best one."""
    from sweep import params, train, verbs

    config = train.TrainConfig(
        **{name: getattr(args, name) for name in params.NAMES},
        epochs=args.epochs,
        validation_freq=args.validation_freq,
        batch_size=args.batch_size,
        seed=args.seed,
        test_fraction=args.test_fraction,
    )
    return verbs.train(config, args.data_source, args.json)


def cmd_launch(args: argparse.Namespace) -> int:
    """Creates a study from a study file and runs its trials."""
    from sweep import verbs

    return verbs.launch(
        Path(args.study_file), _run_options(args), args.join, args.warm_start
    )


def cmd_resume(args: argparse.Namespace) -> int:
    """Continues a study until it holds its n_trials finished trials.

    Run on another machine against shared stores, it joins as another worker.
    """
    from sweep import verbs

    path = Path(args.study_file) if args.study_file else None
    return verbs.resume(args.name, _run_options(args), path)


def cmd_confirm(args: argparse.Namespace) -> int:
    """Retrains a study's best configurations over fresh seeds; names a champion.

    The K best distinct configurations of the search (--finalists) are each
    trained again from scratch with S seeds no trial used (--seeds). A seed
    that collapses (below half of the configuration's search curve) stops
    there and marks the configuration unstable; the next one joins only if
    all K did. The champion is the stable one with the highest mean. Runs or
    continues the stage.
    """
    from sweep import verbs

    return verbs.confirm(args.name, args.finalists, args.seeds, _run_options(args))


def _run_options(args: argparse.Namespace):
    from sweep import verbs

    return verbs.RunOptions(
        n_trials=getattr(args, "n_trials", None),
        workers=getattr(args, "workers", 1),
        max_retries=args.max_retries,
        data_source=args.data_source,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        server_wait=args.server_wait,
        worker_index=getattr(args, "worker_index", None),
        cpus=getattr(args, "cpus", None),
        timeout=getattr(args, "timeout", None),
        deadline=getattr(args, "deadline", None),
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Lists studies: trials per state, the best trial, workers alive."""
    from sweep import verbs

    return verbs.status(args.name, args.storage)


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Queues a hand-picked configuration into a study; a worker runs it next.

    Give every hyperparameter as NAME=VALUE, or --file with [[baselines]]
    tables; each must be a value the study's [space] can propose.
    """
    from sweep import verbs

    return verbs.enqueue(args.name, args.values, args.file, args.storage)


def cmd_best(args: argparse.Namespace) -> int:
    """Prints a study's best complete trial, and its confirmed champion if any."""
    from sweep import verbs

    return verbs.best(args.name, args.json, args.storage)


def cmd_trials(args: argparse.Namespace) -> int:
    """Prints a study's trials as a table, CSV or JSON."""
    from sweep import verbs

    return verbs.trials(args.name, args.format, args.state, args.storage)


def cmd_delete(args: argparse.Namespace) -> int:
    """Deletes a study: its trials, its MLflow experiment, runs and artifacts.

    Its checkpoints on this machine go too, and its registered model versions
    with --models. Asks first unless --yes; refuses while a worker of the
    study is alive. The study file can then be launched again.
    """
    from sweep import verbs

    return verbs.delete(args.name, args.yes, args.models, args.storage,
                        args.tracking_uri)  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    """Exports a study's champion (else its best trial) as a servable recommender.

    With a confirmation stage finished, the confirmed champion's best seed run;
    otherwise the search's best complete trial, said to be unconfirmed.
    """
    from sweep import verbs

    return verbs.export(args.name, args.out, args.trial, args.force, args.register,
                        args.data_source, args.storage, args.tracking_uri)  # fmt: skip


def cmd_recommend(args: argparse.Namespace) -> int:
    """Prints the top-k movies for a MovieLens user from an exported model."""
    from sweep import verbs

    return verbs.recommend(args.model, args.user_id, args.k, args.tracking_uri)


def cmd_ui(args: argparse.Namespace) -> int:
    """Starts the MLflow UI on the sweep's tracking store and prints study URLs."""
    from sweep import verbs

    return verbs.serve_ui(args.host, args.port, args.tracking_uri)


def _cpus(text: str) -> list[int]:
    try:
        cores = [int(c) for c in text.split(",") if c]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of core numbers"
        ) from None
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if usable is not None and not set(cores) <= usable:
        raise argparse.ArgumentTypeError(
            f"{text!r} names cores this process cannot use; expected some of "
            f"{', '.join(map(str, sorted(usable)))}"
        )
    return cores


def _add_storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="Optuna storage URL (default $SWEEP_STORAGE, else "
        "sqlite:///$SWEEP_HOME/optuna.db)",
    )
    _add_server_wait_argument(parser)


def _add_server_wait_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-wait",
        type=_duration,
        default=os.environ.get("SWEEP_SERVER_WAIT", "5m"),
        help="how long to wait for a PostgreSQL or MLflow server that stopped "
        "answering (restarting, say) before stopping, e.g. 90s, 5m "
        "(default $SWEEP_SERVER_WAIT, else 5m)",
    )


def _add_tracking_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow tracking URI{what} (default $MLFLOW_TRACKING_URI, else "
        "sqlite:///$SWEEP_HOME/mlflow.db)",
    )


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_argument(parser)
    _add_tracking_argument(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-trials",
        type=_positive_int,
        help="finished trials to reach (default: the study's n_trials)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        help="start no trial after this long, e.g. 30m or 2h; the trials in "
        "flight finish (default: the study's [study] timeout, else none)",
    )
    _add_workers_arguments(parser)
    _add_retry_and_data_arguments(parser)


def _add_workers_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, and what a worker process is started with (hidden)."""
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes on this machine, sharing its cores",
    )
    parser.add_argument(
        "--worker-index", type=_non_negative_int, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--cpus",
        type=_cpus,
        default=os.environ.get("SWEEP_CPUS"),
        help=argparse.SUPPRESS,
    )
    # The parent's time budget, as a moment (`time.time()`).
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def _add_retry_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What every verb that runs trials takes: retries, stores, data."""
    parser.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=3,
        help="times a trial whose worker died or was interrupted is retried",
    )
    _add_store_arguments(parser)
    parser.add_argument("--data-source", default="auto", help=DATA_SOURCE_HELP)


# One example per verb, shown at the end of its --help.
EXAMPLES = {
    "train": "sweep train --depth 2 --width 64 --test-fraction 0.1",
    "launch": "sweep launch studies/deep_retrieval.toml --workers 2",
    "resume": "sweep resume deep-retrieval --n-trials 80",
    "confirm": "sweep confirm deep-retrieval --finalists 3 --seeds 5",
    "status": "sweep status deep-retrieval",
    "enqueue": "sweep enqueue deep-retrieval depth=2 width=64 embedding_dim=32 "
    "learning_rate=0.1",
    "best": "sweep best deep-retrieval --json",
    "trials": "sweep trials deep-retrieval --format csv --state complete",
    "export": "sweep export deep-retrieval --out exports/deep-retrieval",
    "delete": "sweep delete old-study --models --yes",
    "recommend": "sweep recommend --model models:/deep-retrieval@champion --user-id 42",
    "ui": "sweep ui --port 5000",
}


def _add_verb(verbs, name: str, run) -> argparse.ArgumentParser:
    """A verb's parser: its function's docstring as help, and its example."""
    doc = inspect.cleandoc(run.__doc__)
    parser = verbs.add_parser(
        name,
        help=doc.splitlines()[0],
        description=doc,
        epilog=f"example: {EXAMPLES[name]}",
        # The docstring's lines as written, and the example on one line.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    from sweep import __version__

    parser = _Parser(prog="sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors"
    )
    parser.add_argument("--version", action="version", version=f"sweep {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    train = _add_verb(verbs, "train", cmd_train)
    for hyper in params.SEARCHED:
        train.add_argument(
            hyper.flag,
            type=_positive_int if hyper.kind is int else _positive_float,
            default=hyper.reference,
            help=f"{hyper.help} (default {hyper.reference}, the reference's)",
        )
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument(
        "--validation-freq",
        type=_positive_int,
        default=5,
        help="validate every N epochs (and after the last)",
    )
    train.add_argument("--batch-size", type=_positive_int, default=1000)
    train.add_argument(
        "--seed", type=_seed, default=42, help="seeds weights and data order"
    )
    train.add_argument(
        "--test-fraction",
        type=_test_fraction,
        default=0.0,
        help="hold out this share of the ratings before the 80/20 split and "
        "report the best epoch's test top-100 accuracy (default 0: none)",
    )
    train.add_argument("--data-source", default="auto", help=DATA_SOURCE_HELP)
    train.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on the last line of stdout instead",
    )

    launch = _add_verb(verbs, "launch", cmd_launch)
    launch.add_argument("study_file", help="the study file, e.g. studies/smoke.toml")
    launch.add_argument(
        "--join",
        action="store_true",
        help="if the study exists (launched from the same file), join it instead",
    )
    launch.add_argument(
        "--warm-start",
        action="append",
        default=[],
        metavar="STUDY",
        help="start from the finished trials of this earlier study (repeatable; "
        "added to the file's [study] warm_start)",
    )
    _add_run_arguments(launch)

    resume = _add_verb(verbs, "resume", cmd_resume)
    resume.add_argument("name", help="the study name")
    resume.add_argument(
        "--study-file",
        help="refuse unless the study was launched with this same file",
    )
    _add_run_arguments(resume)

    confirm = _add_verb(verbs, "confirm", cmd_confirm)
    confirm.add_argument("name", help="the study name")
    confirm.add_argument(
        "--finalists",
        type=_positive_int,
        help="configurations to confirm (default: the study's [confirm], else 3)",
    )
    confirm.add_argument(
        "--seeds",
        type=_positive_int,
        help="fresh seeds per configuration (default: the study's, else 3)",
    )
    _add_workers_arguments(confirm)
    _add_retry_and_data_arguments(confirm)

    status = _add_verb(verbs, "status", cmd_status)
    status.add_argument("name", nargs="?", help="one study (default: all)")
    _add_storage_argument(status)

    enqueue = _add_verb(verbs, "enqueue", cmd_enqueue)
    enqueue.add_argument("name", help="the study name")
    enqueue.add_argument(
        "values", nargs="*", metavar="NAME=VALUE", help="e.g. depth=2 width=64"
    )
    enqueue.add_argument(
        "--file", type=Path, help="a TOML file of [[baselines]] tables instead"
    )
    _add_storage_argument(enqueue)

    best = _add_verb(verbs, "best", cmd_best)
    best.add_argument("name", help="the study name")
    best.add_argument(
        "--json", action="store_true", help="one JSON object (see the README)"
    )
    _add_storage_argument(best)

    trials = _add_verb(verbs, "trials", cmd_trials)
    trials.add_argument("name", help="the study name")
    trials.add_argument(
        "--format", choices=("table", "csv", "json"), default="table",
        help="table (default), csv (params as columns) or json (see the README)",
    )  # fmt: skip
    trials.add_argument(
        "--state",
        choices=("complete", "pruned", "fail", "running", "waiting"),
        help="only the trials in this state",
    )
    _add_storage_argument(trials)

    delete = _add_verb(verbs, "delete", cmd_delete)
    delete.add_argument("name", help="the study name")
    delete.add_argument(
        "--models",
        action="store_true",
        help="delete its registered model versions too (default: keep them)",
    )
    delete.add_argument("--yes", action="store_true", help="do not ask first")
    _add_store_arguments(delete)

    export = _add_verb(verbs, "export", cmd_export)
    export.add_argument("name", help="the study name")
    export.add_argument(
        "--trial",
        type=int,
        help="export this search trial (it must be complete) instead, unconfirmed",
    )
    export.add_argument("--out", required=True, type=Path, help="the export folder")
    export.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register it in the MLflow Model Registry under the study name, "
        "with alias champion when it is the study's champion (default: on)",
    )
    export.add_argument(
        "--force", action="store_true", help="replace a non-empty --out folder"
    )
    _add_store_arguments(export)
    export.add_argument("--data-source", default="auto", help=DATA_SOURCE_HELP)

    recommend = _add_verb(verbs, "recommend", cmd_recommend)
    recommend.add_argument(
        "--model",
        required=True,
        help="an export folder, or a registered model such as models:/NAME@champion",
    )
    recommend.add_argument("--user-id", type=int, required=True, help="MovieLens user")
    recommend.add_argument("--k", type=_positive_int, default=10, help="movies")
    _add_tracking_argument(recommend, " of a models:/ URI's registry")

    ui = _add_verb(verbs, "ui", cmd_ui)
    ui.add_argument("--port", type=_port, default=5000)
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="the interface to listen on (default 127.0.0.1: this machine only)",
    )
    _add_tracking_argument(ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the `sweep` command line; returns the exit code."""
    try:
        try:
            return _run(argv)
        finally:
            # Output is block-buffered into a pipe: flush here so that a reader
            # gone early (`sweep trials NAME | head`) is met below, not at exit.
            sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be said on stdout. Pointing it at /dev/null keeps the
        # interpreter's own final flush from failing again (Python's recipe in
        # the `signal` module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a list of positionals only up to the first flag:
    # `enqueue NAME --storage URL depth=2` leaves `depth=2` over.
    if extra and args.verb == "enqueue" and not any(a.startswith("-") for a in extra):
        args.values += extra
    elif extra:
        parser.parse_args(argv)  # its one-line usage error
    debug = args.debug or os.environ.get("SWEEP_DEBUG") == "1"
    # SIGTERM (docker stop, kill) stops as cleanly as Ctrl-C does.
    interrupts.install()
    from sweep import servers

    if getattr(args, "server_wait", None) is not None:
        servers.set_wait(args.server_wait)
    try:
        return args.run(args)
    except servers.ServerUnavailable as e:
        if debug:
            traceback.print_exc()
        then = getattr(e, "then", "")
        print(f"sweep {args.verb}: error: {e}{then}", file=sys.stderr)
        return servers.EXIT_CODE
    except SweepError as e:
        if debug:
            traceback.print_exc()
        print(f"sweep {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except TrialFailed as e:
        if debug:
            traceback.print_exc()
        print(f"sweep {args.verb}: training failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sweep {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
