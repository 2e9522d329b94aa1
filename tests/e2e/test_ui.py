"""`sweep ui` on the smoke study: a light MLflow server that serves its runs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_cli import assert_one_line_error, run_sweep

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid):
    """Command lines of every process below `pid`."""
    listing = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    )
    children = listing.stdout.split()
    found = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            found.append(f.read().replace(b"\0", b" ").decode())
        found += descendants(child)
    return found


def post_json(url, body):
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def ui(smoke):
    _, study, _, home = smoke
    port = free_port()
    sweep = os.path.join(os.path.dirname(sys.executable), "sweep")
    proc = subprocess.Popen(
        [sweep, "ui", "--port", str(port)],
        env={**os.environ, "SWEEP_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 120
    while not any(line.startswith("study smoke:") for line in lines):
        assert time.monotonic() < deadline, "sweep ui printed no study URL"
        assert proc.poll() is None, proc.communicate()
        lines.append(proc.stdout.readline().strip())
    yield proc, port, lines, study
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_ui_serves_the_study_with_one_light_server(ui):
    proc, port, lines, study = ui
    experiment = study.user_attrs["mlflow_experiment_id"]
    base = f"http://127.0.0.1:{port}"
    assert f"study smoke: {base}/#/experiments/{experiment}/runs" \
        "?workflowType=machine_learning" in lines  # fmt: skip
    with urllib.request.urlopen(base, timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
    runs = post_json(
        f"{base}/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment], "max_results": 100},
    )["runs"]
    names = {r["info"]["run_name"] for r in runs}
    assert {f"trial-{t.number}" for t in study.trials} | {"smoke"} <= names
    below = descendants(proc.pid)
    assert sum("uvicorn" in c for c in below) == 1, below
    assert not [c for c in below if "huey" in c or "job" in c], below
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(base, timeout=5)


def test_port_in_use_is_one_line(smoke):
    _, _, _, home = smoke
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_sweep("ui", "--port", str(port), env={"SWEEP_HOME": str(home)})
    assert_one_line_error(result, f"127.0.0.1:{port}", "--port")


def test_ui_without_a_store_is_one_line(tmp_path):
    result = run_sweep("ui", env={"SWEEP_HOME": str(tmp_path / "empty")})
    assert_one_line_error(result, "no MLflow store")
