"""`sweep ui` on the smoke study: a light MLflow server that serves its runs."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_one_line_error, run_sweep, start_sweep

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


@pytest.fixture(scope="module")
def ui(smoke):
    """`sweep ui` on the smoke study, one server for the module's tests."""
    _, study, _, home = smoke
    port = free_port()
    proc = start_sweep("ui", "--port", str(port), env={"SWEEP_HOME": str(home)})
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


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("SWEEP_TEST_SCREENSHOTS",
                                  REPO / "test-output" / "screenshots"))  # fmt: skip


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Selenium (scripts/test.sh installs it)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1600,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, what, check, name, timeout=60):
    """Polls `check(driver)` until truthy; saves a screenshot either way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check(driver)
        except Exception:  # elements re-render while the page loads
            result = None
        if result or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    assert result, f"the MLflow UI did not show {what} (see {SCREENSHOTS / name}.png)"
    return result


def test_browser_sees_trials_curves_and_report(ui, browser):
    from selenium.webdriver.common.by import By

    _, port, lines, study = ui
    url = next(line for line in lines if line.startswith("study smoke:")).split()[-1]
    trials = sorted(study.trials, key=lambda t: -t.value)

    # The runs table, sorted by best accuracy: every trial, the best first.
    def trial_rows(driver):
        pinned = ".ag-pinned-left-cols-container .ag-row"
        rows = driver.find_elements(By.CSS_SELECTOR, pinned)
        names = [n for r in rows for n in r.text.split("\n") if n.startswith("trial-")]
        return names if len(names) == len(trials) else None

    browser.get(url)
    names = wait_for(browser, "every trial run", trial_rows, "1-runs-by-accuracy")
    assert names == [f"trial-{t.number}" for t in trials]

    # Without a click: a column for each score, searched param and the state.
    wanted = {"val_top100_accuracy", "best_val_top100_accuracy", "best_epoch",
              "sweep.trial_state", *study.trials[0].params}  # fmt: skip

    shown = set()

    def missing_columns(driver):
        # The grid renders only the columns in view: scroll through them all.
        for step in range(20):
            driver.execute_script(
                "for (const v of document.querySelectorAll("
                "'.ag-center-cols-viewport, .ag-body-horizontal-scroll-viewport'))"
                " v.scrollLeft = arguments[0];",
                step * 400,
            )
            time.sleep(0.2)
            headers = driver.find_elements(By.CSS_SELECTOR, ".ag-header-cell")
            shown.update(h.get_attribute("col-id") or "" for h in headers)
        return {w for w in wanted if not any(f"`{w}`" in c for c in shown)}

    missing = missing_columns(browser)
    assert not missing, f"the runs table lacks columns {sorted(missing)}: {shown}"

    # The best trial's charts: val_top100_accuracy with a point per validation.
    experiment = study.user_attrs["mlflow_experiment_id"]
    best = trials[0]
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
    # As reached from the runs table: in the model-training view.
    view = "?workflowType=machine_learning"
    browser.get(f"{base}/{best.user_attrs['mlflow_run_id']}/model-metrics{view}")

    def accuracy_points(driver):
        title = "//*[text()='val_top100_accuracy']/../../.."
        for card in driver.find_elements(By.XPATH, title):
            points = card.find_elements(By.CSS_SELECTOR, ".scatterlayer .point")
            if points:
                return len(points)
        return None

    points = wait_for(browser, "the val_top100_accuracy chart", accuracy_points,
                      "2-trial-metrics")  # fmt: skip
    assert points == len(best.intermediate_values)
    for metric in ("loss", "val_loss"):
        assert f">{metric}<" in browser.page_source

    # The study's run: its report artifacts.
    browser.get(f"{base}/{study.user_attrs['mlflow_parent_run_id']}/artifacts{view}")
    wait_for(browser, "the report artifacts",
             lambda d: "trials.csv" in d.page_source and ">report<" in d.page_source,
             "3-study-report")  # fmt: skip


def test_ui_serves_the_study_with_one_light_server(ui):
    # After the browser's test (they share the server): this one stops it.
    proc, port, lines, study = ui
    experiment = study.user_attrs["mlflow_experiment_id"]
    base = f"http://127.0.0.1:{port}"
    expected = (
        f"study smoke: {base}/#/experiments/{experiment}/runs?workflowType="
        "machine_learning&viewStateShareKey=sweep-trials"
    )
    assert expected in lines
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


def test_ui_and_a_running_sweep_do_not_break_each_other(home, tmp_path):
    """`sweep ui` reads the SQLite stores while `sweep launch` writes them."""
    text = (REPO / "studies" / "smoke.toml").read_text()
    study_file = tmp_path / "live.toml"
    study_file.write_text(
        text.replace('name = "smoke"', 'name = "live"')
        .replace("n_trials = 4", "n_trials = 6")
        .replace("epochs = 4", "epochs = 6")
    )
    env = {"SWEEP_HOME": str(home)}
    launch = start_sweep("launch", str(study_file), "--data-source", "recbole", env=env)
    ui = None
    try:
        # The UI needs the MLflow store, which the launch creates first thing.
        deadline = time.monotonic() + 120
        while not (home / "mlflow.db").exists():
            assert launch.poll() is None, launch.communicate()
            assert time.monotonic() < deadline, "the launch made no MLflow store"
            time.sleep(0.2)
        port = free_port()
        ui = start_sweep("ui", "--port", str(port), env=env)
        line = ""
        while "/#/experiments/" not in line:
            assert ui.poll() is None, ui.communicate()
            assert time.monotonic() < deadline + 120, "sweep ui printed no URL"
            line = ui.stdout.readline()
        experiment = line.split("/#/experiments/")[1].split("/")[0]
        base = f"http://127.0.0.1:{port}"
        search = f"{base}/ajax-api/2.0/mlflow/runs/search"
        listing = f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id="
        # Read as a user would while the sweep runs: every request must answer.
        seen_running, trial_counts, report_seen = False, [], False
        while launch.poll() is None:
            runs = post_json(
                search, {"experiment_ids": [experiment], "max_results": 100}
            ).get("runs", [])
            trials = [r for r in runs if r["info"]["run_name"].startswith("trial-")]
            trial_counts.append(len(trials))
            seen_running |= any(r["info"]["status"] == "RUNNING" for r in trials)
            # The report's table, written before the last trial ended (not by
            # the final refresh; its plots are redrawn once a minute).
            parent = [r["info"]["run_id"] for r in runs
                      if r["info"]["run_name"] == "live"]  # fmt: skip
            running = any(r["info"]["status"] == "RUNNING" for r in trials)
            if parent and not report_seen and (running or len(trials) < 6):
                with urllib.request.urlopen(
                    f"{listing}{parent[0]}", timeout=10
                ) as response:
                    files = json.loads(response.read()).get("files", [])
                report_seen = any(f["path"] == "trials.csv" for f in files)
            time.sleep(0.3)
        out, err = launch.communicate()
        assert launch.returncode == 0, err
        assert "locked" not in err, err
        assert seen_running, "no trial run was seen while it ran"
        assert len(set(trial_counts)) > 1, "the trial runs did not appear live"
        assert report_seen, "the report's trials.csv was not written while trials ran"
        runs = post_json(search, {"experiment_ids": [experiment], "max_results": 100})[
            "runs"
        ]
        trials = [r for r in runs if r["info"]["run_name"].startswith("trial-")]
        assert len(trials) == 6
        assert {r["info"]["status"] for r in trials} == {"FINISHED"}
        # And the plots, drawn at the end.
        with urllib.request.urlopen(
            f"{listing}{parent[0]}&path=report", timeout=10
        ) as response:
            files = json.loads(response.read()).get("files", [])
        assert any(f["path"].endswith(".png") for f in files), files
        assert ui.poll() is None, "sweep ui stopped while the sweep ran"
    finally:
        for proc in (launch, ui):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
