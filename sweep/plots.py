"""The study report's drawings and files, written into its MLflow parent run.

    report/top100_accuracy_vs_epoch.png   the reference's plot: the baselines
                                          and the best trials, per validation
    report/optuna/<plot>.html and .png    Optuna's optimization history,
                                          parameter importances, parallel
                                          coordinates and intermediate values
    report/finalists.png                  each finalist's seeds beside its
                                          search value (confirmation stage)
    trials.csv                            every trial's params, state, scores
    confirm.csv                           the finalists: search value, mean,
                                          spread over seeds (`confirm.rows`)

Drawn by the worker (`sweep.report`) and by its low-priority child process
(`sweep.plotter`), which both call `upload_files`.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import confirm, keys, params

BEST_TRIALS_PLOTTED = 5
OPTUNA_PLOTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
)


def upload_files(
    client,
    run_id: str,
    study: optuna.Study,
    trials: list[FrozenTrial],
    plots: bool,
    finalists: list[confirm.Finalist],
) -> None:
    """Writes trials.csv (and the plots, if asked) into the study's run.

    Args:
        client: An MLflow client of the study's store.
        run_id: The study's parent run.
        study: The study.
        trials: Its trials, as just read.
        plots: Also draw and upload the plots under `report/`.
        finalists: The confirmation stage's finalists (`confirm.results`; none
            without a stage): confirm.csv, and their plot.
    """
    folder = Path(tempfile.mkdtemp(prefix="sweep-report-"))
    try:
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        client.log_artifact(run_id, str(folder / "trials.csv"))
        if finalists:
            write_csv(confirm.rows(finalists), folder / "confirm.csv")
            client.log_artifact(run_id, str(folder / "confirm.csv"))
        if plots:
            write_plots(study, trials, folder / "report")
            if finalists:
                finalists_plot(finalists, folder / "report" / "finalists.png")
            # File by file: MLflow's local store creates a folder tree with
            # check-then-mkdir, which fails when two workers that finish
            # together upload the report at once; one file's upload makes its
            # folder race-free and replaces the file whole.
            report = folder / "report"
            for path in sorted(report.rglob("*")):
                if path.is_file():
                    where = path.parent.relative_to(folder).as_posix()
                    client.log_artifact(run_id, str(path), where)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_csv(records: list[dict], path: Path) -> None:
    """Writes records with the same keys as a CSV file (empty cells for None)."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def finalists_plot(finalists: list[confirm.Finalist], path: Path) -> None:
    """Each finalist's seeds (dots), their mean +- std, and its search value.

    The search value is the top of one seed's draw; the seeds show what the
    configuration gives when trained again.
    """
    from matplotlib.figure import Figure

    best = confirm.champion(finalists)
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    labels = []
    for x, f in enumerate(finalists):
        values = f.values
        # Each kind of mark is labelled once, for the legend.
        first = x == 0
        axes.scatter(
            [x] * len(values),
            values,
            color="tab:blue",
            alpha=0.7,
            label="seed runs" if first else None,
        )
        if values:
            axes.errorbar(
                x + 0.15,
                f.mean,
                yerr=f.std,
                fmt="o",
                color="black",
                capsize=4,
                label="mean +- std" if first else None,
            )
        axes.scatter(
            [x - 0.15],
            [f.trial.value],
            marker="x",
            color="tab:red",
            s=60,
            label="search value" if first else None,
        )
        mark = " (champion)" if f is best else " (unstable)" if f.unstable else ""
        labels.append(f"trial {f.trial.number}{mark}\n{params.text(f.trial.params)}")
    axes.set_xticks(range(len(finalists)), labels, fontsize="small")
    axes.set_title("Finalists: search value and fresh seeds")
    axes.set_ylabel("val top-100 accuracy")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def write_plots(study: optuna.Study, trials: list[FrozenTrial], folder: Path) -> None:
    """Draws the accuracy curves and Optuna's plots into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    accuracy_curves(trials, folder / "top100_accuracy_vs_epoch.png")
    optuna_folder = folder / "optuna"
    optuna_folder.mkdir(exist_ok=True)
    for name in OPTUNA_PLOTS:
        optuna_plot(study, name, optuna_folder)


def accuracy_curves(trials: list[FrozenTrial], path: Path) -> None:
    """The reference-style "Top-100 accuracy vs epoch" of baselines and best trials.

    Uses each trial's validations as reported to Optuna (epoch -> accuracy).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = [t for t in trials if t.intermediate_values]
    baselines = [t for t in curves if t.user_attrs.get(keys.BASELINE_ATTR)]
    others = [t for t in curves if t not in baselines and t.value is not None]
    best = sorted(others, key=lambda t: -max(t.intermediate_values.values()))
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for trial in baselines:
        _plot_curve(axes, trial, "--", "baseline")
    for trial in best[:BEST_TRIALS_PLOTTED]:
        _plot_curve(axes, trial, "-", "trial")
    axes.set_title("Top-100 accuracy vs epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("val top-100 accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if baselines or best:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def _plot_curve(axes, trial: FrozenTrial, style: str, kind: str) -> None:
    steps = sorted(trial.intermediate_values)
    label = f"{kind} {trial.number}: {params.text(trial.params)}"
    axes.plot(steps, [trial.intermediate_values[s] for s in steps], style,
              marker="o", label=label)  # fmt: skip


def optuna_plot(study: optuna.Study, name: str, folder: Path) -> bool:
    """One of Optuna's plots, as interactive HTML (plotly) and PNG (matplotlib).

    Returns:
        Whether it was drawn: some need more trials (e.g. parameter importances
        need two complete trials that differ).
    """
    importances = name == "param_importances"
    if importances and len(study.get_trials(False, (TrialState.COMPLETE,))) < 2:
        # Optuna would draw one trial's importances as if they meant something,
        # after importing scikit-learn for its random forest (seconds).
        return False
    import optuna.visualization as plotly_plots
    import optuna.visualization.matplotlib as matplotlib_plots

    # Optuna marks its matplotlib plots experimental and warns when a plot has
    # too few trials; the report just skips what cannot be drawn yet.
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Both drawings of the importances show one evaluation.
            kwargs = {"evaluator": _importances()} if importances else {}
            figure = getattr(plotly_plots, f"plot_{name}")(study, **kwargs)
            # Inline plotly.js: the HTML must render on machines without internet.
            figure.write_html(folder / f"{name}.html", include_plotlyjs=True)
            axes = getattr(matplotlib_plots, f"plot_{name}")(study, **kwargs)
            png = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            png.set_size_inches(9, 6)
            png.tight_layout()
            png.savefig(folder / f"{name}.png", dpi=100)
            import matplotlib.pyplot as plt

            plt.close(png)
        return True
    except (ValueError, RuntimeError, ZeroDivisionError):
        return False
    finally:
        optuna_logger.setLevel(level)


def _importances():
    """Optuna's fANOVA importances, evaluated once for the HTML and the PNG.

    fANOVA fits a random forest, the costliest part of a drawing; unseeded, it
    would also give the two drawings different values. Seeded, a report shows
    the same importances for the same trials. (Defined here: fANOVA imports
    scikit-learn, which only a drawing needs.)
    """
    from optuna.importance import BaseImportanceEvaluator, FanovaImportanceEvaluator

    class Once(BaseImportanceEvaluator):
        def __init__(self):
            self._fanova = FanovaImportanceEvaluator(seed=0)
            self._done: dict = {}

        def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
            key = (tuple(params or ()), target)
            if key not in self._done:
                self._done[key] = self._fanova.evaluate(
                    study, params=params, target=target
                )
            return self._done[key]

    return Once()
