import numpy as np
import pytest

from sweep import serving
from sweep.errors import SweepError


@pytest.fixture
def export(tmp_path):
    """A folder with both indexes, as `sweep export` writes them."""
    serving.CandidateIndex(
        np.array([1, 2]), np.array(["A", "B"]), np.eye(2, dtype=np.float32)
    ).save(tmp_path / serving.CANDIDATES_FILE)
    features = {name: np.array([1, 2]) for name in serving.QUERY_FEATURES}
    serving.UserIndex(features["user_id"], features, np.eye(2, dtype=np.float32)).save(
        tmp_path / serving.USERS_FILE
    )
    return tmp_path


def test_an_export_recommends(export):
    assert [p.title for p in serving.recommend(export, 2, k=1)] == ["B"]


@pytest.mark.parametrize(
    "name, content",
    [
        (serving.CANDIDATES_FILE, b"garbage\n"),  # NumPy reads it as a pickle
        (serving.USERS_FILE, None),  # truncated zip
    ],
)
def test_a_damaged_index_is_one_line(export, name, content):
    path = export / name
    path.write_bytes(path.read_bytes()[:100] if content is None else content)
    with pytest.raises(SweepError) as error:
        serving.recommend(export, 1)
    assert str(error.value).startswith(f"{path} is damaged or not an index")
    assert "\n" not in str(error.value)
