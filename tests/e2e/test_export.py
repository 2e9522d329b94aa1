"""`sweep export` and `sweep recommend` on the smoke study of the real data."""

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pandas as pd
import pytest

from sweep.keys import BEST_ARTIFACT, RUN_ID_ATTR
from sweep.train import BestModel
from tests.helpers import assert_one_line_error, run_main, run_sweep

pytestmark = pytest.mark.slow


def sweep_in(home, *args):
    return run_sweep(*args, env={"SWEEP_HOME": str(home)})


def export(home, out, *extra):
    return sweep_in(home, "export", "smoke", "--out", str(out), "--data-source",
                    "recbole", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def exported(smoke, tmp_path_factory):
    """The smoke study's best trial, exported and registered."""
    _, study, _, home = smoke
    out = tmp_path_factory.mktemp("exports") / "best"
    result = export(home, out)
    assert result.returncode == 0, result.stderr
    return out, study.best_trial, result


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_export_holds_the_best_trial_and_its_description(exported, real_features):
    out, best, result = exported
    assert {p.name for p in out.iterdir()} == {
        "model.keras", "candidates.npz", "users.npz", "serving", "export.json",
    }  # fmt: skip
    info = json.loads((out / "export.json").read_text())
    assert info["study"] == "smoke"
    assert info["trial"] == best.number
    assert info["params"] == best.params
    assert info["best_val_top100_accuracy"] == pytest.approx(best.value)
    assert info["best_epoch"] == best.user_attrs["best_epoch"]
    assert abs(info["exported_val_top100_accuracy"] - best.value) <= 0.002
    assert info["data_checksum"] == real_features.checksum
    assert info["versions"]["keras"] and info["versions"]["mlflow"]
    assert f"parity: exported model {best.value:.4f}" in result.stdout
    # Loading the SavedModel back warns of gradients serving never asks for.
    assert "unsaved custom gradients" not in result.stderr
    assert "Validating input example" not in result.stderr
    # The smoke study has no confirmation stage: its one value is said so.
    assert info["confirmed"] is False
    assert "no confirmation stage" in info["unconfirmed"]
    assert "unconfirmed: the study has no confirmation stage" in result.stdout
    with np.load(out / "candidates.npz") as index:
        assert list(index["movie_id"]) == list(range(1, 1683))
        assert index["title"][49] == real_features.movie_titles[50]
        assert index["embedding"].shape == (1682, 32)
    assert leftovers(out.parent) == []


RELOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import tensorflow as tf
    import sweep.model  # registers the model's classes
    folder = sys.argv[1]
    model = keras.saving.load_model(f"{folder}/model.keras")  # safe_mode=True
    users = np.load(f"{folder}/users.npz")
    names = ["user_id", "user_gender", "raw_user_age",
             "user_gender_X_raw_user_age", "user_occupation_label"]
    features = {n: users[n] for n in names}
    queries = np.asarray(model.query_model(features))
    top = np.asarray(model.retrieval(queries))
    serving = tf.saved_model.load(f"{folder}/serving")
    served = serving.serve({n: tf.constant(v) for n, v in features.items()}).numpy()
    candidates = np.load(f"{folder}/candidates.npz")["embedding"]
    saved = np.asarray(model.retrieval.candidate_embeddings)[1:]
    print(json.dumps({
        "keras_vs_index": float(np.abs(queries - users["query_embedding"]).max()),
        "serving_vs_keras": float(np.abs(served - queries).max()),
        "candidates_vs_index": float(np.abs(saved - candidates).max()),
        "candidates_nonzero": bool(np.abs(saved).sum() > 0),
        "top_first_user": top[0][:10].tolist(),
    }))
""")


def test_model_and_serving_reload_in_a_fresh_process(exported, real_features):
    out, _, _ = exported
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keras_vs_index"] < 1e-5
    assert report["serving_vs_keras"] < 1e-5
    # The candidate set came back with the model (not the zero placeholder).
    assert report["candidates_nonzero"]
    assert report["candidates_vs_index"] == 0.0
    # `sweep recommend` prints k titles from the folder, best first...
    picks = run_sweep("recommend", "--model", str(out), "--user-id", "1", "--k", "10")
    assert picks.returncode == 0, picks.stderr
    lines = picks.stdout.strip().splitlines()
    assert lines[0] == f"top 10 movies for user 1 ({out}):"
    assert len(lines) == 11
    known = set(real_features.movie_titles.tolist())
    titles, scores = [], []
    for rank, line in enumerate(lines[1:], 1):
        head, title_score = line.split(". ", 1)
        title, score = title_score.rsplit("  (score ", 1)
        assert int(head) == rank and title in known
        titles.append(title)
        scores.append(float(score.rstrip(")")))
    assert scores == sorted(scores, reverse=True)
    # ...and the model's own top-k agrees with the index's ranking for that user.
    with np.load(out / "candidates.npz") as index:
        expected = [str(index["title"][i - 1]) for i in report["top_first_user"]]
    assert titles == expected


def test_registry_alias_follows_the_latest_export(smoke, exported, tmp_path,
                                                  monkeypatch):  # fmt: skip
    _, study, client, home = smoke
    _, best, _ = exported
    first = client.get_model_version_by_alias("smoke", "champion")
    assert first.tags["sweep.trial"] == str(best.number)
    other = next(t for t in study.trials if t.number != best.number)
    # --force replaces a folder that holds something else.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "stale.txt").write_text("old")
    # In this process (the real `sweep export`: the fixture's).
    result = run_main("export", "smoke", "--out", str(tmp_path / "other"),
                      "--data-source", "recbole", "--trial", str(other.number),
                      "--force", env={"SWEEP_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "other" / "stale.txt").exists()
    info = json.loads((tmp_path / "other" / "export.json").read_text())
    assert info["trial"] == other.number
    second = client.get_model_version_by_alias("smoke", "champion")
    assert int(second.version) == int(first.version) + 1
    assert second.tags["sweep.trial"] == str(other.number)
    assert second.tags["sweep.study"] == "smoke"
    assert second.run_id == other.user_attrs[RUN_ID_ATTR]

    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which every later
    # subprocess would inherit: monkeypatch puts the variable back afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/smoke@champion")
    frame = model.predict(pd.DataFrame({"user_id": [42, 7]}), params={"k": 5})
    assert list(frame.columns) == ["movie_ids", "titles", "scores"]
    assert len(frame) == 2 and all(len(ids) == 5 for ids in frame["movie_ids"])
    # The same ranking as the exported folder of that trial.
    folder = run_sweep("recommend", "--model", str(tmp_path / "other"),
                       "--user-id", "42", "--k", "5")  # fmt: skip
    titles = [line.split(". ", 1)[1].rsplit("  (score", 1)[0]
              for line in folder.stdout.splitlines()[1:]]  # fmt: skip
    assert list(frame["titles"][0]) == titles
    # And from the command line, by its registry name.
    result = sweep_in(home, "recommend", "--model", "models:/smoke@champion",
                      "--user-id", "42", "--k", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    registered = result.stdout.strip().splitlines()[1:]
    assert registered == folder.stdout.strip().splitlines()[1:]


def test_parity_check_fails_on_a_tampered_weight_file(smoke, exported, tmp_path):
    _, _, client, home = smoke
    _, best, _ = exported
    run = client.get_run(best.user_attrs[RUN_ID_ATTR])
    # The run's artifact store is a local folder here: tamper with the file in it.
    stored = (
        Path(run.info.artifact_uri.removeprefix("file://")) / BEST_ARTIFACT
        / BestModel.WEIGHTS_FILE
    )  # fmt: skip
    original = stored.read_bytes()
    try:
        with h5py.File(stored, "r+") as weights:
            kernel = weights["layers/query_model/dense_layers/layers/dense/vars/0"]
            kernel[...] = -kernel[...]
        out = tmp_path / "tampered"
        # In this process (a real export's one-line errors: the test below).
        result = run_main("export", "smoke", "--out", str(out), "--data-source",
                          "recbole", "--trial", str(best.number), "--no-register",
                          env={"SWEEP_HOME": str(home)})  # fmt: skip
    finally:
        stored.write_bytes(original)
    assert_one_line_error(result, "parity check failed", f"{best.value:.4f}")
    assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["export", "nosuch", "--out", "{tmp}/x"], "no study 'nosuch'"),
        (["export", "smoke", "--trial", "99", "--out", "{tmp}/x"], "no trial 99"),
        (["export", "smoke", "--out", "{tmp}/full"], "exists and is not empty"),
        (
            ["recommend", "--model", "{export}", "--user-id", "99999"],
            "unknown user id 99999",
        ),  # fmt: skip
        (["recommend", "--model", "{tmp}", "--user-id", "1"], "not a sweep export"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(smoke, exported, tmp_path, args,
                                                  fragment):  # fmt: skip
    _, _, _, home = smoke
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    args = [a.format(tmp=tmp_path, export=exported[0]) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    # The first case as a real process (its exit status and stderr as a user
    # sees them), the others in this process: the same `cli.main`.
    real = args[0] == "export" and args[1] == "nosuch"
    run = sweep_in if real else lambda h, *a: run_main(*a, env={"SWEEP_HOME": str(h)})
    result = run(home, *args)
    assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


# After the alias test above, which counts versions from the fixture's: this
# one (and the next) register new versions of the shared smoke export.
def test_a_registry_refusal_after_the_move_is_one_line_and_force_registers(
    smoke, exported, tmp_path
):
    _, _, client, home = smoke
    before = client.get_model_version_by_alias("smoke", "champion").version
    out = tmp_path / "refused"
    database = sqlite3.connect(home / "mlflow.db")
    # The registry's own database refuses the new version: a real refusal
    # from MLflow, after the export is in place.
    database.execute(
        "CREATE TRIGGER refuse_versions BEFORE INSERT ON model_versions "
        "BEGIN SELECT RAISE(ABORT, 'versions are frozen'); END"
    )
    database.commit()
    try:
        result = export(home, out)
    finally:
        database.execute("DROP TRIGGER refuse_versions")
        database.commit()
        database.close()
    # MLflow's own progress line ("Registered model 'smoke' already exists")
    # may come first; the refusal is one line of sweep's, last, no traceback.
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2, result.stderr
    assert f"exported to {out}, but MLflow refused to register it" in lines[-1]
    assert "versions are frozen" in lines[-1] or "Model Version" in lines[-1]
    assert "--force" in lines[-1]
    # The export landed whole; the alias did not move.
    assert json.loads((out / "export.json").read_text())["study"] == "smoke"
    assert (out / "model.keras").is_file() and not leftovers(out.parent)
    champion = client.get_model_version_by_alias("smoke", "champion")
    assert champion.version == before
    # As the line says: again with --force registers it.
    result = export(home, out, "--force")
    assert result.returncode == 0, result.stderr
    champion = client.get_model_version_by_alias("smoke", "champion")
    assert int(champion.version) > int(before)


def test_the_printed_serve_command_runs_as_printed(smoke, exported, tmp_path):
    _, _, _, home = smoke
    # The tracking store named by a flag (this spelling is not the home's
    # default): the printed command carries it.
    uri = f"sqlite:///{home}/./mlflow.db"
    out = tmp_path / "flagged"
    result = sweep_in(home, "export", "smoke", "--out", str(out), "--data-source",
                      "recbole", "--tracking-uri", uri)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("serve it: ")]
    assert line.endswith(f"--tracking-uri {uri}")
    # Run from another home, as printed.
    command = line.removeprefix("serve it: sweep ").split()
    served = run_sweep(*command, env={"SWEEP_HOME": str(tmp_path / "elsewhere")})
    assert served.returncode == 0, served.stderr
    assert served.stdout.startswith("top 10 movies for user 1")
