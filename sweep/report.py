"""The study's report on its MLflow parent run: plots, trials.csv, a description.

Refreshed by every worker when one of its trials finishes (an Optuna callback)
and at the end of a sweep, so the parent run always shows the study so far:
the files `sweep.plots` writes (the accuracy curves, Optuna's plots,
trials.csv), the metric `best_val_top100_accuracy` (the best so far, step =
finished trials) and the run's description (study file, data, best trial, how
to export it).

The metric, the description and trials.csv are cheap and refreshed by the
worker after every trial. The plots cost more (more as the study grows): they
are redrawn at most once every `PLOT_INTERVAL_SECONDS`, by a low-priority child
process (`sweep.plotter`), off the worker's cores as far as they are busy, and
at the end of a sweep by the last worker to finish. Without that process the
worker draws them itself, and less often when drawing every minute would cost
it more than `PLOT_BUDGET` of its time.
"""

from __future__ import annotations

import sys
import time

import optuna
from mlflow.entities import Metric, RunTag
from optuna.trial import FrozenTrial, TrialState

from sweep import confirm, keys, params, plots, summary
from sweep.plotter import Plotter
from sweep.tracking import Tracker

PLOT_INTERVAL_SECONDS = 60.0
# The largest share of a worker's wall time the plots between trials may take.
PLOT_BUDGET = 0.02


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
        """Refreshes after a trial; the plotter draws the plots if it can.

        The metric, the description and trials.csv are written here. Once the
        last plots are old enough (`plot_interval`), the plotter draws them (and
        trials.csv with them); without a plotter (or if it has died), this
        process does.
        """
        # One rule for both: a drawing costs seconds and grows with the study,
        # and the next trial's would replace it soon.
        now = time.monotonic()
        due = now - self._plotted_at >= self.plot_interval()
        delegated = due and self.plotter is not None and self.plotter.request()
        if delegated:
            self._plotted_at = now
        try:
            self.refresh(study, draw=due and not delegated, table=not delegated)
        except Exception as e:  # a report must never stop the sweep
            print(f"sweep: the study report was not refreshed ({e})", file=sys.stderr)

    def refresh(
        self, study: optuna.Study, draw: bool = True, table: bool = True
    ) -> None:
        """Writes the report: best-so-far metric, description, and files.

        Args:
            study: The study.
            draw: Draw and upload the plots (trials.csv always goes with them).
            table: Upload trials.csv (without plots, the only file written).
        """
        trials = study.get_trials(deepcopy=False)
        finalists = confirm.study_results(study)
        client = self.tracker.client
        if draw or table:
            start = time.monotonic()
            plots.upload_files(
                client, self.parent_run_id, study, trials, draw, finalists
            )
            if draw:
                self._plotted_at = time.monotonic()
                self._plot_seconds = self._plotted_at - start
        tags = [RunTag(keys.DESCRIPTION_TAG, self.describe(study, trials, finalists))]
        metrics = []
        best = summary.best_complete(trials)
        if best is not None:
            finished = sum(t.state in keys.FINISHED for t in trials)
            now = int(time.time() * 1000)
            metrics.append(Metric(keys.BEST_ACCURACY, best.value, now, finished))
        client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)

    def describe(
        self,
        study: optuna.Study,
        trials: list[FrozenTrial],
        finalists: list[confirm.Finalist],
    ) -> str:
        """The parent run's description: what ran, on what, and what won."""
        name = study.study_name
        counts = keys.count_states(
            trials, (*keys.FINISHED, TrialState.FAIL, TrialState.RUNNING)
        )
        lines = [
            f"**Study `{name}`** from `{self.study_file}`, on MovieLens 100k from "
            f"{self.data_source}.",
            "",
            "Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + ".",
            "",
        ]
        best = summary.best_complete(trials)
        if best is None:
            lines.append("No complete trial yet.")
            return "\n".join(lines)
        lines += [
            f"Search best: **trial {best.number}**, val top-100 accuracy "
            f"**{best.value:.4f}** at epoch "
            f"{best.user_attrs.get(keys.BEST_EPOCH_ATTR)} "
            f"({summary.trial_text(best)}): one seed's best validation, on the "
            "ratings that also chose it among the trials.",
            "",
        ]
        lines += _confirmation(finalists)
        what = "the champion's best seed run" if confirm.champion(finalists) else "it"
        lines += [
            f"Export {what}:",
            "",
            f"    sweep export {name} --out exports/{name}",
        ]
        return "\n".join(lines)


def _confirmation(finalists: list[confirm.Finalist]) -> list[str]:
    """The description's paragraph on the confirmation stage (none without one)."""
    if not finalists:
        return []
    best = confirm.champion(finalists)
    if best is None:
        text = confirm.champion_text(finalists)
        return [text[0].upper() + text[1:] + ".", ""]
    line = (
        f"Confirmed champion: **trial {best.trial.number}** "
        f"({params.text(best.trial.params)}), val top-100 accuracy on fresh seeds "
        f"{confirm.spread_text(best.mean, best.std, len(best.runs), bold='**')} "
        f"(search {best.trial.value:.4f})"
    )
    if best.test_mean is not None:
        line += f"; test top-100 accuracy **{best.test_mean:.4f}** on held-out ratings"
    lines = [line + ".", ""]
    if confirm.close_call(finalists):
        lines += [
            "The runner-up's mean is within one standard error of the champion's: "
            "more seeds (`sweep confirm --seeds`) would tell them apart.",
            "",
        ]
    unstable = [f.trial.number for f in finalists if f.unstable]
    if unstable:
        numbers = ", ".join(str(n) for n in unstable)
        lines += [f"Unstable (a seed collapsed): trial {numbers}.", ""]
    lines += ["Finalists: `confirm.csv` and `report/finalists.png`.", ""]
    return lines
