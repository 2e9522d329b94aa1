"""Benchmark: do parallel TPE workers propose the point another one is training?

    .venv/bin/python -m benchmarks.parallel_tpe [--seeds 1,2,3] [--trials 40]
        [--seconds 1.0] [--out parallel_tpe]

For 2 and 4 worker processes sharing one SQLite study over the default study's
`[space]`, with TPE's `constant_liar` off and on (the sweep's setting), counts
the trials proposed while a trial of the same architecture (depth, width,
embedding) and a learning rate within 10% of theirs was running: work spent
twice. Each worker has its own seeded TPE sampler, as `sweep` workers do.

The objective stands in for training: it sleeps `--seconds` and returns a
fixed smooth function of the params peaked near the default study's best
region, so that only the samplers' proposals differ between the arms (real
trainings on this 2-core machine would take hours for as many trials).
Results go to `benchmarks/results/<--out>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

from sweep import space
from sweep.config import load_study

RESULTS = Path(__file__).parent / "results"
STUDY = Path(__file__).parent.parent / "studies" / "deep_retrieval.toml"
NEAR = 0.10  # learning rates within 10% count as the same point


def _value(params: dict) -> float:
    """A smooth stand-in for val top-100 accuracy, best at (2, 64, 64, 0.25)."""
    return (
        0.37
        - 0.02 * (params["depth"] - 2) ** 2
        - 0.01 * abs(math.log2(params["width"] / 64))
        - 0.01 * abs(math.log2(params["embedding_dim"] / 64))
        - 0.05 * math.log10(params["learning_rate"] / 0.25) ** 2
    )


def _worker(url: str, worker: int, seed: int, liar: bool, trials: int, seconds: float):
    study_file = load_study(STUDY)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    worker_seed = int(np.random.SeedSequence([seed, 0, worker]).generate_state(1)[0])
    study = optuna.load_study(
        study_name="parallel",
        storage=url,
        sampler=optuna.samplers.TPESampler(seed=worker_seed, constant_liar=liar),
    )

    def objective(trial: optuna.Trial) -> float:
        space.suggest(trial, study_file)  # the sweep's own proposals
        time.sleep(seconds)
        return _value(trial.params)

    study.optimize(
        objective,
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=None)],
    )


def _duplicates(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials started while a trial of (nearly) the same point was running."""
    count = 0
    for t in trials:
        for other in trials:
            if other.number == t.number or other.datetime_start is None:
                continue
            running = other.datetime_start <= t.datetime_start and (
                other.datetime_complete is None
                or other.datetime_complete > t.datetime_start
            )
            same = all(
                t.params[k] == other.params[k]
                for k in ("depth", "width", "embedding_dim")
            ) and (
                abs(t.params["learning_rate"] / other.params["learning_rate"] - 1)
                < NEAR
            )
            if running and same:
                count += 1
                break
    return count


def _one(workers: int, seed: int, liar: bool, trials: int, seconds: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="sweep-parallel-tpe-"))
    url = f"sqlite:///{folder / 'optuna.db'}"
    optuna.create_study(study_name="parallel", storage=url, direction="maximize")
    procs = [
        multiprocessing.Process(
            target=_worker, args=(url, w, seed, liar, trials, seconds)
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    done = optuna.load_study(study_name="parallel", storage=url).get_trials()
    done = [t for t in done if t.state.name == "COMPLETE"]
    return {
        "workers": workers,
        "seed": seed,
        "constant_liar": liar,
        "trials": len(done),
        "duplicates": _duplicates(done),
        "best": max(t.value for t in done),
    }


def _markdown(rows: list[dict], seconds: float) -> str:
    lines = [
        f"Trials of {seconds:g} s (a stand-in objective); a duplicate is a trial "
        "started while one of the same architecture and a learning rate within "
        f"{NEAR:.0%} was running. Mean over the seeds (min-max).",
        "",
        "| workers | constant_liar | trials | duplicates | best (stand-in) |",
        "|---|---|---|---|---|",
    ]
    for workers in sorted({r["workers"] for r in rows}):
        for liar in (False, True):
            arm = [
                r
                for r in rows
                if r["workers"] == workers and r["constant_liar"] == liar
            ]
            dups = [r["duplicates"] for r in arm]
            lines.append(
                f"| {workers} | {'on' if liar else 'off'} | "
                f"{statistics.fmean(r['trials'] for r in arm):.0f} | "
                f"{statistics.fmean(dups):.1f} ({min(dups)}-{max(dups)}) | "
                f"{statistics.fmean(r['best'] for r in arm):.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Runs every arm over every seed and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", default="parallel_tpe")
    args = parser.parse_args()
    rows = []
    for workers in (2, 4):
        for seed in (int(s) for s in args.seeds.split(",")):
            for liar in (False, True):
                rows.append(_one(workers, seed, liar, args.trials, args.seconds))
                print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / f"{args.out}.md").write_text(_markdown(rows, args.seconds))
    print(_markdown(rows, args.seconds))


if __name__ == "__main__":
    main()
