"""The registered pyfunc: an export folder's model and indexes, as MLflow loads them."""

import types

import numpy as np
import pandas as pd
import pytest

from sweep import export, serving, train
from sweep.data import QUERY_FEATURES


@pytest.fixture(scope="module")
def folder(synthetic_features, tmp_path_factory):
    """A small untrained model of the synthetic data, saved as an export is."""
    features = synthetic_features
    model = train.build_model(
        train.TrainConfig(width=8, embedding_dim=8, epochs=1), features
    )
    x, _ = features.examples(np.arange(4))
    model(x, training=False)
    out = tmp_path_factory.mktemp("export")
    model.save(out / export.MODEL_FILE)
    export.write_indexes(export.load_model(out / export.MODEL_FILE, features),
                         features, out)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def recommender(folder):
    from sweep.mlflow_model import Recommender

    model = Recommender()
    model.load_context(types.SimpleNamespace(artifacts={
        "model": str(folder / export.MODEL_FILE),
        "candidates": str(folder / serving.CANDIDATES_FILE),
        "users": str(folder / serving.USERS_FILE),
    }))  # fmt: skip
    return model


def test_predict_gives_the_export_folders_top_k(recommender, folder):
    users = serving.UserIndex.load(folder / serving.USERS_FILE)
    ids = users.user_ids[:3]
    got = recommender.predict(None, pd.DataFrame({"user_id": ids}), {"k": 4})
    assert list(got.columns) == ["movie_ids", "titles", "scores"]
    assert len(got) == 3 and all(len(row) == 4 for row in got["movie_ids"])
    for row, user in zip(got.itertuples(), ids, strict=True):
        expected = serving.recommend(folder, int(user), 4)
        assert row.movie_ids == [r.movie_id for r in expected]
        assert row.scores == pytest.approx([r.score for r in expected], rel=1e-4)


def test_given_query_features_are_used_as_given(recommender, folder):
    users = serving.UserIndex.load(folder / serving.USERS_FILE)
    rows = users.rows(users.user_ids[:2])
    given = pd.DataFrame({n: users.features[n][rows] for n in QUERY_FEATURES})
    by_id = recommender.predict(None, given[["user_id"]])
    assert len(by_id["movie_ids"][0]) == 10  # the default k
    assert recommender.predict(None, given)["movie_ids"].tolist() == (
        by_id["movie_ids"].tolist()
    )
