"""Export inputs and the NumPy serving index, without training anything."""

import numpy as np
import optuna
import pytest

from sweep.errors import SweepError
from sweep.export import choose_trial
from sweep.serving import CandidateIndex, UserIndex
from tests.helpers import assert_one_line_error, run_sweep


def make_study(storage, states):
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for state in states:
        trial = study.ask()
        if state == "COMPLETE":
            study.tell(trial, 0.1 * (trial.number + 1))
        elif state == "PRUNED":
            trial.report(0.05, 2)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return study


def test_best_complete_trial_is_chosen_and_others_refused():
    study = make_study(None, ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"])
    assert choose_trial(study, None).number == 2
    assert choose_trial(study, 0).number == 0
    with pytest.raises(SweepError, match="trial 1 of study 's' is PRUNED"):
        choose_trial(study, 1)
    with pytest.raises(SweepError, match="trial 3 of study 's' is FAIL"):
        choose_trial(study, 3)
    with pytest.raises(SweepError, match="no trial 7"):
        choose_trial(study, 7)
    with pytest.raises(SweepError, match="complete ones: 0, 2"):
        choose_trial(study, 7)


@pytest.mark.parametrize(
    "states, args, fragment",
    [
        (["FAIL", "PRUNED"], [], "study 's' has no complete trial yet (2 trials)"),
        (["COMPLETE", "PRUNED"], ["--trial", "1"], "is PRUNED, not COMPLETE"),
    ],
)
def test_export_refuses_before_loading_data(
    tmp_path, isolated_home, states, args, fragment
):
    isolated_home.mkdir(parents=True)
    make_study(f"sqlite:///{isolated_home / 'optuna.db'}", states)
    out = tmp_path / "out"
    result = run_sweep("export", "s", "--out", str(out), *args)
    assert_one_line_error(result, fragment)
    assert not out.exists()
    # Refused before touching the data: nothing was fetched or cached.
    assert not {"cache", "downloads"} & {p.name for p in isolated_home.iterdir()}


def test_export_of_a_home_without_studies_creates_no_store(tmp_path, isolated_home):
    result = run_sweep("export", "smoke", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no study 'smoke'", "sweep launch")
    assert not (isolated_home / "optuna.db").exists()


def test_top_k_ranks_by_score_then_movie_id():
    index = CandidateIndex(
        movie_ids=np.array([10, 11, 12, 13]),
        titles=np.array(["a", "b", "c", "d"]),
        embeddings=np.array([[1.0, 0], [0, 1.0], [1.0, 0], [0.5, 0.5]], np.float32),
    )
    (top,) = index.top_k(np.array([[1.0, 0.2]]), 3)
    assert [r.movie_id for r in top] == [10, 12, 13]
    assert [round(r.score, 4) for r in top] == [1.0, 1.0, 0.6]
    assert len(index.top_k(np.array([[1.0, 0.2]]), 50)[0]) == 4


def test_unknown_user_ids_are_refused():
    users = UserIndex(np.array([1, 2, 5]), {}, np.zeros((3, 2), np.float32))
    assert list(users.rows([5, 1])) == [2, 0]
    for unknown in (3, 0, 9):
        with pytest.raises(SweepError, match=f"unknown user id {unknown}"):
            users.rows([unknown])
