"""The study's report on its MLflow parent run: plots, trials.csv, a description.

Refreshed by every worker when one of its trials finishes (an Optuna callback)
and at the end of a sweep, so the parent run always shows the study so far:

    report/top100_accuracy_vs_epoch.png   the reference's plot: the baselines
                                          and the best trials, per validation
    report/optuna/<plot>.html and .png    Optuna's optimization history,
                                          parameter importances, parallel
                                          coordinates and intermediate values
    trials.csv                            every trial's params, state, scores
    metric best_val_top100_accuracy       the best so far (step = finished trials)
    the run's description (markdown)      study file, data, best trial, how to
                                          export it

The metric and the description are cheap and refreshed by the worker after
every trial. The files cost more (the plots a second or more per drawing, more
as the study grows): after every trial they are written by a low-priority child
process (`sweep.plotter`), off the worker's cores as far as they are busy, and
at the end of a sweep by the worker itself. Without that process the worker
writes trials.csv after every trial and draws the plots at most every
`PLOT_INTERVAL_SECONDS`, and less often when drawing that often would cost it
more than `PLOT_BUDGET` of its time.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from mlflow.entities import Metric, RunTag
from optuna.trial import FrozenTrial, TrialState

from sweep.plotter import Plotter
from sweep.tracking import Tracker

PLOT_INTERVAL_SECONDS = 60.0
# The largest share of a worker's wall time the plots between trials may take.
PLOT_BUDGET = 0.02
BEST_METRIC = "best_val_top100_accuracy"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BEST_TRIALS_PLOTTED = 5
DESCRIPTION_TAG = "mlflow.note.content"
BASELINE_ATTR = "sweep.baseline"
OPTUNA_PLOTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
)


class StudyReport:
    """Keeps the study's parent run up to date (an Optuna trial callback).

    Args:
        tracker: The study's MLflow side.
        parent_run_id: The study's run.
        study_file: The study file's path (for the description).
        data_source: Where the data came from (for the description).
    """

    def __init__(
        self,
        tracker: Tracker,
        parent_run_id: str,
        study_file: str,
        data_source: str,
        plotter: Plotter | None = None,
    ):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.study_file = study_file
        self.data_source = data_source
        self.plotter = plotter
        # The first plots come after the first interval (or at the end).
        self._plotted_at = time.monotonic()
        self._plot_seconds = 0.0  # what the last drawing (and its upload) took

    def plot_interval(self) -> float:
        """Seconds to wait between drawings, so they keep within `PLOT_BUDGET`."""
        return max(PLOT_INTERVAL_SECONDS, self._plot_seconds / PLOT_BUDGET)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Refreshes after a trial; the plotter writes the files if it can.

        The metric and the description are written here, trials.csv and the
        plots by the plotter.

        Without a plotter (or if it has died), trials.csv is written here, and
        the plots too if the last ones are old enough.
        """
        delegated = self.plotter is not None and self.plotter.request()
        due = not delegated and (
            time.monotonic() - self._plotted_at >= self.plot_interval()
        )
        try:
            self.refresh(study, plots=due, table=not delegated)
        except Exception as e:  # a report must never stop the sweep
            print(f"sweep: the study report was not refreshed ({e})", file=sys.stderr)

    def refresh(
        self, study: optuna.Study, plots: bool = True, table: bool = True
    ) -> None:
        """Writes the report: best-so-far metric, description, and files.

        Args:
            study: The study.
            plots: Draw and upload the plots (trials.csv always goes with them).
            table: Upload trials.csv (without plots, the only file written).
        """
        trials = study.get_trials(deepcopy=False)
        client = self.tracker.client
        if plots or table:
            start = time.monotonic()
            upload_files(client, self.parent_run_id, study, trials, plots)
            if plots:
                self._plotted_at = time.monotonic()
                self._plot_seconds = self._plotted_at - start
        tags = [RunTag(DESCRIPTION_TAG, self.describe(study, trials))]
        metrics = []
        best = _best(trials)
        if best is not None:
            finished = sum(t.state in FINISHED for t in trials)
            now = int(time.time() * 1000)
            metrics.append(Metric(BEST_METRIC, best.value, now, finished))
        client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)

    def describe(self, study: optuna.Study, trials: list[FrozenTrial]) -> str:
        """The parent run's description: what ran, on what, and what won."""
        name = study.study_name
        counts = {state: 0 for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        for t in trials:
            if t.state.name in counts:
                counts[t.state.name] += 1
        lines = [
            f"**Study `{name}`** from `{self.study_file}`, on MovieLens 100k from "
            f"{self.data_source}.",
            "",
            "Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + ".",
            "",
        ]
        best = _best(trials)
        if best is not None:
            params = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in best.params.items())  # fmt: skip
            lines += [
                f"Best: **trial {best.number}**, val top-100 accuracy "
                f"**{best.value:.4f}** at epoch {best.user_attrs.get('best_epoch')} "
                f"({params}).",
                "",
                "Export it:",
                "",
                f"    sweep export {name} --out exports/{name}",
            ]
        else:
            lines.append("No complete trial yet.")
        return "\n".join(lines)


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def upload_files(
    client, run_id: str, study: optuna.Study, trials: list[FrozenTrial], plots: bool
) -> None:
    """Writes trials.csv (and the plots, if asked) into the study's run.

    Args:
        client: An MLflow client of the study's store.
        run_id: The study's parent run.
        study: The study.
        trials: Its trials, as just read.
        plots: Also draw and upload the plots under `report/`.
    """
    folder = Path(tempfile.mkdtemp(prefix="sweep-report-"))
    try:
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        client.log_artifact(run_id, str(folder / "trials.csv"))
        if plots:
            write_plots(study, trials, folder / "report")
            client.log_artifacts(run_id, str(folder / "report"), "report")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    baselines = [t for t in curves if t.user_attrs.get(BASELINE_ATTR)]
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
    p = trial.params
    label = (
        f"{kind} {trial.number}: depth {p.get('depth')}, width {p.get('width')}, "
        f"emb {p.get('embedding_dim')}, lr {p.get('learning_rate', 0):.3g}"
    )
    axes.plot(steps, [trial.intermediate_values[s] for s in steps], style,
              marker="o", label=label)  # fmt: skip


def optuna_plot(study: optuna.Study, name: str, folder: Path) -> bool:
    """One of Optuna's plots, as interactive HTML (plotly) and PNG (matplotlib).

    Returns:
        Whether it was drawn: some need more trials (e.g. parameter importances
        need two complete trials that differ).
    """
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
            figure = getattr(plotly_plots, f"plot_{name}")(study)
            # Inline plotly.js: the HTML must render on machines without internet.
            figure.write_html(folder / f"{name}.html", include_plotlyjs=True)
            axes = getattr(matplotlib_plots, f"plot_{name}")(study)
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
