"""End-to-end runs on the real MovieLens 100k (the RecBole wheel's copy)."""

import dataclasses
import json

import pytest

from sweep import memory, movielens
from tests.helpers import run_sweep

pytestmark = pytest.mark.slow


def test_real_records_hold_what_the_reference_printed(real_records):
    # The first records `tfds.load` printed in the reference.
    ratings = real_records.rating_records()
    wanted = {
        "bucketized_user_age": 45.0,
        "movie_genres": (movielens.GENRE_NAMES.index("Drama"),),
        "movie_id": "357",
        "movie_title": "One Flew Over the Cuckoo's Nest (1975)",
        "raw_user_age": 46.0,
        "timestamp": 879024327,
        "user_gender": True,
        "user_id": "138",
        "user_occupation_label": 4,
        "user_occupation_text": "doctor",
        "user_rating": 4.0,
        "user_zip_code": "53211",
    }
    assert wanted in ratings
    movies = list(real_records.movie_records())
    assert {"movie_id": "1681", "movie_title": "You So Crazy (1994)",
            "movie_genres": (4,)} in movies  # fmt: skip
    assert len(movies) == 1682
    assert len(real_records.user_id) == 100_000
    assert len(real_records.users) == 943


def test_real_features_have_the_reference_shapes(real_features):
    v = real_features.vocabulary
    assert (v.users, v.movies, v.genders, v.max_genres) == (943, 1682, 2, 6)
    # The memory estimate's sizes are the real ones or bounds of them.
    for name, bound in dataclasses.asdict(memory.MOVIELENS_100K).items():
        assert getattr(v, name) <= bound, name
    train, val = real_features.split()
    assert (len(train), len(val)) == (80_000, 20_000)


def test_reference_configuration_learns_above_chance(real_home, real_features):
    result = run_sweep(
        "train", "--data-source", "recbole", "--epochs", "5", "--validation-freq",
        "5", "--json", env={"SWEEP_HOME": str(real_home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # Chance is 100 of 1,683 candidates (~0.06); the reference had 0.18 here.
    assert summary["best_val_top100_accuracy"] > 0.12
