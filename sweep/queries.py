"""A study's trials as records for scripts: `sweep best` and `sweep trials`.

The records are plain JSON values with stable keys (the README documents
them): a trial's number, state, params, value, best epoch and MLflow run, and
for `best` the confirmed champion when the confirmation stage has named one.
"""

from __future__ import annotations

import csv
import io
import json

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import confirm, keys, params, summary
from sweep.errors import SweepError

STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "fail": TrialState.FAIL,
    "running": TrialState.RUNNING,
    "waiting": TrialState.WAITING,
}
FORMATS = ("table", "csv", "json")


def trial_record(trial: FrozenTrial) -> dict:
    """One trial as a record (`value`: its best val top-100 accuracy so far)."""
    attrs = trial.user_attrs
    values = params.of_trial(trial)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": {name: values.get(name) for name in params.NAMES},
        "value": summary.best_accuracy(trial),
        "best_epoch": attrs.get(keys.BEST_EPOCH_ATTR),
        "pruned_at_epoch": attrs.get(keys.PRUNED_AT_ATTR),
        "baseline": bool(attrs.get(keys.BASELINE_ATTR)),
        "imported_from": attrs.get(keys.IMPORTED_FROM_ATTR),
        "fail_reason": attrs.get(keys.FAIL_REASON_ATTR),
        "mlflow_run_id": attrs.get(keys.RUN_ID_ATTR),
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
    }


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def best_record(study: optuna.Study) -> dict:
    """The best complete trial, and the confirmed champion if there is one.

    Raises:
        SweepError: The study has no complete trial.
    """
    trials = study.get_trials(deepcopy=False)
    best = summary.best_complete(trials)
    if best is None:
        raise SweepError(
            f"study {study.study_name!r} has no complete trial yet "
            f"({len(trials)} trials); run more with `sweep resume {study.study_name}`"
        )
    champion = confirm.champion(confirm.study_results(study))
    return {
        "study": study.study_name,
        **trial_record(best),
        "confirmed": None if champion is None else _champion_record(champion),
    }


def _champion_record(champion: confirm.Finalist) -> dict:
    run = champion.best_run
    return {
        "number": champion.trial.number,
        "params": champion.trial.params,
        "search_value": champion.trial.value,
        "mean": champion.mean,
        "std": champion.std,
        "seeds": len(champion.runs),
        "values": champion.values,
        "test_mean": champion.test_mean,
        "best_run": {
            "seed": run.user_attrs.get(keys.SEED_ATTR),
            "value": run.value,
            "mlflow_run_id": run.user_attrs.get(keys.RUN_ID_ATTR),
        },
    }


def best_text(record: dict) -> str:
    """`sweep best`'s lines for a person (`best_record` as text)."""
    lines = [
        f"best: trial {record['number']} ({params.text(record['params'])}), val "
        f"top-100 {record['value']:.4f} at epoch {record['best_epoch']}, MLflow "
        f"run {record['mlflow_run_id']}"
    ]
    champion = record["confirmed"]
    if champion is not None:
        confirmed = confirm.confirmed_text(
            champion["number"],
            champion["params"],
            champion["mean"],
            champion["std"],
            champion["seeds"],
        )
        lines.append(
            f"confirmed champion: {confirmed}; best seed run "
            f"{champion['best_run']['mlflow_run_id']}"
        )
    return "\n".join(lines)


def trial_records(study: optuna.Study, state: str | None = None) -> list[dict]:
    """Every trial (or those in `state`, a key of `STATES`), in number order."""
    states = (STATES[state],) if state else None
    return [trial_record(t) for t in study.get_trials(deepcopy=False, states=states)]


def render(records: list[dict], fmt: str) -> str:
    """Trial records as a text table, CSV (params as columns) or JSON."""
    if fmt == "json":
        return json.dumps(records, indent=2)
    rows = [_flat(r) for r in records]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    header = (
        f"{'trial':>5}  {'state':8}  {params.header()}  {'val top-100':>11}  "
        f"{'epoch':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in records:
        value = f"{r['value']:11.4f}" if r["value"] is not None else f"{'-':>11}"
        epoch = r["best_epoch"] if r["best_epoch"] is not None else ""
        configured = all(v is not None for v in r["params"].values())
        row = params.row(r["params"]) if configured else " " * len(params.header())
        lines.append(f"{r['number']:5d}  {r['state']:8}  {row}  {value}  {epoch:>5}")
    return "\n".join(lines)


_COLUMNS = [
    "number", "state", *params.NAMES, "value", "best_epoch", "pruned_at_epoch",
    "baseline", "imported_from", "fail_reason", "mlflow_run_id", "datetime_start",
    "datetime_complete",
]  # fmt: skip


def _flat(record: dict) -> dict:
    flat = {k: v for k, v in record.items() if k != "params"}
    flat.update(record["params"])
    source = record["imported_from"]
    flat["imported_from"] = f"{source['study']}#{source['trial']}" if source else None
    return flat
