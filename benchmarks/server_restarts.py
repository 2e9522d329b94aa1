"""Soak: four workers on two "machines" ride out server restarts of the stack.

    .venv/bin/python -m benchmarks.server_restarts [--trials 16] [--restarts 2]
        [--down 5]

Runs `docker-compose.yml`'s own services as local processes, as the suite's
`tests/test_compose_stack.py` does (PostgreSQL with its init script, the MLflow
server with basic auth, mlflow-init), then four `worker` commands: two with one
`SWEEP_HOME` and two with another, as two machines would, on the real
MovieLens 100k and a smoke-sized study of `--trials` trials. While they run,
PostgreSQL and the MLflow server are each restarted `--restarts` times, in
turn, each kept down `--down` seconds, every restart while trials are in
flight. Then the stores are read back: trials finished, failed and retried,
MLflow runs left RUNNING, epochs logged more than once for one trial (a trial
trained twice), and the workers' outage lines and tracebacks. Results go to
`benchmarks/results/server_restarts.{json,md}`.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import optuna

from tests import postgres
from tests.helpers import REPO, share_real_data
from tests.stack import start_stack

RESULTS = REPO / "benchmarks" / "results"
STUDY = """
[study]
name = "soak"
n_trials = {trials}
seed = 17
sampler = "tpe"
pruner = "none"

[training]
epochs = 10
validation_freq = 2
batch_size = 1000

[space]
depth = {{ low = 1, high = 2 }}
width = {{ choices = [16, 32] }}
embedding_dim = {{ choices = [16, 32] }}
learning_rate = {{ low = 0.05, high = 0.3, log = true }}
"""


def in_flight(poll: postgres.StudyPoll) -> set[int]:
    """The running trials that have reported a validation."""
    return {t.number for t in poll.trials()
            if t.state.name == "RUNNING" and t.intermediate_values}  # fmt: skip


def markdown(result: dict, args: argparse.Namespace) -> list[str]:
    """The results as a page: the restarts, then what the stores hold."""
    lines = [
        "# Server restarts under four workers on two machines",
        "",
        f"Run {result['date']}: `python -m benchmarks.server_restarts --trials "
        f"{args.trials} --restarts {args.restarts} --down {args.down:g}`; "
        f"{result['wall_seconds']:.0f} s from the workers' start to their end.",
        "",
        "| restart | server | at (s) | answering again after (s) |",
        "|---|---|---|---|",
        *(
            f"| {i} | {e['server']} | {e['at_s']} | {e['back_after_s']} |"
            for i, e in enumerate(result["restarts"], 1)
        ),
        "",
        "| what | figure |",
        "|---|---|",
        *(
            f"| {k.replace('_', ' ')} | {v} |"
            for k, v in result.items()
            if k not in ("date", "restarts", "wall_seconds")
        ),
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--down", type=float, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sweep-soak-"))
    real_home = REPO / ".sweep-test"
    stack = start_stack(tmp)
    dotenv, local, database, server = (
        stack.dotenv,
        stack.local,
        stack.database,
        stack.mlflow,
    )
    storage = stack.worker_storage
    poll = postgres.StudyPoll(storage, "soak")
    study_file = tmp / "soak.toml"
    study_file.write_text(STUDY.format(trials=args.trials))
    homes = [share_real_data(tmp / f"machine{m}", real_home) for m in "ab"]
    procs, logs = [], []
    start = time.monotonic()
    for i in range(4):
        argv, env = local.process(
            "worker", dotenv, SWEEP_STUDY_FILE=str(study_file),
            SWEEP_HOME=str(homes[i % 2]),
        )  # fmt: skip
        log = tmp / f"worker{i}.log"
        logs.append(log)
        with open(log, "w") as output:
            procs.append(subprocess.Popen(argv, env=env, stdout=output,
                                          stderr=subprocess.STDOUT))  # fmt: skip

    events = []

    def restarts() -> None:
        plan = ["postgres", "mlflow"] * args.restarts
        seen: set[int] = set()
        for which in plan:
            while not (in_flight(poll) - seen):
                if all(p.poll() is not None for p in procs):
                    return
                time.sleep(0.5)
            seen |= in_flight(poll)
            at = time.monotonic() - start
            if which == "postgres":
                database.halt()
                time.sleep(args.down)
                database.serve()
            else:
                server.stop()
                time.sleep(args.down)
                server.start()
            events.append(
                {
                    "server": which,
                    "at_s": round(at, 1),
                    "back_after_s": round(time.monotonic() - start - at, 1),
                }
            )
            print(f"restarted {which} at {at:.0f} s", flush=True)

    thread = threading.Thread(target=restarts)
    thread.start()
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - start
    thread.join()

    study = optuna.load_study(study_name="soak", storage=storage)
    states = collections.Counter(t.state.name for t in study.trials)
    retried = [t.number for t in study.trials if "failed_trial" in t.system_attrs]
    os.environ["MLFLOW_TRACKING_USERNAME"] = dotenv["MLFLOW_WORKER_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = dotenv["MLFLOW_WORKER_PASSWORD"]
    client = mlflow.MlflowClient(server.url)
    experiment = client.get_experiment_by_name("soak").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    # Epochs per configuration lineage: a retry carries the trial it retries.
    lineage = {}
    for t in study.trials:
        lineage[t.number] = t.system_attrs.get("failed_trial", t.number)
    epochs = collections.Counter()
    for r in runs:
        if r.data.tags.get("sweep.role") != "trial":
            continue
        root = lineage.get(int(r.data.tags["optuna.trial_number"]))
        for m in client.get_metric_history(r.info.run_id, "loss"):
            epochs[(root, m.step)] += 1
    twice = sorted(k for k, n in epochs.items() if n > 1)
    text = "".join(log.read_text() for log in logs)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "trials_target": args.trials,
        "workers": 4,
        "machines": 2,
        "restarts": events,
        "down_seconds": args.down,
        "wall_seconds": round(wall, 1),
        "exit_codes": codes,
        "trial_states": dict(states),
        "retried_trials": retried,
        "runs_left_running": len(running),
        "epochs_trained_twice": len(twice),
        "outage_lines": text.count("stopped answering"),
        "back_lines": text.count("is back after"),
        "tracebacks": text.count("Traceback"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_restarts.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = markdown(result, args)
    (RESULTS / "server_restarts.md").write_text("\n".join(lines))
    print("\n".join(lines))
    poll.close()
    stack.stop()


if __name__ == "__main__":
    main()
