"""Benchmark 1: trial speed, the reference pipeline against the project's trainer.

    .venv/bin/python -m benchmarks.trial_speed [--epochs 30] [--trials 4]

Runs, one after the other in fresh processes on the same machine:

- reference: the reference pipeline re-created as its code does it
  (`benchmarks.reference_pipeline`): a fresh process prepares the data and
  trains the reference configuration (cold), then trains it again on the same,
  now cached, datasets (warm: what KerasTuner or a hand-written Optuna loop
  gets). Then, in the same process, the array-fed figure: the same model
  fitted from the training set held as in-memory arrays, training only (the
  floor the trainer's step is held to, measured in the same run rather than
  taken as a fixed figure, because a machine's speed varies from day to day).
- sweep, compilation cache empty: a fresh process loads the data cache and
  trains the reference configuration as a worker does (`train.train` after
  `keras.backend.clear_session()`), `--trials` times.
- sweep, compilation cache warm: the same again, in a new process, with JAX's
  persistent compilation cache left by the previous run (a worker's usual
  start).

For each: the process's wall time to the end of its first trial (cold), each
later trial's wall time (steady state: their mean), seconds per epoch of
training, per gradient step and per validation (medians), the time from process
start to the first training step, and the final val top-100 accuracy. Each
trial of a process is seeded apart (42, 43, ...: weights and, for the sweep,
data order), and the accuracy is their mean: on one split, the reference
configuration's final accuracy moves by more than 0.01 from seed to seed, so
one seed against another cannot tell whether the two pipelines train the same
model. The trial-speed targets are checked and the table is written to
`benchmarks/results/trial_speed.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent
STEPS_PER_EPOCH = 80  # 80,000 training ratings in steps of 1,000


def _child(kind: str, trials: int, epochs: int) -> None:
    """Runs in the measured process; prints one JSON line per trial."""
    started = float(os.environ["BENCH_STARTED"])
    from benchmarks.timing import FitTiming
    from sweep import data, train
    from sweep.backend import keras
    from sweep.home import Home

    if kind == "reference":
        from benchmarks import reference_pipeline
        from sweep import movielens

        home = Home.from_environment()
        source = movielens.resolve_source("recbole", home.downloads)
        ratings, movies = reference_pipeline.datasets(source.read())
        pipeline = reference_pipeline.Pipeline(ratings, movies)
        prep = time.time() - started
    else:
        features = data.load("recbole", log=lambda line: None)
        Home.from_environment().use_compilation_cache()
        prep = time.time() - started
    for trial in range(trials):
        config = train.TrainConfig(epochs=epochs, seed=42 + trial)
        begin = time.perf_counter()
        if kind == "reference":
            timing = FitTiming(STEPS_PER_EPOCH, STEPS_PER_EPOCH, started)
            # Weights only: the reference seeds its own shuffle and split.
            keras.utils.set_random_seed(config.seed)
            model = pipeline.model()
            model.compile(optimizer=keras.optimizers.Adagrad(config.learning_rate))
            history = model.fit(
                pipeline.train,
                validation_data=pipeline.test,
                validation_freq=config.validation_freq,
                epochs=config.epochs,
                callbacks=[timing],
                verbose=0,
            )
            accuracy = history.history["val_sparse_top_k_categorical_accuracy"][-1]
        else:
            timing = FitTiming(1, STEPS_PER_EPOCH, started)
            keras.backend.clear_session()
            result = train.train(config, features, callbacks=[timing])
            accuracy = result.validations[-1].val_top100_accuracy
        seconds = time.perf_counter() - begin
        line = {
            "trial": trial + 1,
            "trial_seconds": seconds,
            "process_seconds": time.time() - started,
            "prep_seconds": prep,
            "final_val_top100_accuracy": accuracy,
            **timing.summary(),
        }
        print("BENCH " + json.dumps(line), flush=True)
    if kind == "reference":
        print("ARRAYS " + json.dumps(_array_fed(pipeline, config)), flush=True)


def _array_fed(pipeline, config) -> dict:
    """The reference model's step when `fit` is fed in-memory arrays."""
    from benchmarks.timing import FitTiming
    from sweep.backend import keras

    batches = list(pipeline.train.as_numpy_iterator())
    x = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    y = np.concatenate([b[1] for b in batches])
    model = pipeline.model()
    model.compile(optimizer=keras.optimizers.Adagrad(config.learning_rate))
    timing = FitTiming(STEPS_PER_EPOCH, STEPS_PER_EPOCH, None)
    model.fit(
        x,
        y,
        batch_size=1000,
        epochs=config.epochs,
        shuffle=False,
        callbacks=[timing],
        verbose=0,
    )
    return timing.summary()


def _run(kind: str, trials: int, epochs: int, env: dict) -> list[dict]:
    env = {**env, "BENCH_STARTED": repr(time.time())}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.trial_speed", "--child", kind]
        + ["--trials", str(trials), "--epochs", str(epochs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    lines = [
        json.loads(line[6:])
        for line in proc.stdout.splitlines()
        if line.startswith("BENCH ")
    ]
    for line in proc.stdout.splitlines():
        if line.startswith("ARRAYS "):
            lines[0]["array_fed"] = json.loads(line[7:])
    for line in lines:
        print(
            f"  {kind} trial {line['trial']}: {line['trial_seconds']:.2f} s", flush=True
        )
    return lines


def _summary(name: str, lines: list[dict]) -> dict:
    first, later = lines[0], lines[1:]
    accuracies = [line["final_val_top100_accuracy"] for line in lines]
    steady = later[-1] if later else first
    return {
        "name": name,
        "cold_process_seconds": first["process_seconds"],
        "prep_seconds": first["prep_seconds"],
        "first_step_after_start_seconds": first["first_step_after_start_seconds"],
        "steady_trial_seconds": (
            sum(line["trial_seconds"] for line in later) / len(later) if later else None
        ),
        "epoch_seconds": steady["epoch_seconds"],
        "step_ms": steady["step_ms"],
        "validation_seconds": steady["validation_seconds"],
        "array_fed_step_ms": first.get("array_fed", {}).get("step_ms"),
        # The mean over the process's trials, each seeded apart.
        "final_val_top100_accuracy": sum(accuracies) / len(accuracies),
        "final_val_top100_range": [min(accuracies), max(accuracies)],
    }


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows: list[dict]) -> str:
    head = (
        "| pipeline | cold process to end of trial 1 (s) | start to first step (s) "
        "| steady trial (s) | epoch (s) | step (ms) | validation (s) "
        "| final val top-100, mean of seeds (range) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['name']} | {_fmt(r['cold_process_seconds'], 1)} "
        f"| {_fmt(r['first_step_after_start_seconds'])} "
        f"| {_fmt(r['steady_trial_seconds'])} | {_fmt(r['epoch_seconds'], 3)} "
        f"| {_fmt(r['step_ms'])} | {_fmt(r['validation_seconds'], 3)} "
        f"| {_fmt(r['final_val_top100_accuracy'], 4)} "
        f"({_fmt(r['final_val_top100_range'][0], 4)}-"
        f"{_fmt(r['final_val_top100_range'][1], 4)}) |\n"
        for r in rows
    )


def _targets(reference: dict, cold: dict, warm: dict) -> list[tuple[str, bool, str]]:
    checks = []
    ratio = reference["cold_process_seconds"] / warm["cold_process_seconds"]
    gap = abs(
        reference["final_val_top100_accuracy"] - warm["final_val_top100_accuracy"]
    )
    checks.append(
        (
            "cold trial >= 5x faster than the reference's whole process, accuracy "
            "within 0.01 (means over seeds)",
            ratio >= 5 and gap <= 0.01,
            f"{ratio:.1f}x, accuracy gap {gap:.4f}",
        )
    )
    steady = reference["steady_trial_seconds"] / warm["steady_trial_seconds"]
    checks.append(
        (
            "steady trial >= 2x faster than the reference kept warm",
            steady >= 2,
            f"{steady:.1f}x ({warm['steady_trial_seconds']:.2f} s vs "
            f"{reference['steady_trial_seconds']:.2f} s)",
        )
    )
    floor = reference["array_fed_step_ms"]
    checks.append(
        (
            "training step <= 1.5 x the array-fed step measured in this run",
            warm["step_ms"] <= 1.5 * floor,
            f"{warm['step_ms']:.2f} ms against {floor:.2f} ms: "
            f"{warm['step_ms'] / floor:.2f}x",
        )
    )
    checks.append(
        (
            "training step <= 1.65 ms (1.5 x a fixed 1.1 ms array-fed step)",
            warm["step_ms"] <= 1.65,
            f"{warm['step_ms']:.2f} ms",
        )
    )
    checks.append(
        (
            "validation <= 0.2 s warm",
            warm["validation_seconds"] <= 0.2,
            f"{warm['validation_seconds']:.3f} s",
        )
    )
    checks.append(
        (
            "process start to first step <= 3 s warm",
            warm["first_step_after_start_seconds"] <= 3,
            f"{warm['first_step_after_start_seconds']:.2f} s",
        )
    )
    return checks


def main() -> None:
    """Runs the three measurements and writes the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--child", choices=("reference", "sweep"))
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.trials, args.epochs)
        return
    env = dict(os.environ)
    home = Path(env.setdefault("SWEEP_HOME", str(REPO / ".sweep-bench")))
    with tempfile.TemporaryDirectory() as cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        print("preparing the data cache", flush=True)
        subprocess.run(
            [sys.executable, "-c", "from sweep import data; data.load('recbole')"],
            cwd=REPO,
            env=env,
            check=True,
        )
        print("reference pipeline (cold, then warm)", flush=True)
        reference = _run("reference", 2, args.epochs, env)
        print("sweep, compilation cache empty", flush=True)
        cold = _run("sweep", args.trials, args.epochs, env)
        print("sweep, compilation cache warm", flush=True)
        warm = _run("sweep", args.trials, args.epochs, env)
    rows = [
        _summary("reference pipeline (tf.data + FeatureSpace map)", reference),
        _summary("sweep, compilation cache empty", cold),
        _summary("sweep, compilation cache warm", warm),
    ]
    checks = _targets(rows[0], rows[1], rows[2])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    text = (
        f"Trial speed, reference configuration, {args.epochs} epochs, on {machine} "
        f"(home {home}):\n\n{_table(rows)}\n"
        + "".join(
            f"- [{'x' if ok else ' '}] {what}: {got}\n" for what, ok, got in checks
        )
    )
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trial_speed.md").write_text(text)
    (RESULTS / "trial_speed.json").write_text(
        json.dumps(
            {
                "epochs": args.epochs,
                "machine": machine,
                "rows": rows,
                "runs": {"reference": reference, "cold": cold, "warm": warm},
                "targets": [
                    {"target": what, "met": ok, "measured": got}
                    for what, ok, got in checks
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
