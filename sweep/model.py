"""The two-tower retrieval model of keras-rs's "Deep Recommenders" example.

A query tower embeds user id, gender, age bin, gender x age cross and occupation;
a candidate tower embeds movie id, mean-pooled title tokens and mean-pooled
genres; each concatenates its embeddings and runs the same dense stack (ReLU on
all but the last layer). `keras_rs.layers.BruteForceRetrieval` retrieves the top
100 of all movies for each query. The loss is the MSE between the towers' dot
product and the rating in [0, 1]; the metric is top-100 accuracy counting only
5-star ratings (rescaled rating > 0.9). Reference:
`../shared/reference/deep_recommender.md`.

Two things make a trial run at hardware speed without changing what is
computed (see `RetrievalModel`): a `fit` batch may hold many gradient steps,
which one compiled call runs in a `lax.scan`; and evaluation retrieves once per
user, not once per rating, since a query embedding is a function of the user
alone.

The classes are registered as Keras serializable so a saved model loads with
`keras.saving.load_model` under the default `safe_mode=True`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sweep.backend import keras, keras_rs
from sweep.data import CANDIDATE_FEATURES, QUERY_FEATURES, Vocabulary

RETRIEVAL_K = 100
# Ratings rescaled above this are 5-star ratings, the only ones the metric counts.
FIVE_STARS = 0.9
METRIC_NAME = "top100_accuracy"


def layer_sizes(depth: int, width: int) -> tuple[int, ...]:
    """The dense stack of a tower, grown the way the reference grows it.

    `width` is the output layer's units and each earlier layer doubles:
    depth 1, 2, 3 at width 32 give (32,), (64, 32), (128, 64, 32).

    Args:
        depth: Number of dense layers, at least 1.
        width: Units of the last (output) layer, at least 1.

    Returns:
        The units of each layer, input side first.
    """
    if depth < 1 or width < 1:
        raise ValueError(
            f"depth and width must be at least 1, received depth={depth}, width={width}"
        )
    return tuple(width * 2**i for i in reversed(range(depth)))


def _dense_stack(sizes) -> keras.Sequential:
    stack = keras.Sequential()
    # ReLU on all but the last layer: a ReLU output would make every component
    # of the embedding non-negative.
    for units in sizes[:-1]:
        stack.add(keras.layers.Dense(units, activation="relu"))
    stack.add(keras.layers.Dense(sizes[-1]))
    return stack


def _check_table(
    table: dict[str, np.ndarray],
    what: str,
    features: tuple[str, ...],
    id_feature: str,
    ids: int,
) -> dict[str, np.ndarray]:
    """Returns `features` of a per-id table after checking it has one row per id.

    Args:
        table: Feature name to column.
        what: The table's name in error messages ("users", "candidates").
        features: The features the table must hold.
        id_feature: The feature holding the ids.
        ids: The largest id (row 0, the unused id, is part of the table).
    """
    missing = [name for name in features if name not in table]
    if missing:
        raise ValueError(f"{what} lack the features {missing}")
    rows = len(table[id_feature])
    if rows != ids + 1:
        raise ValueError(
            f"{what} hold {rows} rows, expected {ids + 1} "
            f"(one per {id_feature.replace('_', ' ')}, 0 included)"
        )
    return {name: table[name] for name in features}


def _mean_pooled_embedding(count: int, dim: int) -> keras.Sequential:
    # Index 0 pads (mask_zero), so the mean is over the real tokens only.
    return keras.Sequential(
        [
            keras.layers.Embedding(count, dim, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
        ]
    )


@keras.saving.register_keras_serializable(package="sweep")
class QueryModel(keras.Model):
    """Encodes a user (id and demographic features) into a query embedding.

    Args:
        users: The largest user id (the table has one more row: id 0 is unused).
        genders: Gender lookup size.
        age_bins: Number of age bins.
        gender_age_crosses: Number of hashed gender x age bins.
        occupations: Occupation lookup size.
        layer_sizes: Units of each dense layer.
        embedding_dim: Output dimension of every embedding table.
    """

    def __init__(
        self,
        users: int,
        genders: int,
        age_bins: int,
        gender_age_crosses: int,
        occupations: int,
        layer_sizes: tuple[int, ...],
        embedding_dim: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = dict(
            users=users,
            genders=genders,
            age_bins=age_bins,
            gender_age_crosses=gender_age_crosses,
            occupations=occupations,
            layer_sizes=tuple(layer_sizes),
            embedding_dim=embedding_dim,
        )
        self.user_embedding = keras.layers.Embedding(users + 1, embedding_dim)
        self.gender_embedding = keras.layers.Embedding(genders, embedding_dim)
        self.age_embedding = keras.layers.Embedding(age_bins, embedding_dim)
        self.gender_x_age_embedding = keras.layers.Embedding(
            gender_age_crosses, embedding_dim
        )
        self.occupation_embedding = keras.layers.Embedding(occupations, embedding_dim)
        self.dense_layers = _dense_stack(layer_sizes)

    def call(self, inputs):
        """Returns the query embeddings of a batch of user features."""
        embedded = keras.ops.concatenate(
            [
                self.user_embedding(inputs["user_id"]),
                self.gender_embedding(inputs["user_gender"]),
                self.age_embedding(inputs["raw_user_age"]),
                self.gender_x_age_embedding(inputs["user_gender_X_raw_user_age"]),
                self.occupation_embedding(inputs["user_occupation_label"]),
            ],
            axis=1,
        )
        return self.dense_layers(embedded)

    def get_config(self):
        """The constructor arguments (for saving)."""
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="sweep")
class CandidateModel(keras.Model):
    """Encodes a movie (id, title tokens, genres) into a candidate embedding.

    Args:
        movies: The number of movies (the table has one more row: id 0 unused).
        title_tokens: The title vocabulary size.
        genres: The number of genre labels.
        layer_sizes: Units of each dense layer.
        embedding_dim: Output dimension of every embedding table.
    """

    def __init__(
        self,
        movies: int,
        title_tokens: int,
        genres: int,
        layer_sizes: tuple[int, ...],
        embedding_dim: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = dict(
            movies=movies,
            title_tokens=title_tokens,
            genres=genres,
            layer_sizes=tuple(layer_sizes),
            embedding_dim=embedding_dim,
        )
        self.movie_embedding = keras.layers.Embedding(movies + 1, embedding_dim)
        # +1 as in the reference: token and genre ids are shifted to keep 0 for
        # padding.
        self.movie_title_embedding = _mean_pooled_embedding(
            title_tokens + 1, embedding_dim
        )
        self.movie_genres_embedding = _mean_pooled_embedding(genres + 1, embedding_dim)
        self.dense_layers = _dense_stack(layer_sizes)

    def call(self, inputs):
        """Returns the candidate embeddings of a batch of movie features."""
        embedded = keras.ops.concatenate(
            [
                self.movie_embedding(inputs["movie_id"]),
                self.movie_title_embedding(inputs["movie_title_vector"]),
                self.movie_genres_embedding(inputs["movie_genres"]),
            ],
            axis=1,
        )
        return self.dense_layers(embedded)

    def get_config(self):
        """The constructor arguments (for saving)."""
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="sweep")
class RetrievalModel(keras.Model):
    """The two towers, the loss, brute-force top-100 retrieval and its metric.

    Before every evaluation the candidate embeddings of all movies are
    recomputed from the candidate tower (`update_candidates`), as in the
    reference. The candidate features are not part of the saved model: call
    `set_candidates` after building or loading it.

    Speed, for sweeps (results as without them):
    - `set_users`: with every user's features known, evaluation embeds and
      retrieves each of the 943 users once and looks the top-k up per rating,
      instead of ranking all movies for each of the 20,000 validation ratings.
    - `set_step_size`: `fit` can then be given a whole epoch as one batch
      (`batch_size=len(y)`, Keras still reshuffles it every epoch); the batch is
      cut into steps of this many ratings run by one compiled `lax.scan`, so a
      step costs no Python, callback or host-to-device round trip.

    Args:
        vocabulary: Table sizes (a `Vocabulary` or its dict form).
        layer_sizes: Units of each dense layer of both towers.
        embedding_dim: Output dimension of every embedding table.
        retrieval_k: How many movies to retrieve per query.
        candidates: Features of every movie (`CANDIDATE_FEATURES`, row = id).
    """

    def __init__(
        self,
        vocabulary: Vocabulary | dict,
        layer_sizes: tuple[int, ...] = (32,),
        embedding_dim: int = 32,
        retrieval_k: int = RETRIEVAL_K,
        candidates: dict[str, np.ndarray] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vocabulary, dict):
            vocabulary = Vocabulary(**vocabulary)
        self.vocabulary = vocabulary
        self.layer_sizes = tuple(layer_sizes)
        self.embedding_dim = embedding_dim
        self.retrieval_k = retrieval_k
        self.query_model = QueryModel(
            users=vocabulary.users,
            genders=vocabulary.genders,
            age_bins=vocabulary.age_bins,
            gender_age_crosses=vocabulary.gender_age_crosses,
            occupations=vocabulary.occupations,
            layer_sizes=self.layer_sizes,
            embedding_dim=embedding_dim,
        )
        self.candidate_model = CandidateModel(
            movies=vocabulary.movies,
            title_tokens=vocabulary.title_tokens,
            genres=vocabulary.genres,
            layer_sizes=self.layer_sizes,
            embedding_dim=embedding_dim,
        )
        # Created with placeholder candidates so the layer (and a saved model) is
        # complete without data; `update_candidates` fills in the real ones.
        self.retrieval = keras_rs.layers.BruteForceRetrieval(
            candidate_embeddings=np.zeros(
                (vocabulary.movies + 1, self.layer_sizes[-1]), dtype="float32"
            ),
            k=retrieval_k,
            return_scores=False,
        )
        self.loss_fn = keras.losses.MeanSquaredError()
        self.top_k_metric = keras.metrics.SparseTopKCategoricalAccuracy(
            k=retrieval_k, from_sorted_ids=True, name=METRIC_NAME
        )
        self.candidates = None
        self.users = None
        self.step_size = None
        if candidates is not None:
            self.set_candidates(candidates)

    def set_users(self, users: dict[str, np.ndarray] | None) -> None:
        """Sets every user's query features, so evaluation ranks once per user.

        Args:
            users: `QUERY_FEATURES`, one row per user id (row 0, the unused id,
                included), or None to rank once per input row again.
        """
        if users is not None:
            users = _check_table(
                users, "users", QUERY_FEATURES, "user_id", self.vocabulary.users
            )
            users = {name: np.asarray(column) for name, column in users.items()}
        self.users = users
        # Compiled evaluation functions hold the old table as a constant.
        self.test_function = None
        self.predict_function = None

    def set_step_size(self, ratings: int | None) -> None:
        """Cuts each `fit` batch into gradient steps of `ratings` (None: don't).

        A last step shorter than `ratings` takes the batch's remainder, as
        Keras's own last batch of an epoch does.
        """
        if ratings is not None and ratings < 1:
            raise ValueError(f"step size must be at least 1, received {ratings}")
        self.step_size = ratings
        self.train_function = None

    def train_step(self, state, data):
        """Keras's step, or `lax.scan` over it for batches cut by `set_step_size`."""
        step = super().train_step
        size = self.step_size
        rows = keras.tree.flatten(data)[0].shape[0]
        if size is None or rows <= size:
            return step(state, data)
        steps = rows // size
        whole = steps * size
        stacked = keras.tree.map_structure(
            lambda a: a[:whole].reshape((steps, size, *a.shape[1:])), data
        )

        def body(state, batch):
            logs, state = step(state, batch)
            return state, logs

        state, logs = jax.lax.scan(body, state, stacked)
        # The metrics are running means, so the last step's logs cover them all.
        logs = keras.tree.map_structure(lambda v: v[-1], logs)
        if whole < rows:
            rest = keras.tree.map_structure(lambda a: a[whole:], data)
            logs, state = step(state, rest)
        return logs, state

    def set_candidates(self, candidates: dict[str, np.ndarray]) -> None:
        """Sets the features of every movie and computes their embeddings.

        Args:
            candidates: `movie_id`, `movie_title_vector`, `movie_genres`, one row
                per movie id (row 0, the unused id, included).
        """
        self.candidates = _check_table(
            candidates,
            "candidates",
            CANDIDATE_FEATURES,
            "movie_id",
            self.vocabulary.movies,
        )
        self.update_candidates()

    def update_candidates(self) -> None:
        """Recomputes every movie's embedding with the current candidate tower."""
        if self.candidates is None:
            raise ValueError("call set_candidates before retrieving")
        # dict(): Keras wraps dict attributes in a tracking type jit cannot take.
        candidates = dict(self.candidates)
        embeddings = self.candidate_model.predict(
            candidates, batch_size=len(candidates["movie_id"]), verbose=0
        )
        self.retrieval.update_candidates(embeddings)

    def call(self, inputs, training=False):
        """Embeds queries and candidates; retrieves top-k when not training."""
        query_embeddings = self.query_model(
            {name: inputs[name] for name in QUERY_FEATURES}
        )
        candidate_embeddings = self.candidate_model(
            {name: inputs[name] for name in CANDIDATE_FEATURES}
        )
        result = {
            "query_embeddings": query_embeddings,
            "candidate_embeddings": candidate_embeddings,
        }
        if not training:
            # Top-k is only needed for the metric; training skips it.
            result["predictions"] = self._retrieve(inputs, query_embeddings)
        return result

    def _retrieve(self, inputs, query_embeddings):
        if self.users is None:
            return self.retrieval(query_embeddings)
        # A row's query embedding depends on its user alone: rank every user
        # once, then give each row its user's top-k.
        top_k = self.retrieval(self.query_model(dict(self.users)))
        return keras.ops.take(top_k, inputs["user_id"], axis=0)

    def evaluate(self, *args, **kwargs):
        """Evaluates after refreshing the candidate embeddings (see the class)."""
        self.update_candidates()
        return super().evaluate(*args, **kwargs)

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        """MSE between the towers' dot product and the rescaled rating."""
        scores = keras.ops.sum(
            keras.ops.multiply(
                y_pred["query_embeddings"], y_pred["candidate_embeddings"]
            ),
            axis=1,
            keepdims=True,
        )
        return self.loss_fn(keras.ops.expand_dims(y, -1), scores, sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Top-100 accuracy of the 5-star ratings, when retrieving."""
        if "predictions" not in y_pred:
            # Training: the metric is not updated, so it is not reported.
            result = self.get_metrics_result()
            result.pop(self.top_k_metric.name, None)
            return result
        weight = keras.ops.cast(keras.ops.greater(y, FIVE_STARS), "float32")
        if sample_weight is not None:
            weight = keras.ops.multiply(weight, sample_weight)
        self.top_k_metric.update_state(
            x["movie_id"], y_pred["predictions"], sample_weight=weight
        )
        return self.get_metrics_result()

    def get_config(self):
        """The constructor arguments, without the candidates (for saving)."""
        return {
            **super().get_config(),
            "vocabulary": dataclasses.asdict(self.vocabulary),
            "layer_sizes": self.layer_sizes,
            "embedding_dim": self.embedding_dim,
            "retrieval_k": self.retrieval_k,
        }
