"""Benchmark: does a warm-started study reach an earlier study's best sooner?

    .venv/bin/python -m benchmarks.warm_start --source-home HOME [--seeds 7]
        [--trials 40] [--arms cold,warm] [--out warm_start]

HOME holds a finished run of the default study (`deep-retrieval`, e.g. a
home `benchmarks.selection` left). For each seed, the default study (its
search only: no `[confirm]`) is launched twice with that seed and `--trials`
trials: cold, in a fresh home, and warm, in a copy of HOME with
`[study] warm_start = ["deep-retrieval"]` (under another name). Counted for
each: the new trials it ran until one reached the source study's best value
(or none did), and its best new value after 10, 20 and all trials.
`--arms warm` (or `cold`) runs one arm only.
`--target champion` counts until the source's confirmed champion mean (what
`sweep best` reports once the confirmation stage has run) instead of its raw
best trial value, which is the top of one lucky seed.
`--extend RESULT` instead continues the runs of an earlier result
(`benchmarks/results/RESULT.json`, whose folders must still exist) with
`sweep resume` until each holds `--trials` new trials; `--reread RESULT`
only counts that result's runs again (against `--target`).
Results go to `benchmarks/results/<--out>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from benchmarks.selection import launch_text
from benchmarks.study_text import with_study_key
from sweep import confirm, keys

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent
STUDY = REPO / "studies" / "deep_retrieval.toml"
SOURCE = "deep-retrieval"


def _study_text(seed: int, trials: int, warm: bool) -> str:
    text = STUDY.read_text().split("\n# After the search")[0].split("\n[confirm]")[0]
    text = text.replace("seed = 42", f"seed = {seed}", 1)
    text = text.replace("n_trials = 40", f"n_trials = {trials}", 1)
    name = "warm" if warm else "cold"
    text = text.replace(f'name = "{SOURCE}"', f'name = "{name}"', 1)
    if warm:
        text = with_study_key(text, f'warm_start = ["{SOURCE}"]')
    return text


def _curve(home: Path, name: str, target: float) -> dict:
    """The new trials' running best, and when it first reached `target`."""
    url = f"sqlite:///{home / 'optuna.db'}"
    study = optuna.load_study(study_name=name, storage=url)
    new = [
        t
        for t in study.get_trials(deepcopy=False)
        if keys.IMPORTED_FROM_ATTR not in t.user_attrs
    ]
    best, running, reached = None, [], None
    for count, trial in enumerate(new, 1):
        if trial.state == TrialState.COMPLETE:
            best = trial.value if best is None else max(best, trial.value)
        running.append(best)
        if reached is None and best is not None and best >= target:
            reached = count
    return {
        "new_trials": len(new),
        "imported": study.user_attrs.get(keys.IMPORTED_ATTR, 0),
        "reached_after": reached,
        "best_after": {
            n: running[n - 1] for n in (10, 20, 40, len(new)) if n <= len(new)
        },
    }


def _name(run: dict) -> str:
    return "warm" if run["warm"] else "cold"


def _target(source: optuna.Study, kind: str) -> float:
    """The source's raw best value, or its confirmed champion's mean."""
    if kind == "best":
        complete = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return max(t.value for t in complete)
    best = confirm.champion(confirm.study_results(source))
    if best is None:
        raise SystemExit("the source study has no confirmed champion")
    return best.mean


def _extend(run: dict, trials: int, target: float) -> dict:
    """Continues one earlier run's study to `trials` new trials; its new row."""
    home = Path(run["folder"]) / "home"
    name = _name(run)
    env = {**os.environ, "SWEEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"seed {run['seed']}: {name} continued in {run['folder']}", flush=True)
    start = time.time()
    with open(home.parent / "resume.log", "w") as log:
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "sweep"), "resume", name,
             "--n-trials", str(trials), "--data-source", "recbole"],
            env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    minutes = run["minutes"] + (time.time() - start) / 60
    row = {**run, "minutes": minutes, **_curve(home, name, target)}
    print(row, flush=True)
    return row


def _launch(
    seed: int, warm: bool, args: argparse.Namespace, target: float, data_home: Path
) -> dict:
    """Launches one arm (cold, or warm from a copy of the source); its row."""
    folder = Path(tempfile.mkdtemp(prefix=f"sweep-warm-{seed}-"))
    home = folder / "home"
    home.mkdir()
    if warm:
        for name in ("optuna.db", "mlflow.db"):
            # SQLite's backup: the copy holds what the WAL has too.
            with (
                sqlite3.connect(args.source_home / name) as src,
                sqlite3.connect(home / name) as dst,
            ):
                src.backup(dst)
    print(f"seed {seed}: {'warm' if warm else 'cold'} in {folder}", flush=True)
    start, end = launch_text(home, _study_text(seed, args.trials, warm), data_home)
    row = {
        "seed": seed,
        "warm": warm,
        "minutes": (end - start) / 60,
        "folder": str(folder),
        **_curve(home, "warm" if warm else "cold", target),
    }
    print(row, flush=True)
    return row


def main() -> None:
    """Runs the cold and warm studies per seed and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-home", type=Path, required=True)
    parser.add_argument("--seeds", default="7")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--arms", default="cold,warm")
    parser.add_argument("--out", default="warm_start")
    parser.add_argument("--extend", help="an earlier result's name to continue")
    parser.add_argument("--reread", help="an earlier result's name to count again")
    parser.add_argument("--target", choices=("best", "champion"), default="best")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_home = Path(
        os.environ.get("SWEEP_BENCH_DATA_HOME", str(REPO / ".sweep-bench"))
    )
    source = optuna.load_study(
        study_name=SOURCE, storage=f"sqlite:///{args.source_home / 'optuna.db'}"
    )
    target = _target(source, args.target)
    if args.reread:
        earlier = json.loads((RESULTS / f"{args.reread}.json").read_text())
        rows = [
            {**run, **_curve(Path(run["folder"]) / "home", _name(run), target)}
            for run in earlier["runs"]
        ]
    elif args.extend:
        earlier = json.loads((RESULTS / f"{args.extend}.json").read_text())
        rows = [_extend(run, args.trials, target) for run in earlier["runs"]]
    else:
        rows = [
            _launch(int(seed), arm == "warm", args, target, data_home)
            for seed in args.seeds.split(",")
            for arm in args.arms.split(",")
        ]
    RESULTS.mkdir(exist_ok=True)
    result = {
        "source_best": target,
        "target": args.target,
        "source_trials": len(source.trials),
        "runs": rows,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{args.out}.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(result: dict) -> str:
    what = (
        "confirmed champion's mean"
        if result.get("target") == "champion"
        else "best trial value"
    )
    lines = [
        f"Source: the default study, {result['source_trials']} trials, {what} "
        f"{result['source_best']:.4f}. New trials until one reached it; the best "
        "new value after 10, 20, 40 and all new trials.",
        "",
        "| seed | start | imported | new trials | reached it after | "
        "best @10 | best @20 | best @40 | best @all | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        after = r["best_after"]

        def shown(n, after=after):
            value = after.get(str(n), after.get(n))
            return f"{value:.4f}" if value is not None else "-"

        lines.append(
            f"| {r['seed']} | {'warm' if r['warm'] else 'cold'} | {r['imported']} | "
            f"{r['new_trials']} | {r['reached_after'] or 'not reached'} | "
            f"{shown(10)} | {shown(20)} | {shown(40)} | {shown(r['new_trials'])} | "
            f"{r['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
