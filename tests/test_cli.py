import json
import os
import tomllib

import pytest

from sweep.cli import EXAMPLES, build_parser
from tests.helpers import (
    GOOD,
    REPO,
    assert_one_line_error,
    run_main,
    run_sweep,
    share_cache,
)


@pytest.fixture
def grouplens_spec(isolated_home, synthetic_home, synthetic_spec):
    """The synthetic data, its features already in this test's SWEEP_HOME."""
    share_cache(isolated_home, synthetic_home / "cache")
    return synthetic_spec


def test_version_is_the_package_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = run_main("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sweep {project['version']}"


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_each_verb_help_ends_with_an_example_of_that_verb(verb, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: still one line
    result = run_main(verb, "--help")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == f"example: {EXAMPLES[verb]}"
    # The example itself parses (it is not run).
    argv = EXAMPLES[verb].split()[1:]
    assert build_parser().parse_args(argv).verb == verb


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--depth", "0"], "argument --depth: 0 is below 1"),
        (["--learning-rate", "-0.1"], "argument --learning-rate: -0.1 is not positive"),
        (["--epochs", "many"], "argument --epochs: 'many' is not a whole number"),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
        (["--seed", "-1"], "argument --seed: -1 is below 0"),
        (["--seed", "4294967296"], "4294967296 is above 4294967295; expected a seed"),
        (["--test-fraction", "0.5"], "--test-fraction: 0.5 is out of range; expected"),
        (["--test-fraction", "ten"], "--test-fraction: 'ten' is not a number"),
    ],
)
def test_bad_arguments_are_one_line(args, fragment):
    assert_one_line_error(run_sweep("train", *args), fragment, code=2)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--max-retries", "-1"], {}, "argument --max-retries: -1 is below 0"),
        (["--cpus", "99"], {}, "argument --cpus: '99' names cores this process"),
        ([], {"SWEEP_CPUS": "0,99"}, "argument --cpus: '0,99' names cores"),
        (["--worker-index", "-1"], {}, "argument --worker-index: -1 is below 0"),
    ],
)
def test_bad_resume_arguments_are_one_line(args, env, fragment):
    result = run_sweep("resume", "t", *args, env=env)
    assert_one_line_error(result, fragment, code=2)


def test_export_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "export"
    result = run_sweep("export", "t", "--out", str(out))
    assert_one_line_error(
        result, f"--out {out} is under {tmp_path / 'file'}, which is a file"
    )


@pytest.mark.parametrize(
    "out, fragment",
    [
        (".", "--out . is the current folder or holds it"),
        ("..", "--out .. is the current folder or holds it"),
        ("/proc/sweep-export", "--out /proc/sweep-export cannot be written"),
    ],
)
def test_export_to_an_unusable_folder_is_refused_first(
    tmp_path, monkeypatch, out, fragment
):
    if out.startswith("/proc") and not os.path.isdir("/proc"):
        pytest.skip("needs Linux's /proc")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    home = tmp_path / "home"
    result = run_main("export", "t", "--out", out, env={"SWEEP_HOME": str(home)})
    assert_one_line_error(result, fragment)
    # Refused before the study, the data or the registry was touched.
    assert not [p for p in tmp_path.rglob("*") if p not in (work, home)]


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_ui_port_out_of_range_is_one_line(port):
    result = run_sweep("ui", "--port", port)
    assert_one_line_error(
        result, f"argument --port: {port!r}" if port == "http" else f"--port: {port}",
        "expected one from 1 to 65535", code=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    "verb",
    [
        ["train"],
        ["launch", "STUDY"],
        ["resume", "t"],
        ["status"],
        ["export", "t", "--out", "OUT"],
        ["recommend", "--model", "models:/t@champion", "--user-id", "1"],
        ["ui"],
    ],
)
def test_sweep_home_that_is_a_file_is_one_line(verb, tmp_path):
    home = tmp_path / "home"
    home.write_text("not a folder")
    study = tmp_path / "study.toml"
    study.write_text(GOOD)
    args = [str(study) if a == "STUDY" else a for a in verb]
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    # In this process: a real process's one line is checked per verb elsewhere
    # (test_sweep_home_under_a_file_is_one_line, bad input in the verbs' tests).
    result = run_main(*args, env={"SWEEP_HOME": str(home)})
    assert_one_line_error(
        result, f"sweep {verb[0]}: error: SWEEP_HOME={home} is a file, not a folder"
    )
    assert home.read_text() == "not a folder"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
def test_sweep_home_that_cannot_be_created_is_one_line():
    result = run_sweep("status", env={"SWEEP_HOME": "/proc/sweep-home"})
    assert_one_line_error(result, "SWEEP_HOME=/proc/sweep-home cannot be created")


def test_sweep_home_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    home = tmp_path / "file" / "home"
    result = run_sweep("status", env={"SWEEP_HOME": str(home)})
    assert_one_line_error(
        result, f"SWEEP_HOME={home} is under {tmp_path / 'file'}, which is a file"
    )


def test_status_reads_and_never_creates_a_storage(tmp_path):
    home = tmp_path / "home"
    env = {"SWEEP_HOME": str(home)}
    fresh = run_main("status", env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() == f"no studies in sqlite:///{home / 'optuna.db'}"
    typo = tmp_path / "typo.db"
    named = run_main("status", "t", "--storage", f"sqlite:///{typo}", env=env)
    assert_one_line_error(named, f"no study 't': there is no Optuna storage at {typo}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["home"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--depth", "100000"], "depth = 100000: expected at most 16 dense layers"),
        (
            ["--width", "10000000"],
            "depth 1, width 10000000, embedding_dim 32, batch_size 1000 needs about",
        ),
        (["--embedding-dim", "100000000"], "embedding_dim 100000000, batch_size"),
        (["--epochs", "1000000000000"], "epochs = 1000000000000: expected at most"),
    ],
)
def test_configurations_too_large_are_one_line(args, fragment, grouplens_spec):
    # In this process (a real one's one line: the missing data folder below).
    result = run_main("train", "--data-source", grouplens_spec, *args)
    assert_one_line_error(result, "sweep train: error:", fragment)


def test_missing_data_folder_is_one_line(tmp_path):
    result = run_sweep("train", "--data-source", f"grouplens:{tmp_path / 'none'}")
    assert_one_line_error(result, "sweep train: error:", "is not a folder")


def test_debug_shows_the_traceback(tmp_path):
    result = run_main(
        "--debug", "train", "--data-source", f"grouplens:{tmp_path / 'none'}"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_train_json_is_the_last_stdout_line(grouplens_spec):
    # In this process; a real `sweep train` runs in the next test.
    result = run_main(
        "train", "--data-source", grouplens_spec, "--epochs", "3",
        "--validation-freq", "2", "--batch-size", "64", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {
        "params", "validations", "best_val_top100_accuracy", "best_epoch",
        "train_seconds",
    }  # fmt: skip
    assert [v["epoch"] for v in summary["validations"]] == [2, 3]
    assert summary["params"] == {
        "depth": 1, "width": 32, "layer_sizes": [32], "embedding_dim": 32,
        "learning_rate": 0.05,
    }  # fmt: skip
    best = max(summary["validations"], key=lambda v: v["val_top100_accuracy"])
    assert summary["best_epoch"] == best["epoch"]
    assert "MovieLens 100k from grouplens" in result.stderr


def test_train_prints_validations_and_best(grouplens_spec):
    result = run_sweep(
        "train", "--data-source", grouplens_spec, "--depth", "2", "--width", "8",
        "--epochs", "2", "--validation-freq", "1", "--batch-size", "64",
        "--test-fraction", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "training layer sizes [16, 8]" in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("val_top100_accuracy" in line for line in epochs)
    last = out.strip().splitlines()[-1]
    assert "best val_top100_accuracy" in last and "; test_top100_accuracy 0." in last


def test_diverging_training_fails_in_one_line(grouplens_spec):
    # In this process (a real one's one line: the missing data folder above).
    result = run_main(
        "train", "--data-source", grouplens_spec, "--learning-rate", "1e30",
        "--epochs", "2", "--batch-size", "16",
    )  # fmt: skip
    assert_one_line_error(result, "sweep train: training failed:", "diverged")


def test_reading_verbs_refuse_a_missing_or_unreachable_tracking_store(tmp_path):
    home = tmp_path / "home"
    env = {"SWEEP_HOME": str(home)}
    result = run_main("recommend", "--model", "models:/s@champion", "--user-id", "1",
                      env=env)  # fmt: skip
    assert_one_line_error(result, "no MLflow store at", "sweep launch STUDY_FILE")
    stray = tmp_path / "stray" / "mlflow.db"
    result = run_main("recommend", "--model", "models:/s@champion", "--user-id", "1",
                      "--tracking-uri", f"sqlite:///{stray}", env=env)  # fmt: skip
    assert_one_line_error(result, f"no MLflow store at {stray}", "--tracking-uri")
    assert not (home / "mlflow.db").exists() and not stray.parent.exists()
    result = run_main("ui", "--tracking-uri", "http://127.0.0.1:1", env=env)
    assert_one_line_error(result, "cannot read the MLflow tracking server")


def test_a_rate_past_float32_is_refused_before_training(tmp_path):
    result = run_main("train", "--learning-rate", "1e300",
                      env={"SWEEP_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(result, "learning_rate = 1e+300: expected at most 3.4e+38")
    assert not (tmp_path / "home" / "cache").exists()


def test_workers_past_a_few_per_core_are_refused():
    from sweep.workers import max_workers

    most, _ = max_workers()
    result = run_main("resume", "s", "--workers", str(most + 1))
    assert_one_line_error(result, f"--workers: {most + 1} is above {most}", code=2)
