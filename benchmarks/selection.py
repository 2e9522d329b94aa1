"""Benchmark: does the confirmation stage name a better champion than the search?

    .venv/bin/python -m benchmarks.selection [--seeds 42,1,2] [--eval-seeds 5]
        [--read SEED=FOLDER] [--out selection]
        [--n-trials N --stage KxS]  (another size of the default study)
        [--max-rate R]  (another top of its Adagrad range)
        [--ends-only]  (retrain the search best and the champion only)
        [--restage]  (run the stages of the studies --read again)

For each study seed, launches `studies/deep_retrieval.toml` (its search, then
its `[confirm]` stage) with that seed in a fresh `SWEEP_HOME` (sharing the data
cache), and times both. Then it retrains every finalist, on the same trainer
and `[training]`, with `--eval-seeds` fresh seeds that neither the search nor
the stage used: a finalist's mean over those is its "confirmed mean". The
search's best trial is the first finalist, so its confirmed mean is what the
sweep's answer was worth before the stage existed. `--ends-only` retrains only
those two (the ones the goals compare), so that more evaluation seeds fit in
the time: the first N of a stream of seeds are the same for every count, so a
larger `--eval-seeds` over a study read back extends the earlier figures.
`--restage` runs the stage of each study read back again, with this
checkout's code, in a copy of its folder (`sweep confirm` on the search as it
was): the search's minutes are the original run's, the stage's the new one's
(including the verb's start, which a launch pays once).

The champion the stage named, its reported mean (+- standard error), its
confirmed mean and the optimism between them, and the stage's minutes. (A
smaller plan cannot be read from a larger one's runs: a collapsed finalist's
replacement depends on the plan.)

Goals: the champion's confirmed mean at least the search best's for every study
seed; its reported figure within one standard error of its confirmed mean; its
confirmed mean at least 0.365 within 30 minutes of search and stage together.
Results go to `benchmarks/results/<--out>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import optuna

from sweep import confirm, data, keys, params, space, train
from sweep.backend import keras
from sweep.config import load_study

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent
STUDY = REPO / "studies" / "deep_retrieval.toml"
# Mixed into the study seed for the evaluation seeds: a stream apart from the
# search's and the stage's.
_EVAL_STREAM = 0x6576616C  # "eval"


def _launch(
    seed: int,
    data_home: Path,
    n_trials: int | None,
    stage: str | None,
    sampler: str | None = None,
    max_rate: float | None = None,
) -> tuple[Path, float, float]:
    """Runs the default study with `seed` to its end; its folder, start and end.

    `n_trials`, `stage` ("KxS": finalists x seeds), `sampler` and `max_rate`
    (the top of the Adagrad range) replace the study's own.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"sweep-selection-{seed}-"))
    home = folder / "home"
    home.mkdir()
    default = load_study(STUDY)
    text = STUDY.read_text().replace(
        f"seed = {default.study.seed}", f"seed = {seed}", 1
    )
    if n_trials:
        text = text.replace(
            f"n_trials = {default.study.n_trials}", f"n_trials = {n_trials}", 1
        )
    if sampler:
        text = text.replace(
            f'sampler = "{default.study.sampler}"', f'sampler = "{sampler}"', 1
        )
    if max_rate:
        rate = default.space["learning_rate"]
        old = f"learning_rate = {{ low = {rate.low}, high = {rate.high}"
        if old not in text:
            raise SystemExit(f"--max-rate: no {old!r} in {STUDY}")
        text = text.replace(
            old, f"learning_rate = {{ low = {rate.low}, high = {max_rate}"
        )
    if stage:
        finalists, seeds = stage.split("x")
        plan = default.confirm
        text = text.replace(f"finalists = {plan.finalists}", f"finalists = {finalists}")
        text = text.replace(f"seeds = {plan.seeds}", f"seeds = {seeds}")
    start, end = launch_text(home, text, data_home)
    return folder, start, end


def launch_text(home: Path, text: str, data_home: Path) -> tuple[float, float]:
    """`sweep launch` of the study file `text` in the sweep home `home`.

    The home shares `data_home`'s data cache; the study file
    (`deep_retrieval.toml`) and the output (`launch.log`) go beside the home.

    Returns:
        When the launch started and ended (`time.time()`).
    """
    for sub in ("cache", "downloads"):
        if (data_home / sub).exists() and not (home / sub).exists():
            (home / sub).symlink_to(data_home / sub)
    study_file = home.parent / "deep_retrieval.toml"
    study_file.write_text(text)
    return _sweep(home, "launch.log", "launch", str(study_file))


def _sweep(home: Path, log_name: str, *args: str) -> tuple[float, float]:
    """Runs `sweep ARGS` on the RecBole data in `home`, its output to `log_name`.

    Returns:
        When it started and ended (`time.time()`).
    """
    env = {**os.environ, "SWEEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    with open(home.parent / log_name, "w") as log:
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "sweep"), *args, "--data-source", "recbole"],
            env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    return start, time.time()


def _restage(folder: Path) -> tuple[Path, float, float]:
    """A copy of `folder` whose confirmation stage ran again from scratch.

    Returns:
        The copy, and when its `sweep confirm` started and ended.
    """
    copy = Path(tempfile.mkdtemp(prefix=f"{folder.name}-restage-"))
    # copy2 keeps the study file's time: the search's start (see `_one_seed`).
    shutil.copytree(folder, copy, symlinks=True, dirs_exist_ok=True)
    home = copy / "home"
    optuna.delete_study(
        study_name=confirm.companion_name("deep-retrieval"),
        storage=f"sqlite:///{home / 'optuna.db'}",
    )
    start, end = _sweep(home, "confirm.log", "confirm", "deep-retrieval")
    return copy, start, end


def _retrain(values: dict, seeds: list[int], features, training) -> list[float]:
    """One configuration's best val top-100 accuracy for each seed."""
    scores = []
    for seed in seeds:
        keras.backend.clear_session()
        config = train.TrainConfig(
            **{p.name: p.kind(values[p.name]) for p in params.SEARCHED},
            epochs=training.epochs,
            validation_freq=training.validation_freq,
            batch_size=training.batch_size,
            seed=seed,
        )
        scores.append(train.train(config, features).best.val_top100_accuracy)
    return scores


def _summary(scores: list[float]) -> dict:
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return {
        "scores": scores,
        "mean": statistics.fmean(scores),
        "std": std,
        "stderr": std / math.sqrt(len(scores)),
    }


def _seconds(trial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _one_seed(
    seed: int,
    eval_count: int,
    data_home: Path,
    features,
    n_trials: int | None,
    folder: Path | None,
    stage: str | None = None,
    sampler: str | None = None,
    ends_only: bool = False,
    restage: bool = False,
    max_rate: float | None = None,
) -> dict:
    """Runs (or reads) one study, then retrains its finalists with fresh seeds.

    Every finalist, or with `ends_only` the search's best and the champion (the
    others are listed with no confirmed figures). With `restage`, the stage of
    a study read back runs again in a copy of its folder (`_restage`).
    """
    stage_start = None
    if folder is None:
        print(f"study seed {seed}: launching the default study", flush=True)
        folder, start, end = _launch(
            seed, data_home, n_trials, stage, sampler, max_rate
        )
    else:
        start = (folder / "deep_retrieval.toml").stat().st_mtime
        end = None
        if restage:
            print(f"study seed {seed}: running the stage of {folder} again", flush=True)
            folder, stage_start, end = _restage(folder)
    url = f"sqlite:///{folder / 'home' / 'optuna.db'}"
    study = optuna.load_study(study_name="deep-retrieval", storage=url)
    companion = confirm.companion_of(study)
    trials = study.get_trials(deepcopy=False)
    runs = companion.get_trials(deepcopy=False)
    search_end = max(t.datetime_complete for t in trials).timestamp()
    if end is None:
        end = max(t.datetime_complete for t in runs).timestamp()
    plan = confirm.stored_plan(study)
    stage_seeds = confirm.confirmation_seeds(
        seed, plan.seeds, {space.trial_seed(seed, t.number) for t in trials}
    )
    taken = {space.trial_seed(seed, t.number) for t in trials} | set(stage_seeds)
    eval_seeds = confirm.fresh_seeds(seed, eval_count, taken, _EVAL_STREAM)
    training = load_study(folder / "deep_retrieval.toml").training
    finalists = []
    results = confirm.results(study, companion)
    best = confirm.champion(results)
    for f in results:
        skip = ends_only and f is not results[0] and f is not best
        if not skip:
            print(f"  retraining finalist {f.trial.number}", flush=True)
        by_seed = {r.user_attrs[keys.SEED_ATTR]: r for r in f.runs}
        # In the order of the stage's seeds; a collapsed finalist's later
        # seeds did not run.
        ran = [by_seed[s] for s in stage_seeds if s in by_seed]
        finalists.append(
            {
                "trial": f.trial.number,
                "params": f.trial.params,
                "search_value": f.trial.value,
                "stage": [r.value for r in ran],
                "stage_diverged": [
                    bool(r.user_attrs.get(keys.DIVERGED_ATTR)) for r in ran
                ],
                "stage_collapsed_at": [
                    r.user_attrs.get(keys.COLLAPSED_AT_ATTR) for r in ran
                ],
                "stage_seconds": [_seconds(r) for r in ran],
                "unstable": f.unstable,
                "confirmed": None
                if skip
                else _summary(_retrain(f.trial.params, eval_seeds, features, training)),
            }
        )
    return {
        "study_seed": seed,
        "folder": str(folder),
        "search_minutes": (search_end - start) / 60,
        "stage_minutes": (end - (stage_start or search_end)) / 60,
        "restaged": stage_start is not None,
        "trials": len(trials),
        "plan": plan.as_attr(),
        "stage_seeds": stage_seeds,
        "eval_seeds": eval_seeds,
        "finalists": finalists,
        "champion": None if best is None else best.trial.number,
    }


def _markdown(results: list[dict]) -> str:
    eval_count = len(results[0]["eval_seeds"])
    lines = [
        f"Confirmed mean: over {eval_count} fresh seeds that neither the search "
        "nor the stage used. Optimism: the reported figure minus the confirmed "
        "mean (the search's best reports its one value; the champion its mean "
        "over the stage's seeds).",
        "",
        "| study seed | search (min) | search best: trial | reported | confirmed "
        "mean +- std | optimism |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        raw = r["finalists"][0]
        confirmed = raw["confirmed"]
        lines.append(
            f"| {r['study_seed']} | {r['search_minutes']:.1f} | {raw['trial']} "
            f"({params.text(raw['params'])}) | {raw['search_value']:.4f} | "
            f"{confirmed['mean']:.4f} +- {confirmed['std']:.4f} | "
            f"{raw['search_value'] - confirmed['mean']:+.4f} |"
        )
    lines += [
        "",
        "| plan | study seed | finalists (unstable) | stage (min) | stage / search "
        "| champion: trial | reported mean +- se | confirmed mean +- std | "
        "optimism | >= search best | within 1 se | search + stage (min) |",
        "|---" * 12 + "|",
    ]
    for r in results:
        minutes = r["stage_minutes"]
        plan = r["plan"]
        row = [
            f"{plan['finalists']} x {plan['seeds']}",
            str(r["study_seed"]),
            " ".join(
                f"{f['trial']}{'*' if f['unstable'] else ''}" for f in r["finalists"]
            ),
            f"{minutes:.1f}" + (" (run again)" if r.get("restaged") else ""),
            f"{minutes / r['search_minutes']:.0%}",
        ]
        best = next((f for f in r["finalists"] if f["trial"] == r["champion"]), None)
        if best is None:
            row += ["none"] + ["-"] * 5
        else:
            reported = _summary(best["stage"])
            confirmed = best["confirmed"]
            raw = r["finalists"][0]["confirmed"]
            gap = reported["mean"] - confirmed["mean"]
            row += [
                f"{best['trial']} ({params.text(best['params'])})",
                f"{reported['mean']:.4f} +- {reported['stderr']:.4f}",
                f"{confirmed['mean']:.4f} +- {confirmed['std']:.4f}",
                f"{gap:+.4f}",
                "yes" if confirmed["mean"] >= raw["mean"] else "no",
                "yes" if abs(gap) <= confirmed["stderr"] else "no",
            ]
        row.append(f"{r['search_minutes'] + minutes:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Runs the default study per study seed, then retrains its finalists."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2", help="study seeds")
    parser.add_argument("--eval-seeds", type=int, default=5)
    parser.add_argument("--out", default="selection")
    parser.add_argument(
        "--n-trials", type=int, help="search trials (default: the study's own)"
    )
    parser.add_argument(
        "--read",
        action="append",
        default=[],
        metavar="SEED=FOLDER",
        help="read the study this script left in FOLDER instead of launching it",
    )
    parser.add_argument(
        "--stage", help="the study's [confirm] plan, KxS (default: the study's own)"
    )
    parser.add_argument("--sampler", help="the study's sampler (default: its own)")
    parser.add_argument(
        "--max-rate", type=float, help="the top of the study's Adagrad range"
    )
    parser.add_argument(
        "--restage",
        action="store_true",
        help="run the stage of each study given with --read again (in a copy)",
    )
    parser.add_argument(
        "--ends-only",
        action="store_true",
        help="retrain only the search's best and the champion with the eval seeds",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_home = Path(
        os.environ.get("SWEEP_BENCH_DATA_HOME", str(REPO / ".sweep-bench"))
    )
    read = {int(k): Path(v) for k, v in (spec.split("=") for spec in args.read)}
    features = data.load("recbole", home=data_home, log=print)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results.append(
            _one_seed(
                seed,
                args.eval_seeds,
                data_home,
                features,
                args.n_trials,
                read.get(seed),
                args.stage,
                args.sampler,
                args.ends_only,
                args.restage,
                args.max_rate,
            )
        )
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2))
        (RESULTS / f"{args.out}.md").write_text(_markdown(results))
        print(_markdown(results), flush=True)


if __name__ == "__main__":
    main()
