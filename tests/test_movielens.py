import dataclasses

import numpy as np
import pytest

from sweep import movielens
from sweep.errors import DataError
from tests import synthetic


def _plain(value):
    """tfds-encoded values as plain Python, to compare with our records."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        return tuple(_plain(v) for v in value.tolist())
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tfds_records(builder_name, examples):
    import tensorflow_datasets as tfds

    features = tfds.builder(builder_name).info.features
    return [
        {k: _plain(v) for k, v in features.encode_example(ex).items()}
        for _, ex in examples
    ]


def _ours(records):
    return [{k: _plain(v) for k, v in r.items()} for r in records]


@pytest.fixture
def grouplens_dir(tmp_path):
    return synthetic.write_grouplens(tmp_path / "ml-100k")


def test_grouplens_and_recbole_layouts_give_identical_records(grouplens_dir):
    texts = synthetic.recbole_texts()
    from_grouplens = movielens.read_grouplens(grouplens_dir)
    from_recbole = movielens.parse_recbole(texts["inter"], texts["item"], texts["user"])
    assert list(from_grouplens.movie_records()) == list(from_recbole.movie_records())
    assert list(from_grouplens.rating_records()) == list(from_recbole.rating_records())
    assert len(list(from_recbole.rating_records())) == len(synthetic.ratings())


def test_grouplens_records_match_tfds_parser(grouplens_dir):
    from tensorflow_datasets.structured import movielens_parsing

    ours = movielens.read_grouplens(grouplens_dir)
    tfds_movies = _tfds_records(
        movielens.TFDS_MOVIES,
        movielens_parsing.parse_100k_movies_data(str(grouplens_dir)),
    )
    tfds_ratings = _tfds_records(
        movielens.TFDS_RATINGS,
        movielens_parsing.parse_100k_ratings_data(str(grouplens_dir)),
    )
    assert _ours(ours.movie_records()) == tfds_movies
    assert _ours(ours.rating_records()) == tfds_ratings


def test_records_keep_the_tricky_titles_and_labels(grouplens_dir):
    movies = {m.movie_id: m for m in movielens.read_grouplens(grouplens_dir).movies}
    assert movies["3"].movie_title == "unknown"
    assert movies["4"].movie_title == "Misérables, Les (1995)"
    assert movies["5"].movie_title.endswith("(1995) (V)")
    children = movielens.GENRE_NAMES.index("Children")
    assert children in movies["1"].movie_genres
    assert movies["3"].movie_genres == (movielens.GENRE_NAMES.index("Unknown"),)


@pytest.mark.parametrize(
    "age, bucket", [(7, 1), (17, 1), (18, 18), (24, 18), (25, 25), (56, 56), (73, 56)]
)
def test_age_buckets_follow_tfds(age, bucket):
    assert movielens._bucketize_age(age) == bucket


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        movielens.read_grouplens(tmp_path / "nowhere")


def test_missing_file_names_it(grouplens_dir):
    (grouplens_dir / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user is missing"):
        movielens.read_grouplens(grouplens_dir)


def test_malformed_line_names_file_and_line(grouplens_dir):
    path = grouplens_dir / "u.data"
    lines = path.read_text().splitlines()
    lines[4] = "1\t2\t3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data line 5: expected 4"):
        movielens.read_grouplens(grouplens_dir)


def test_bad_number_names_the_value(grouplens_dir):
    path = grouplens_dir / "u.data"
    path.write_text("1\t1\tfive\t874724710\n")
    with pytest.raises(DataError, match="rating 'five' is not a valid float"):
        movielens.read_grouplens(grouplens_dir)


def test_rating_of_unknown_movie_is_refused(grouplens_dir):
    (grouplens_dir / "u.data").write_text("1\t999\t4\t874724710\n")
    with pytest.raises(DataError, match="movie '999' is not a known movie"):
        movielens.read_grouplens(grouplens_dir)


def test_unknown_data_source_is_refused(tmp_path):
    with pytest.raises(DataError, match="expected auto, tfds, recbole or grouplens"):
        movielens.resolve_source("kaggle", tmp_path)


def test_auto_prefers_grouplens_env_over_recbole(grouplens_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    monkeypatch.setenv("SWEEP_MOVIELENS_DIR", str(grouplens_dir))
    source = movielens.resolve_source("auto", tmp_path)
    assert source.kind == "grouplens"
    monkeypatch.delenv("SWEEP_MOVIELENS_DIR")
    assert movielens.resolve_source("auto", tmp_path).kind == "recbole"


def test_recbole_wheel_with_other_content_is_refused(tmp_path):
    import zipfile

    wheel = tmp_path / movielens.RECBOLE_WHEEL
    texts = synthetic.recbole_texts()
    with zipfile.ZipFile(wheel, "w") as archive:
        for key, member in movielens.RECBOLE_MEMBERS.items():
            archive.writestr(member, texts[key])
    with pytest.raises(DataError, match="does not match the recbole==1.2.1 release"):
        movielens.read_recbole(wheel)


def test_user_records_are_frozen():
    user = movielens._user("1", 30, "F", "writer", "00000")
    assert dataclasses.asdict(user)["user_occupation_label"] == (
        movielens.OCCUPATION_NAMES.index("writer")
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.user_id = "2"
