"""Benchmark 3: sweep speed on the default study, pruner on and off, 1 and 2 workers.

    .venv/bin/python -m benchmarks.sweep_speed [--minutes 30] [--runs on:1:30,off:2]
        [--seeds 1,2,3 --out sweep_speed_seeds]
        [--samplers tpe,tpe-multivariate,cmaes,qmc --out sweep_samplers]
        [--read PRUNER:WORKERS:MINUTES=FOLDER] [--add RESULT]

Each run launches `studies/deep_retrieval.toml` (its baselines first, then TPE)
with a fresh study in its own `SWEEP_HOME` (sharing the data cache; each run
starts with an empty compilation cache, as a first sweep does), with the
study's own pruner (`on`), none (`off`) or another one named in
the run (`hyperband:1:5`), 1 or 2 workers, lets it run for `--minutes` (or the
minutes a run names after its workers), stops it with Ctrl-C (SIGINT), and reads
the study back from its Optuna storage: the best-so-far val top-100 accuracy
against wall time since the launch, the time until a trial first beats 0.33
(and 0.365: with the study's seed the baselines alone pass 0.33), and the best
reached at 5, 10, 20 and 30 minutes, beside the KerasTuner Hyperband run on the
reference pipeline (0.352, 0.364, 0.3655, 0.3716); and, for each pruned run,
pruning's speed-up to each mark against the 2x target, set against the run
without a pruner that has the same workers and seed, with the trial that first
passed it. A third mark is the run's own best baseline: the time until the
search finds a trial better than all of the reference's configurations, which
is what 0.33 was on the reference's split (its baselines ended at 0.3216,
0.2964 and 0.3072).

`--seeds` runs every run once per study seed in place of the study's own, so
that pruning's speed-up is not read off one sequence of trials; `--samplers`
runs every run once per sampler (and seed) in place of the study's, and adds
each sampler's mean best at each mark over the seeds, with the seeds on which
it beat the study's own sampler. The seed steers
the sampler and each trial's weights and batch order (the baselines' results
change with it), not the data split. `--read` reads a run left on disk instead
of launching it (`--runs ""` then only reads); `--add RESULT` takes the runs
of an earlier result file, so that runs made apart (e.g. each arm pinned to
one core) are written as one comparison. Results go to
`benchmarks/results/<--out>.{json,md,png}` (`sweep_speed` by default).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import optuna

from benchmarks.study_text import with_pruner
from sweep import data
from sweep.config import load_study
from sweep.space import make_pruner

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).parent.parent
STUDY = REPO / "studies" / "deep_retrieval.toml"
THRESHOLD = 0.33
# The default study's baselines (the reference's configurations, run first and
# never pruned early) already pass 0.33, so a higher mark tells pruning apart.
HIGHER = 0.365
MARKS = (5, 10, 20, 30)
# The default study's trials no pruning can shorten: its baselines (run
# first), and the median pruner's startup trials (which include them).
_DEFAULT = load_study(STUDY)
BASELINES = len(_DEFAULT.baselines)
PRUNER_STARTUP = make_pruner(_DEFAULT.study, _DEFAULT.training)._n_startup_trials
# The KerasTuner Hyperband run on the reference pipeline (179 trials in 30
# minutes): its best val top-100 accuracy at each mark, in minutes.
KERAS_TUNER = {5: 0.352, 10: 0.364, 20: 0.3655, 30: 0.3716}
TUNER_LABEL = "KerasTuner Hyperband (reference pipeline)"


def _launch(
    folder: Path,
    pruner: str,
    workers: int,
    minutes: float,
    seed: int | None,
    sampler: str | None,
    data_home: Path,
) -> float:
    """Runs the sweep for `minutes`, then stops it as a user would; its start."""
    home = folder / "home"
    home.mkdir()
    for sub in ("cache", "downloads"):
        if (data_home / sub).exists():
            (home / sub).symlink_to(data_home / sub)
    text = STUDY.read_text()
    text = text.replace("n_trials = 40", "n_trials = 10000")
    if pruner != "on":
        chosen = "none" if pruner == "off" else pruner
        text = with_pruner(text, chosen)
    if seed is not None:
        text = text.replace(f"seed = {_DEFAULT.study.seed}", f"seed = {seed}")
    if sampler is not None:
        text = text.replace(
            f'sampler = "{_DEFAULT.study.sampler}"', f'sampler = "{sampler}"'
        )
    study_file = folder / "deep_retrieval.toml"
    study_file.write_text(text)
    env = {**os.environ, "SWEEP_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = REPO / ".venv" / "bin" / "sweep"
    start = time.time()
    with open(folder / "launch.log", "w") as log:
        proc = subprocess.Popen(
            [str(sweep), "launch", str(study_file), "--workers", str(workers)]
            + ["--data-source", "recbole"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            # Ctrl-C; a second one if the first went unanswered, then a kill.
            for stop in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
                proc.send_signal(stop)
                try:
                    proc.wait(timeout=120)
                    break
                except subprocess.TimeoutExpired:
                    print(f"  no exit {120} s after {stop.name}", flush=True)
    return start


def _read(folder: Path, start: float, pruner: str, workers: int, minutes: float):
    """The run's figures, read back from its Optuna storage."""
    settings = load_study(folder / "deep_retrieval.toml").study
    seed = settings.seed
    study = optuna.load_study(
        study_name="deep-retrieval",
        storage=f"sqlite:///{folder / 'home' / 'optuna.db'}",
    )
    finished = sorted(
        (t for t in study.trials if t.datetime_complete and t.value is not None),
        key=lambda t: t.datetime_complete,
    )
    # Only what finished within the run's minutes (a run stopped late counts
    # no more than that).
    in_time = [
        t for t in finished if t.datetime_complete.timestamp() - start <= minutes * 60
    ]
    baselines = [t.value for t in in_time if t.number < BASELINES]
    marks = {"0.33": THRESHOLD, str(HIGHER): HIGHER}
    if len(baselines) == BASELINES:
        marks["baselines"] = max(baselines)
    curve, best = [], None  # (seconds, best so far, the trial that set it)
    for t in in_time:
        if best is None or t.value > best:
            best = t.value
            curve.append((t.datetime_complete.timestamp() - start, best, t.number))
    passed = {name: _first_past(curve, mark) for name, mark in marks.items()}
    at = {
        m: max((v for s, v, _ in curve if s <= m * 60), default=None)
        for m in MARKS
        if m <= minutes
    }
    states = {}
    for t in study.trials:
        ended = t.datetime_complete
        if ended is not None and ended.timestamp() - start > minutes * 60:
            continue
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "sampler": settings.sampler,
        "pruner": pruner,
        "workers": workers,
        "minutes": minutes,
        "seed": seed,
        "trials": states,
        "best_baseline": marks.get("baselines"),
        **{f"seconds_to_beat_{name}": at for name, (at, _) in passed.items()},
        **{f"trial_to_beat_{name}": trial for name, (_, trial) in passed.items()},
        "best_at_minutes": at,
        "best": best,
        "curve": curve,
        # Every finished trial's value in completion order: the best within a
        # number of trials, which the machine's speed does not move.
        "values": [t.value for t in in_time],
    }


def _fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    """Runs the sweeps one after the other and writes the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--runs", default="on:1,off:1,on:2,off:2")
    parser.add_argument(
        "--seeds",
        default="",
        help="sampler seeds (e.g. 1,2,3): every run once per seed, in place of "
        "the study's own",
    )
    parser.add_argument(
        "--samplers",
        default="",
        help="samplers (e.g. tpe,tpe-multivariate,cmaes,qmc): every run once per "
        "sampler and seed, in place of the study's own",
    )
    parser.add_argument(
        "--out", default="sweep_speed", help="results file name, without suffix"
    )
    parser.add_argument(
        "--read",
        action="append",
        default=[],
        metavar="PRUNER:WORKERS:MINUTES=FOLDER",
        help="read a run this script left in FOLDER (e.g. one stopped by hand) "
        "instead of launching it again; its start is its study file's time",
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="RESULT",
        help="take the runs of benchmarks/results/RESULT.json into this comparison",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_home = Path(
        os.environ.get("SWEEP_BENCH_DATA_HOME", str(REPO / ".sweep-bench"))
    )
    if args.runs:
        # The data cache every run's home links to, built before any clock.
        data.load("recbole", home=data_home, log=print)
    runs = []
    for name in args.add:
        for run in json.loads((RESULTS / f"{name}.json").read_text()):
            # JSON keeps the minute marks as strings.
            marks = run["best_at_minutes"].items()
            run["best_at_minutes"] = {int(m): best for m, best in marks}
            runs.append(run)
    for spec in args.read:
        spec, folder = spec.split("=")
        pruner, workers, minutes = spec.split(":")
        start = (Path(folder) / "deep_retrieval.toml").stat().st_mtime
        runs.append(_read(Path(folder), start, pruner, int(workers), float(minutes)))
    seeds = [int(s) for s in filter(None, args.seeds.split(","))] or [None]
    samplers = list(filter(None, args.samplers.split(","))) or [None]
    # Seed by seed, so that a run cut short still compares whole seeds; the
    # results are written after every run.
    for seed in seeds:
        for sampler in samplers:
            for spec in filter(None, args.runs.split(",")):
                pruner, workers, *minutes = spec.split(":")
                minutes = float(minutes[0]) if minutes else args.minutes
                print(
                    f"sampler {sampler or 'study'}, seed {seed or 'study'}, pruner "
                    f"{pruner}, {workers} worker(s), {minutes} min",
                    flush=True,
                )
                folder = Path(
                    tempfile.mkdtemp(prefix=f"sweep-speed-{pruner}-{workers}-")
                )
                start = _launch(
                    folder, pruner, int(workers), minutes, seed, sampler, data_home
                )
                result = _read(folder, start, pruner, int(workers), minutes)
                print(json.dumps({k: v for k, v in result.items() if k != "curve"}))
                runs.append(result)
                _write(runs, args.out)
    _write(runs, args.out)
    print("\n" + (RESULTS / f"{args.out}.md").read_text())


def _write(runs: list[dict], out: str) -> None:
    """The table, the pruning and sampler comparisons, the JSON and the plot."""
    marks = [m for m in MARKS if any(m <= r["minutes"] for r in runs)]
    head = (
        "| sampler | pruner | workers | seed | minutes "
        "| trials (complete/pruned/failed) "
        f"| to beat 0.33 (s) | to beat {HIGHER} (s) | to beat the baselines (s) | "
        + " | ".join(f"best at {m} min" for m in marks)
        + " |\n|"
        + "---|" * (9 + len(marks))
        + "\n"
    )
    rows = "".join(
        f"| {r.get('sampler', _DEFAULT.study.sampler)} "
        f"| {r['pruner']} | {r['workers']} | {r['seed']} | {r['minutes']:g} "
        f"| {r['trials'].get('COMPLETE', 0)}/"
        f"{r['trials'].get('PRUNED', 0)}/{r['trials'].get('FAIL', 0)} "
        f"| {_fmt(r['seconds_to_beat_0.33'], 0)} "
        f"| {_fmt(r[f'seconds_to_beat_{HIGHER}'], 0)} "
        f"| {_fmt(r.get('seconds_to_beat_baselines'), 0)} | "
        + " | ".join(_fmt(r["best_at_minutes"].get(m)) for m in marks)
        + " |\n"
        for r in runs
    )
    tuner = (
        f"| {TUNER_LABEL} | - | 1 | - | 30 | 179 | - | - | - | "
        + " | ".join(_fmt(KERAS_TUNER[m]) for m in marks)
        + " |\n"
    )
    text = (
        "Sweep speed, studies/deep_retrieval.toml (a best-at mark past a run's "
        "minutes is -):\n\n"
        + head
        + rows
        + tuner
        + _pruning(runs)
        + _samplers(runs, marks)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{out}.md").write_text(text)
    (RESULTS / f"{out}.json").write_text(json.dumps(runs, indent=2))
    _plot(runs, RESULTS / f"{out}.png")


def _samplers(runs: list[dict], marks: list[int]) -> str:
    """Each sampler's best at each mark, set against the study's own sampler.

    Runs are grouped by workers; within a group, a sampler run with another
    pruner than the study's (`gp` needs none) is its own arm, set against the
    study's sampler with the study's pruner, as a user would choose between
    them. A mark is minutes since launch, or each seed's first N finished
    trials (N the fewest any arm finished on that seed), which a slower or
    shared machine does not move. An arm's mean is over the seeds where every
    arm of the group reached the mark.
    """
    own = _DEFAULT.study.sampler

    def arm(run: dict) -> str:
        sampler = run.get("sampler", own)
        return (
            sampler if run["pruner"] == "on" else f"{sampler}, pruner {run['pruner']}"
        )

    lines = []
    for workers in sorted({r["workers"] for r in runs}):
        group = [r for r in runs if r["workers"] == workers]
        if len({r.get("sampler", own) for r in group}) < 2:
            continue  # pruners compared, not samplers: see _pruning
        names = sorted({arm(r) for r in group})
        if own not in names:
            continue
        seeds = sorted({r["seed"] for r in group})
        fewest = {
            seed: min(len(r.get("values", [])) for r in group if r["seed"] == seed)
            for seed in seeds
        }
        for mark in [*marks, "trials"]:
            table = {(arm(r), r["seed"]): _figure(r, mark, fewest) for r in group}
            full = [
                seed
                for seed in seeds
                if all(table.get((name, seed)) is not None for name in names)
            ]
            if not full:
                continue
            label = (
                f"{mark} min"
                if mark != "trials"
                else f"first {'/'.join(str(fewest[s]) for s in full)} trials"
            )
            for name in names:
                values = [table[(name, seed)] for seed in full]
                wins = sum(table[(name, seed)] > table[(own, seed)] for seed in full)
                lines.append(
                    f"| {workers} | {label} | {name} | {len(full)} "
                    f"| {sum(values) / len(values):.4f} | {min(values):.4f} "
                    f"| {max(values):.4f} | {'-' if name == own else wins} |\n"
                )
    if not lines:
        return ""
    return (
        "\nSamplers: the best val top-100 accuracy at each mark (minutes since "
        "launch, or within each seed's first N finished trials, seed by seed), "
        "over the seeds where every sampler of the row's workers reached it (with "
        f"the median pruner unless named); beats {own}: on how many of them the "
        f"sampler's best is above {own}'s:\n\n"
        "| workers | mark | sampler | seeds | mean best | min | max "
        f"| beats {own} |\n|---|---|---|---|---|---|---|---|\n" + "".join(lines)
    )


def _figure(run: dict, mark, fewest: dict) -> float | None:
    """A run's best at `mark` minutes, or within its seed's `fewest` trials."""
    if mark == "trials":
        return max(run.get("values", [])[: fewest[run["seed"]]], default=None)
    return run["best_at_minutes"].get(mark)


def _pruning(runs: list[dict]) -> str:
    """The pruning target (at least 2x less time to 0.33), per pair of runs.

    Each pruned run is set against the run without a pruner that has the same
    workers, seed and sampler, on the same marks: 0.33, 0.365 and the best of
    the unpruned run's baselines (a pruner may cut a baseline short).
    """
    own = _DEFAULT.study.sampler
    lines = []

    def key(run: dict) -> tuple:
        return run["workers"], run["seed"], run.get("sampler", own)

    for workers, seed, sampler in sorted({key(r) for r in runs}):
        pair = [r for r in runs if key(r) == (workers, seed, sampler)]
        named = "" if sampler == own else f", {sampler}"
        off = next((r for r in pair if r["pruner"] == "off"), None)
        if off is None:
            continue
        marks = {str(THRESHOLD): THRESHOLD, str(HIGHER): HIGHER}
        if off["best_baseline"] is not None:
            marks[f"the best baseline ({off['best_baseline']:.4f})"] = off[
                "best_baseline"
            ]
        for on in (r for r in pair if r["pruner"] != "off"):
            for name, mark in marks.items():
                when_on, trial_on = _first_past(on["curve"], mark)
                when_off, trial_off = _first_past(off["curve"], mark)
                if when_on is None or when_off is None:
                    continue
                lines.append(
                    f"- {workers} worker(s), seed {seed}{named}, to beat {name}: "
                    f"pruner {on['pruner']} {when_on:.0f} s, off {when_off:.0f} s: "
                    f"{when_off / when_on:.2f}x (target 2x); first beaten by trial "
                    f"{trial_on} ({on['pruner']}) and {trial_off} (off)\n"
                )
    if not lines:
        return ""
    return (
        "\nPruning against the 2x target (pruner on is the study's median "
        f"pruner; the first {BASELINES} trials are the baselines and it prunes "
        f"none of the first {PRUNER_STARTUP}):\n\n" + "".join(lines)
    )


def _first_past(curve: list, mark: float) -> tuple[float | None, int | None]:
    """When, and by which trial, a best-so-far curve first went past `mark`."""
    return next(((s, n) for s, v, n in curve if v > mark), (None, None))


def _plot(runs: list[dict], path: Path) -> None:
    """The best-so-far curves against wall time, with KerasTuner's marks."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for r in runs:
        if not r["curve"]:
            continue
        seconds, best, _ = zip(*r["curve"], strict=True)
        minutes = [s / 60 for s in seconds] + [r["minutes"]]
        label = f"sweep, pruner {r['pruner']}, {r['workers']} worker(s)"
        if r.get("sampler", _DEFAULT.study.sampler) != _DEFAULT.study.sampler:
            label += f", {r['sampler']}"
        if r["seed"] != _DEFAULT.study.seed:
            label += f", seed {r['seed']}"
        axes.step(minutes, [*best, best[-1]], where="post", label=label)
    axes.plot(list(KERAS_TUNER), list(KERAS_TUNER.values()), "ks--", label=TUNER_LABEL)
    axes.axhline(THRESHOLD, color="grey", lw=0.8)
    axes.set_xlabel("minutes since launch")
    axes.set_ylabel("best val top-100 accuracy so far")
    axes.set_title("Sweep speed on 2 cores")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
