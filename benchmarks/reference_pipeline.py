"""The reference's pipeline, re-created as its code does it (the baseline (a)).

`../shared/reference/deep_recommender.md` feeds Keras from tf.data: the
FeatureSpace is adapted on the ratings, then mapped over every rating, and the
datasets are shuffled with seed 42, split 80,000/20,000, batched by 1,000 and
cached; `fit` validates every 5 epochs and `evaluate` refreshes the candidates
first. Only `tfds.load` is replaced: this machine cannot download, so the same
records come from `sweep.movielens` (identical to tfds's, see its tests) as
`tf.data` datasets of the same dicts. The model is the reference's, written out
here again rather than imported from `sweep.model`, so that the baseline is the
reference and not the project.
"""

from __future__ import annotations

import os
import time

os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import keras_rs  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sweep import movielens  # noqa: E402

AGE_BINS_COUNT = 10
USER_GENDER_CROSS_COUNT = 20


def datasets(records: movielens.MovieLens) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The tfds `movielens/100k-ratings` and `-movies` datasets, from records."""

    def dataset(rows: list[dict], ragged: str) -> tf.data.Dataset:
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        tensors = {
            key: tf.ragged.constant(values, dtype=tf.int64)
            if key == ragged
            else tf.constant(values)
            for key, values in columns.items()
        }
        return tf.data.Dataset.from_tensor_slices(tensors)

    ratings = [
        {
            **r,
            "movie_genres": list(r["movie_genres"]),
            "user_rating": np.float32(r["user_rating"]),
            "raw_user_age": np.float32(r["raw_user_age"]),
            "bucketized_user_age": np.float32(r["bucketized_user_age"]),
        }
        for r in records.rating_records()
    ]
    movies = [
        {**m, "movie_genres": list(m["movie_genres"])} for m in records.movie_records()
    ]
    return dataset(ratings, "movie_genres"), dataset(movies, "movie_genres")


class Pipeline:
    """The reference's preprocessing and datasets (its sections 2 to 5).

    Attributes:
        train: The training dataset (batched by 1,000, cached).
        test: The validation dataset (batched by 1,000, cached).
        seconds: Wall time of the preprocessing set-up (adapt and candidates).
    """

    def __init__(self, ratings: tf.data.Dataset, movies: tf.data.Dataset):
        start = time.perf_counter()
        self.users_count = int(
            ratings.map(lambda x: tf.strings.to_number(x["user_id"], out_type=tf.int32))
            .reduce(tf.constant(0, tf.int32), tf.maximum)
            .numpy()
        )
        self.movies_count = int(movies.cardinality().numpy())
        user_age_feature = keras.utils.FeatureSpace.float_discretized(
            num_bins=AGE_BINS_COUNT, output_mode="int"
        )
        user_rating_feature = keras.utils.FeatureSpace.float_rescaled(
            scale=1.0 / 4.0, offset=-1.0 / 4.0
        )
        user_gender_feature = keras.utils.FeatureSpace.integer_categorical(
            num_oov_indices=0, output_mode="int"
        )
        user_occupation_feature = keras.utils.FeatureSpace.integer_categorical(
            num_oov_indices=0, output_mode="int"
        )
        user_gender_age_cross = keras.utils.FeatureSpace.cross(
            feature_names=("user_gender", "raw_user_age"),
            crossing_dim=USER_GENDER_CROSS_COUNT,
            output_mode="int",
        )
        title_vectorizer = keras.layers.TextVectorization(
            max_tokens=10_000, output_sequence_length=16, dtype="int32"
        )
        title_vectorizer.adapt(movies.map(lambda x: x["movie_title"]))
        title_feature = keras.utils.FeatureSpace.feature(
            preprocessor=title_vectorizer, dtype="string", output_mode="float"
        )
        self.title_token_count = title_vectorizer.vocabulary_size()
        feature_space = keras.utils.FeatureSpace(
            features={
                "raw_user_age": user_age_feature,
                "user_gender": user_gender_feature,
                "user_occupation_label": user_occupation_feature,
                "user_rating": user_rating_feature,
                "movie_title": title_feature,
            },
            crosses=[user_gender_age_cross],
            output_mode="dict",
        )
        feature_space.adapt(ratings)
        self.genders_count = feature_space.preprocessors[
            "user_gender"
        ].vocabulary_size()
        self.occupations_count = feature_space.preprocessors[
            "user_occupation_label"
        ].vocabulary_size()

        movie_titles = [""] * (self.movies_count + 1)
        movie_genres = [[]] * (self.movies_count + 1)
        for x in movies.as_numpy_iterator():
            movie_id = int(x["movie_id"])
            movie_titles[movie_id] = x["movie_title"]
            movie_genres[movie_id] = x["movie_genres"].tolist()
        max_genres = 0
        max_genre_id = 0
        for one_movie_genres in movie_genres:
            max_genres = max(max_genres, len(one_movie_genres))
            if one_movie_genres:
                max_genre_id = max(max_genre_id, max(one_movie_genres))
        self.genres_count = max_genre_id + 1
        movie_genres = [
            [g + 1 for g in genres] + [0] * (max_genres - len(genres))
            for genres in movie_genres
        ]
        self.movies_dataset = {
            "movie_id": keras.ops.arange(0, self.movies_count + 1, dtype="int32"),
            "movie_title_vector": title_vectorizer(movie_titles),
            "movie_genres": keras.ops.convert_to_tensor(movie_genres, dtype="int32"),
        }

        def preprocess_rating(x):
            features = feature_space(
                {
                    "raw_user_age": x["raw_user_age"],
                    "user_gender": x["user_gender"],
                    "user_occupation_label": x["user_occupation_label"],
                    "user_rating": x["user_rating"],
                    "movie_title": x["movie_title"],
                }
            )
            features = {k: tf.squeeze(v, axis=0) for k, v in features.items()}
            genres = x["movie_genres"]
            return (
                {
                    "user_id": int(x["user_id"]),
                    "raw_user_age": features["raw_user_age"],
                    "user_gender": features["user_gender"],
                    "user_occupation_label": features["user_occupation_label"],
                    # The reference squeezes axis -1; with Keras 3.15 the
                    # cross is already a scalar here, so reshape instead.
                    "user_gender_X_raw_user_age": tf.reshape(
                        features["user_gender_X_raw_user_age"], []
                    ),
                    "movie_id": int(x["movie_id"]),
                    "movie_title_vector": features["movie_title"],
                    "movie_genres": tf.pad(
                        genres + 1, [[0, max_genres - tf.shape(genres)[0]]]
                    ),
                },
                features["user_rating"],
            )

        shuffled = ratings.map(preprocess_rating).shuffle(
            100_000, seed=42, reshuffle_each_iteration=False
        )
        self.train = shuffled.take(80_000).batch(1000).cache()
        self.test = shuffled.skip(80_000).take(20_000).batch(1000).cache()
        self.seconds = time.perf_counter() - start

    def model(self, layer_sizes=(32,), embedding_dimension=32) -> keras.Model:
        """The reference's `RetrievalModel`, not compiled."""
        return _retrieval_model(self, layer_sizes, embedding_dimension)


def _retrieval_model(p: Pipeline, layer_sizes, embedding_dimension) -> keras.Model:
    def dense_stack():
        stack = keras.Sequential()
        for layer_size in layer_sizes[:-1]:
            stack.add(keras.layers.Dense(layer_size, activation="relu"))
        stack.add(keras.layers.Dense(layer_sizes[-1]))
        return stack

    def pooled(count):
        return keras.Sequential(
            [
                keras.layers.Embedding(count, embedding_dimension, mask_zero=True),
                keras.layers.GlobalAveragePooling1D(),
            ]
        )

    class QueryModel(keras.Model):
        def __init__(self):
            super().__init__()
            dim = embedding_dimension
            self.user_embedding = keras.layers.Embedding(p.users_count + 1, dim)
            self.gender_embedding = keras.layers.Embedding(p.genders_count, dim)
            self.age_embedding = keras.layers.Embedding(AGE_BINS_COUNT, dim)
            self.gender_x_age_embedding = keras.layers.Embedding(
                USER_GENDER_CROSS_COUNT, dim
            )
            self.occupation_embedding = keras.layers.Embedding(p.occupations_count, dim)
            self.dense_layers = dense_stack()

        def call(self, inputs):
            return self.dense_layers(
                keras.ops.concatenate(
                    [
                        self.user_embedding(inputs["user_id"]),
                        self.gender_embedding(inputs["user_gender"]),
                        self.age_embedding(inputs["raw_user_age"]),
                        self.gender_x_age_embedding(
                            inputs["user_gender_X_raw_user_age"]
                        ),
                        self.occupation_embedding(inputs["user_occupation_label"]),
                    ],
                    axis=1,
                )
            )

    class CandidateModel(keras.Model):
        def __init__(self):
            super().__init__()
            dim = embedding_dimension
            self.movie_embedding = keras.layers.Embedding(p.movies_count + 1, dim)
            self.movie_title_embedding = pooled(p.title_token_count + 1)
            self.movie_genres_embedding = pooled(p.genres_count + 1)
            self.dense_layers = dense_stack()

        def call(self, inputs):
            return self.dense_layers(
                keras.ops.concatenate(
                    [
                        self.movie_embedding(inputs["movie_id"]),
                        self.movie_title_embedding(inputs["movie_title_vector"]),
                        self.movie_genres_embedding(inputs["movie_genres"]),
                    ],
                    axis=1,
                )
            )

    class RetrievalModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.query_model = QueryModel()
            self.candidate_model = CandidateModel()
            self.retrieval = keras_rs.layers.BruteForceRetrieval(
                k=100, return_scores=False
            )
            self.update_candidates()
            self.loss_fn = keras.losses.MeanSquaredError()
            self.top_k_metric = keras.metrics.SparseTopKCategoricalAccuracy(
                k=100, from_sorted_ids=True
            )

        def update_candidates(self):
            self.retrieval.update_candidates(
                self.candidate_model.predict(p.movies_dataset, verbose=0)
            )

        def call(self, inputs, training=False):
            query_embeddings = self.query_model(
                {
                    "user_id": inputs["user_id"],
                    "raw_user_age": inputs["raw_user_age"],
                    "user_gender": inputs["user_gender"],
                    "user_occupation_label": inputs["user_occupation_label"],
                    "user_gender_X_raw_user_age": inputs["user_gender_X_raw_user_age"],
                }
            )
            candidate_embeddings = self.candidate_model(
                {
                    "movie_id": inputs["movie_id"],
                    "movie_title_vector": inputs["movie_title_vector"],
                    "movie_genres": inputs["movie_genres"],
                }
            )
            result = {
                "query_embeddings": query_embeddings,
                "candidate_embeddings": candidate_embeddings,
            }
            if not training:
                result["predictions"] = self.retrieval(query_embeddings)
            return result

        def evaluate(self, *args, **kwargs):
            self.update_candidates()
            return super().evaluate(*args, **kwargs)

        def compute_loss(self, x, y, y_pred, sample_weight, training=True):
            labels = keras.ops.expand_dims(y, -1)
            scores = keras.ops.sum(
                keras.ops.multiply(
                    y_pred["query_embeddings"], y_pred["candidate_embeddings"]
                ),
                axis=1,
                keepdims=True,
            )
            return self.loss_fn(labels, scores, sample_weight)

        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            if "predictions" in y_pred:
                rating_weight = keras.ops.cast(keras.ops.greater(y, 0.9), "float32")
                sample_weight = (
                    rating_weight
                    if sample_weight is None
                    else keras.ops.multiply(rating_weight, sample_weight)
                )
                self.top_k_metric.update_state(
                    x["movie_id"], y_pred["predictions"], sample_weight=sample_weight
                )
                return self.get_metrics_result()
            metrics = self.get_metrics_result()
            metrics.pop(self.top_k_metric.name, None)
            return metrics

    return RetrievalModel()
