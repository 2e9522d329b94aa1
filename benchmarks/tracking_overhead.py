"""Benchmark 2: the share of a trial spent in Optuna storage and MLflow calls.

    .venv/bin/python -m benchmarks.tracking_overhead [--trials 200] [--epochs 30]

Runs a real study (`sweep launch`, in this process, on fresh SQLite stores) of
`--trials` trials over the default study's space and times, per trial, every
call into Optuna's storage and into MLflow, by wrapping the methods of the
storage object the study uses, of `MlflowClient` and of MLflow's SQL store
(nested calls are counted once), and the study report's refresh (an Optuna
callback: its tables each trial; its plots are drawn by a low-priority child
process, whose CPU shows here only as what it takes from the trials' wall
time, and by the worker at the end). Calls on the main thread are on
the trial's path; those of other threads (Optuna's heartbeat, MLflow's async
logging of validation batches) run beside training and are reported apart. A
trial's wall time runs from the end of the previous trial to the end of this
one, so sampling and callbacks count.

The first trials and the last ones are compared: the share must stay under 2%
and must not grow with the study. With `--epochs 30` every trial is the full
schedule (30 epochs, validation every 5); fewer epochs make the study quicker to
run but every trial shorter, so its share larger (the calls per trial are the
same but for the per-epoch loss points).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import tempfile
import threading
import time
import types
from pathlib import Path

from benchmarks.study_text import with_pruner

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent


class Clock:
    """Accumulates the wall time spent inside wrapped methods, by kind.

    Calls made by other threads than the main one (Optuna's heartbeat, MLflow's
    async logging) are off the trial's path: they count as `background`.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._local = threading.local()

    def wrap(self, cls: type, kind: str) -> None:
        """Times every public method of `cls` as `kind`."""
        for name in dir(cls):
            # Plain methods only: static and class methods, properties and
            # nested classes are left as they are.
            method = inspect.getattr_static(cls, name)
            if name.startswith("_") or not isinstance(method, types.FunctionType):
                continue
            setattr(cls, name, self._timed(method, kind))

    def _timed(self, method, kind: str):
        clock = self

        @functools.wraps(method)
        def timed(*args, **kwargs):
            local = clock._local
            if getattr(local, "depth", 0):
                return method(*args, **kwargs)
            local.depth = 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                local.depth = 0
                main = threading.current_thread() is threading.main_thread()
                key = kind if main else "background"
                clock.seconds[key] = clock.seconds.get(key, 0.0) + (
                    time.perf_counter() - start
                )

        return timed

    def total(self, kind: str) -> float:
        """Seconds spent in `kind` so far."""
        return self.seconds.get(kind, 0.0)


def _study_file(folder: Path, trials: int, epochs: int, fixed_shapes: bool) -> Path:
    text = (REPO / "studies" / "deep_retrieval.toml").read_text()
    text = text.replace('name = "deep-retrieval"', 'name = "tracking-overhead"')
    text = text.replace("n_trials = 40", f"n_trials = {trials}")
    text = text.replace("epochs = 30", f"epochs = {epochs}")
    if epochs < 5:
        text = text.replace("validation_freq = 5", "validation_freq = 1")
    # Every trial runs to the end: pruned trials would be shorter and skew the
    # comparison between early and late trials.
    text = with_pruner(text, "none")
    if fixed_shapes:
        # Only the learning rate varies: one set of shapes, compiled once, so
        # the study reaches its late trials without compiling 36 models first.
        text = text.replace(
            "depth = { low = 1, high = 3 }", "depth = { choices = [1] }"
        )
        text = text.replace(
            "width = { choices = [32, 64, 128] }", "width = { choices = [32] }"
        )
        text = text.replace(
            "embedding_dim = { choices = [16, 32, 64, 128] }",
            "embedding_dim = { choices = [32] }",
        )
        text = text.split("[[baselines]]")[0]
    path = folder / "tracking_overhead.toml"
    path.write_text(text)
    return path


def main() -> None:
    """Runs the study with the clocks on and writes the per-trial figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--window", type=int, default=10, help="trials averaged")
    parser.add_argument(
        "--fixed-shapes",
        action="store_true",
        help="search only the learning rate (one compilation for all trials)",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="sweep-tracking-"))
    os.environ["SWEEP_HOME"] = str(folder / "home")
    data_home = os.environ.get("SWEEP_BENCH_DATA_HOME", str(REPO / ".sweep-bench"))
    # The data cache and the recbole wheel are reused from the trial benchmark.
    (folder / "home").mkdir()
    for sub in ("cache", "downloads"):
        source = Path(data_home) / sub
        if source.exists():
            (folder / "home" / sub).symlink_to(source)
    # So is its compilation cache, named directly: JAX cannot use one through a
    # symlink (it fails to create the folder that is already there).
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", str((Path(data_home) / "jax-cache").resolve())
    )

    import optuna
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    from sweep import cli, report, study

    clock = Clock()
    clock.wrap(MlflowClient, "mlflow")
    # The store too: MLflow's async logging thread calls it, not the client.
    clock.wrap(SqlAlchemyStore, "mlflow")
    for cls in {optuna.storages.RDBStorage, optuna.storages._CachedStorage}:
        clock.wrap(cls, "optuna")
    # The report's own work (tables, plots) beside the MLflow calls it makes.
    refresh = report.StudyReport.__call__

    def timed_refresh(self, study_, trial):
        start = time.perf_counter()
        before = clock.total("mlflow")
        refresh(self, study_, trial)
        own = time.perf_counter() - start - (clock.total("mlflow") - before)
        clock.seconds["report"] = clock.total("report") + own

    report.StudyReport.__call__ = timed_refresh

    rows: list[dict] = []
    kinds = ("optuna", "mlflow", "report", "background")
    last = {"at": time.perf_counter(), **dict.fromkeys(kinds, 0.0)}

    def record(study_, trial):
        now = time.perf_counter()
        row = {"trial": trial.number + 1, "wall": now - last["at"]}
        for kind in kinds:
            row[kind] = clock.total(kind) - last[kind]
            last[kind] = clock.total(kind)
        last["at"] = now
        rows.append(row)
        if row["trial"] % 10 == 0 or row["trial"] == 1:
            share = (row["optuna"] + row["mlflow"]) / row["wall"] * 100
            print(
                f"trial {row['trial']}: {row['wall']:.2f} s, optuna "
                f"{row['optuna'] * 1000:.0f} ms, mlflow {row['mlflow'] * 1000:.0f} ms "
                f"({share:.1f}%), report {row['report'] * 1000:.0f} ms",
                flush=True,
            )

    # The recorder runs after the study's own callbacks (report included).
    run_trials = study.run_trials

    def with_recorder(study_, objective, target, progress=True, callbacks=()):
        return run_trials(study_, objective, target, progress, [*callbacks, record])

    study.run_trials = with_recorder
    study_file = _study_file(folder, args.trials, args.epochs, args.fixed_shapes)
    code = cli.main(["launch", str(study_file), "--data-source", "recbole"])
    if code:
        raise SystemExit(code)

    def window(part: list[dict]) -> dict:
        wall = sum(r["wall"] for r in part)
        result = {
            "trials": f"{part[0]['trial']}-{part[-1]['trial']}",
            "trial_seconds": wall / len(part),
        }
        for kind in kinds:
            spent = sum(r.get(kind, 0.0) for r in part)
            result[f"{kind}_ms"] = spent / len(part) * 1000
            result[f"{kind}_share"] = spent / wall
        result["tracking_share"] = result["optuna_share"] + result["mlflow_share"]
        return result

    first = window(rows[: args.window])
    later = window(rows[-args.window :])
    median_wall = statistics.median(r["wall"] for r in rows)
    text = (
        f"Tracking overhead, {args.trials} trials of {args.epochs} epochs "
        f"(median trial {median_wall:.2f} s), SQLite stores:\n\n"
        "| trials | trial (s) | Optuna storage (ms) | MLflow (ms) | storage + "
        "MLflow share | report, besides its MLflow calls (ms) | report share "
        "| off the trial's path: heartbeat, async logging (ms) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {w['trials']} | {w['trial_seconds']:.2f} | {w['optuna_ms']:.0f} "
            f"| {w['mlflow_ms']:.0f} | {w['tracking_share'] * 100:.2f}% "
            f"| {w['report_ms']:.0f} | {w['report_share'] * 100:.2f}% "
            f"| {w['background_ms']:.0f} |\n"
            for w in (first, later)
        )
    )
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracking_overhead.md").write_text(text)
    (RESULTS / "tracking_overhead.json").write_text(
        json.dumps(
            {"epochs": args.epochs, "first": first, "last": later, "rows": rows},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
