import keras
import numpy as np
import pytest

from sweep.model import RetrievalModel, layer_sizes
from tests.helpers import VOCAB, model_batch


def _candidates(rng):
    return {
        "movie_id": np.arange(VOCAB.movies + 1, dtype=np.int32),
        "movie_title_vector": rng.integers(
            0, VOCAB.title_tokens, (VOCAB.movies + 1, 16)
        ),
        "movie_genres": rng.integers(0, VOCAB.genres + 1, (VOCAB.movies + 1, 3)),
    }


@pytest.fixture
def model():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    m = RetrievalModel(VOCAB, layer_sizes=(8, 4), embedding_dim=6, retrieval_k=3)
    m.set_candidates(_candidates(rng))
    return m


@pytest.mark.parametrize(
    "depth, width, sizes",
    [(1, 32, (32,)), (2, 32, (64, 32)), (3, 32, (128, 64, 32)), (2, 64, (128, 64))],
)
def test_layer_sizes_double_towards_the_input(depth, width, sizes):
    assert layer_sizes(depth, width) == sizes


def test_layer_sizes_refuse_zero():
    with pytest.raises(ValueError, match="at least 1"):
        layer_sizes(0, 32)


def test_towers_output_the_last_layer_width(model):
    out = model(model_batch(np.random.default_rng(1), 7), training=False)
    assert out["query_embeddings"].shape == (7, 4)
    assert out["candidate_embeddings"].shape == (7, 4)
    assert out["predictions"].shape == (7, 3)
    training = model(model_batch(np.random.default_rng(1), 7), training=True)
    assert "predictions" not in training


def test_dense_stack_relu_on_all_but_last(model):
    layers = model.query_model.dense_layers.layers
    assert [layer.units for layer in layers] == [8, 4]
    assert layers[0].activation is keras.activations.relu
    assert layers[-1].activation is keras.activations.linear


def test_padding_does_not_change_mean_pooled_title(model):
    pooled = model.candidate_model.movie_title_embedding
    short = np.array([[3, 5, 0, 0]])
    longer = np.array([[3, 5, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(pooled(short), pooled(longer), rtol=1e-6)
    table = model.candidate_model.movie_title_embedding.layers[0].embeddings
    expected = (np.asarray(table[3]) + np.asarray(table[5])) / 2
    np.testing.assert_allclose(np.asarray(pooled(short))[0], expected, rtol=1e-5)


def test_retrieval_returns_the_best_scoring_movies(model):
    rng = np.random.default_rng(2)
    queries = model.query_model(model_batch(rng, 4))
    candidates = model.candidate_model.predict(dict(model.candidates), verbose=0)
    scores = np.asarray(queries) @ np.asarray(candidates).T
    expected = np.argsort(-scores, axis=1)[:, :3]
    np.testing.assert_array_equal(np.asarray(model.retrieval(queries)), expected)


def test_metric_counts_only_five_star_ratings(model):
    rng = np.random.default_rng(3)
    x = model_batch(rng, 6)
    predictions = np.asarray(model(x, training=False)["predictions"])
    hit = predictions[:, 0]
    miss = np.array([min(set(range(VOCAB.movies + 1)) - set(p)) for p in predictions])
    # The first three ratings are 5 stars and their movie is the top retrieved
    # one (a hit); the last three are below 5 stars and miss.
    x["movie_id"] = np.concatenate([hit[:3], miss[3:]]).astype(np.int32)
    y = np.array([1.0, 1.0, 1.0, 0.75, 0.5, 0.0], dtype=np.float32)
    model.compile(optimizer="adagrad")
    logs = model.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    assert logs["top100_accuracy"] == pytest.approx(1.0)
    # Same ratings, now the 5-star ones miss and the others hit: accuracy 0.
    x["movie_id"] = np.concatenate([miss[:3], hit[3:]]).astype(np.int32)
    logs = model.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    assert logs["top100_accuracy"] == pytest.approx(0.0)


def test_loss_is_mse_of_dot_product(model):
    rng = np.random.default_rng(4)
    x = model_batch(rng, 5)
    y = rng.uniform(0, 1, 5).astype(np.float32)
    out = model(x, training=True)
    scores = np.sum(
        np.asarray(out["query_embeddings"]) * np.asarray(out["candidate_embeddings"]),
        axis=1,
    )
    loss = model.compute_loss(x, y, out)
    assert float(loss) == pytest.approx(np.mean((scores - y) ** 2), rel=1e-5)


def test_candidates_must_cover_every_movie(model):
    rng = np.random.default_rng(5)
    candidates = _candidates(rng)
    candidates = {k: v[:-1] for k, v in candidates.items()}
    with pytest.raises(ValueError, match="expected 7"):
        model.set_candidates(candidates)


def _users(rng):
    n = VOCAB.users + 1
    return {
        "user_id": np.arange(n, dtype=np.int32),
        "user_gender": rng.integers(0, 2, n),
        "raw_user_age": rng.integers(0, 10, n),
        "user_gender_X_raw_user_age": rng.integers(0, 20, n),
        "user_occupation_label": rng.integers(0, 3, n),
    }


def _ratings_of(users, rng, n):
    """Ratings whose user features are their user's row, as in MovieLens."""
    x = model_batch(rng, n)
    x.update({name: column[x["user_id"]] for name, column in users.items()})
    return x, rng.choice([0.0, 0.5, 1.0], n).astype(np.float32)


def test_ranking_once_per_user_evaluates_the_same(model):
    rng = np.random.default_rng(6)
    users = _users(rng)
    x, y = _ratings_of(users, rng, 40)
    model.compile(optimizer="adagrad")
    per_row = model.evaluate(x, y, batch_size=40, return_dict=True, verbose=0)
    model.set_users(users)
    per_user = model.evaluate(x, y, batch_size=40, return_dict=True, verbose=0)
    assert per_user == pytest.approx(per_row)
    assert 0 < per_row["top100_accuracy"] < 1  # the check means something


def test_users_must_cover_every_user(model):
    users = {k: v[:-1] for k, v in _users(np.random.default_rng(7)).items()}
    with pytest.raises(ValueError, match="expected 6"):
        model.set_users(users)


@pytest.mark.parametrize("rows", [24, 26])  # whole steps, and a shorter last step
def test_steps_in_one_batch_train_as_keras_batches(rows):
    rng = np.random.default_rng(8)
    candidates = _candidates(rng)
    x, y = _ratings_of(_users(rng), rng, rows)

    def trained(step_size):
        keras.utils.set_random_seed(1)
        m = RetrievalModel(VOCAB, layer_sizes=(8, 4), embedding_dim=6, retrieval_k=3)
        m.set_candidates(candidates)
        m.compile(optimizer=keras.optimizers.Adagrad(0.5))
        if step_size:
            m.set_step_size(step_size)
            m.fit(x, y, batch_size=rows, epochs=2, shuffle=False, verbose=0)
        else:
            m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return m.get_weights(), m.optimizer.iterations.numpy()

    keras_weights, keras_steps = trained(None)
    scan_weights, scan_steps = trained(8)
    assert scan_steps == keras_steps == 2 * -(-rows // 8)
    for a, b in zip(keras_weights, scan_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
