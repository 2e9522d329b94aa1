"""MovieLens 100k records -> the reference's features -> cached arrays and a split.

The features are the reference's (`keras.utils.FeatureSpace` adapted on the
ratings: 10 age bins, gender and occupation lookups, a 20-bin hashed gender x age
cross, a 10,000-token title vectorizer of 16 tokens, genres shifted by one and
padded with 0, ratings rescaled to [0, 1]). Every one of them is a function of
the user or of the movie alone, so the FeatureSpace runs once over the user and
movie tables instead of once per rating, and the per-rating arrays are gathered
from those tables. The result is cached on disk, keyed by the source's checksum
and `PREPROCESSING_VERSION`; a later process loads it in well under a second and
never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

from sweep import movielens
from sweep.errors import DataError
from sweep.home import Home, atomic_write

# Bump when the features or the cache layout change: old caches are then unused.
PREPROCESSING_VERSION = 1
AGE_BINS = 10
GENDER_AGE_CROSS_BINS = 20
TITLE_MAX_TOKENS = 10_000
TITLE_LENGTH = 16
# The reference's split: a seeded shuffle, then 80% (80,000) train, 20% validation.
SPLIT_SEED = 42
TRAIN_FRACTION = 0.8
# Mixed into the split seed for the held-out test ratings (`Features.test_rows`).
_TEST_STREAM = 0x74657374  # "test"

QUERY_FEATURES = (
    "user_id",
    "user_gender",
    "raw_user_age",
    "user_gender_X_raw_user_age",
    "user_occupation_label",
)
CANDIDATE_FEATURES = ("movie_id", "movie_title_vector", "movie_genres")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Table sizes the model's embeddings need, as the reference computes them.

    Attributes:
        users: The largest user id (ids index the table directly, 0 is unused).
        genders: Gender lookup size.
        occupations: Occupation lookup size.
        movies: The number of movies (ids index the table directly, 0 unused).
        title_tokens: The title vectorizer's vocabulary size.
        genres: The largest genre label + 1.
        max_genres: The most genres one movie has.
    """

    users: int
    genders: int
    occupations: int
    movies: int
    title_tokens: int
    genres: int
    max_genres: int
    age_bins: int = AGE_BINS
    gender_age_crosses: int = GENDER_AGE_CROSS_BINS


@dataclasses.dataclass(frozen=True)
class Features:
    """The preprocessed MovieLens 100k, as arrays.

    Attributes:
        vocabulary: Table sizes for the model.
        users: Query features per user id (row = user id), `QUERY_FEATURES`.
        movies: Candidate features per movie id (row = movie id), for every movie.
        movie_titles: Each movie id's title (row 0 is empty).
        rating_user: The user id of each rating, in source order.
        rating_movie: The movie id of each rating.
        label: Each rating rescaled to [0, 1].
        source: The source description.
        checksum: The source checksum.
    """

    vocabulary: Vocabulary
    users: dict[str, np.ndarray]
    movies: dict[str, np.ndarray]
    movie_titles: np.ndarray
    rating_user: np.ndarray
    rating_movie: np.ndarray
    label: np.ndarray
    source: str
    checksum: str

    def examples(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The model inputs and labels of the given ratings (as the reference's)."""
        users = self.rating_user[rows]
        movies = self.rating_movie[rows]
        x = {name: self.users[name][users] for name in QUERY_FEATURES}
        x.update({name: self.movies[name][movies] for name in CANDIDATE_FEATURES})
        return x, self.label[rows]

    def split(
        self, test_fraction: float = 0.0, seed: int = SPLIT_SEED
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the training and validation ratings: a seeded 80/20 split.

        Args:
            test_fraction: The share of the ratings held out first (`test_rows`);
                the rest is split. With 0, the reference's split of them all.
            seed: Seeds both the held-out share and the split.
        """
        kept, _ = self._hold_out(test_fraction, seed)
        order = kept[np.random.default_rng(seed).permutation(len(kept))]
        train_size = round(len(order) * TRAIN_FRACTION)
        return order[:train_size], order[train_size:]

    def test_rows(self, test_fraction: float, seed: int = SPLIT_SEED) -> np.ndarray:
        """Rows of the held-out test ratings (none with a fraction of 0)."""
        return self._hold_out(test_fraction, seed)[1]

    def _hold_out(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows kept for the split and the rows held out, both in order."""
        rows = np.arange(len(self.label))
        # Any share above 0 holds out at least one rating: a test set that is
        # asked for is never empty.
        size = max(round(len(rows) * fraction), 1) if fraction > 0 else 0
        if size == 0:
            return rows, rows[:0]
        # A stream of its own: the split of the kept rows is seeded as before.
        held = np.random.default_rng([seed, _TEST_STREAM]).permutation(rows)[:size]
        mask = np.zeros(len(rows), dtype=bool)
        mask[held] = True
        return rows[~mask], rows[mask]


def load(spec: str = "auto", home: Home | Path | None = None, log=print) -> Features:
    """Returns the preprocessed MovieLens 100k, from the cache when it is valid.

    Args:
        spec: The `--data-source` value: auto, tfds, recbole or grouplens:PATH.
        home: The sweep home (`$SWEEP_HOME` if None).
        log: Where to say which source was used (one line).

    Returns:
        The features, built and cached on first use.

    Raises:
        DataError: The source is unknown, missing or malformed.
    """
    home = Home.from_environment() if home is None else Home.at(home)
    source = movielens.resolve_source(spec, home.downloads)
    path = cache_path(home, source.checksum)
    features = read_cache(path)
    if features is None:
        try:
            records = source.read()
        except DataError:
            if spec != "auto" or source.kind != "recbole":
                raise
            # auto's last resort: tfds downloads the data where it can.
            tfds_dir = movielens.tfds_data_dir()
            source = movielens.Source(
                "tfds", tfds_dir, movielens.tfds_checksum(tfds_dir)
            )
            records = source.read()
            path = cache_path(home, source.checksum)
        features = build_features(records, source)
        write_cache(path, features)
    else:
        # The cache is keyed by the data's checksum: the same data may now
        # come from another path, and the one used this time is what is said.
        features = dataclasses.replace(features, source=source.describe())
    log(f"MovieLens 100k from {features.source}")
    return features


def cache_path(home: Home | Path, checksum: str) -> Path:
    """The cache file for a source checksum and the current preprocessing."""
    name = f"movielens-100k-{checksum[:16]}-p{PREPROCESSING_VERSION}.npz"
    return Home.at(home).cache / name


def build_features(records: movielens.MovieLens, source: movielens.Source) -> Features:
    """Runs the reference's FeatureSpace over MovieLens records.

    Args:
        records: The tfds-identical records.
        source: Their source (recorded with the features).

    Returns:
        The features of every user, movie and rating.
    """
    import tensorflow as tf

    # Keras's IntegerLookup keeps an int64 vocabulary that JAX (x64 off) stores
    # as int32; the ids here are tiny, so the narrowing is harmless.
    warnings.filterwarnings("ignore", "Explicitly requested dtype int64")

    users = list(records.users.values())
    user_index = {u.user_id: i for i, u in enumerate(users)}
    rating_users = np.array([user_index[u] for u in records.user_id])
    movie_of = {m.movie_id: m for m in records.movies}

    def user_column(field):
        column = np.array([getattr(u, field) for u in users])
        # int32: JAX (x64 off) would truncate int64 anyway, with a warning.
        return column.astype(np.int32) if column.dtype == np.int64 else column

    feature_space = _feature_space()
    # Adapted on every rating, as the reference does: bins, lookups and the
    # title vocabulary are weighted by how often each value is rated.
    per_rating = {
        "raw_user_age": user_column("raw_user_age")[rating_users].astype("float32"),
        "user_gender": user_column("user_gender")[rating_users],
        "user_occupation_label": user_column("user_occupation_label")[rating_users],
        "user_rating": records.user_rating,
        "movie_title": np.array([movie_of[m].movie_title for m in records.movie_id]),
    }
    feature_space.adapt(tf.data.Dataset.from_tensor_slices(per_rating).batch(10_000))

    label = np.asarray(
        feature_space.preprocessors["user_rating"](records.user_rating[:, None])
    ).reshape(-1)
    user_inputs = {
        "raw_user_age": user_column("raw_user_age").astype("float32"),
        "user_gender": user_column("user_gender"),
        "user_occupation_label": user_column("user_occupation_label"),
        "user_rating": np.ones(len(users), dtype="float32"),
        "movie_title": np.full(len(users), ""),
    }
    user_ids = np.array([int(u.user_id) for u in users])
    user_table = _user_table(feature_space(user_inputs), user_ids)
    movie_table, titles, genres_count, max_genres = _movie_table(
        records, source, feature_space.preprocessors["movie_title"]
    )
    preprocessors = feature_space.preprocessors
    vocabulary = Vocabulary(
        users=int(user_ids.max()),
        genders=int(preprocessors["user_gender"].vocabulary_size()),
        occupations=int(preprocessors["user_occupation_label"].vocabulary_size()),
        movies=len(records.movies),
        title_tokens=int(preprocessors["movie_title"].vocabulary_size()),
        genres=int(genres_count),
        max_genres=int(max_genres),
    )
    return Features(
        vocabulary=vocabulary,
        users=user_table,
        movies=movie_table,
        movie_titles=np.array(titles),
        rating_user=user_ids[rating_users].astype(np.int32),
        rating_movie=records.movie_id.astype(np.int32),
        label=label.astype(np.float32),
        source=source.describe(),
        checksum=source.checksum,
    )


def _feature_space():
    """The reference's FeatureSpace (before it is adapted)."""
    from sweep.backend import keras

    space = keras.utils.FeatureSpace
    return space(
        features={
            "raw_user_age": space.float_discretized(
                num_bins=AGE_BINS, output_mode="int"
            ),
            "user_gender": space.integer_categorical(
                num_oov_indices=0, output_mode="int"
            ),
            "user_occupation_label": space.integer_categorical(
                num_oov_indices=0, output_mode="int"
            ),
            "user_rating": space.float_rescaled(scale=1.0 / 4.0, offset=-1.0 / 4.0),
            "movie_title": space.feature(
                preprocessor=keras.layers.TextVectorization(
                    max_tokens=TITLE_MAX_TOKENS,
                    output_sequence_length=TITLE_LENGTH,
                    dtype="int32",
                ),
                dtype="string",
                output_mode="float",
            ),
        },
        crosses=[
            space.cross(
                feature_names=("user_gender", "raw_user_age"),
                crossing_dim=GENDER_AGE_CROSS_BINS,
                output_mode="int",
            )
        ],
        output_mode="dict",
    )


def _user_table(encoded: dict, user_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The users' encoded features, indexed by user id (row 0 unused)."""
    encoded = {k: np.asarray(v) for k, v in encoded.items()}
    table = {}
    for name, column in (
        ("user_id", user_ids),
        ("user_gender", encoded["user_gender"]),
        ("raw_user_age", encoded["raw_user_age"]),
        ("user_gender_X_raw_user_age", encoded["user_gender_X_raw_user_age"]),
        ("user_occupation_label", encoded["user_occupation_label"]),
    ):
        rows = np.zeros(int(user_ids.max()) + 1, dtype=np.int32)
        rows[user_ids] = np.asarray(column).reshape(-1)
        table[name] = rows
    return table


def _movie_table(
    records: movielens.MovieLens, source: movielens.Source, title_vectorizer
) -> tuple[dict[str, np.ndarray], list[str], int, int]:
    """The movies' features by movie id (row 0 unused), their titles, genre sizes.

    Raises:
        DataError: The movie ids are not 1..number of movies.
    """
    movies_count = len(records.movies)
    max_genres = max(len(m.movie_genres) for m in records.movies)
    genres_count = max(g for m in records.movies for g in m.movie_genres) + 1
    titles = [""] * (movies_count + 1)
    genres = np.zeros((movies_count + 1, max_genres), dtype=np.int32)
    for movie in records.movies:
        mid = int(movie.movie_id)
        if not 1 <= mid <= movies_count:
            raise DataError(
                f"{source.describe()}: movie id {mid} is outside 1..{movies_count}; "
                "MovieLens 100k numbers its movies without gaps"
            )
        titles[mid] = movie.movie_title
        # +1 so that genre 0 stays a genre and 0 can pad (mask_zero).
        genres[mid, : len(movie.movie_genres)] = np.array(movie.movie_genres) + 1
    table = {
        "movie_id": np.arange(movies_count + 1, dtype=np.int32),
        "movie_title_vector": np.asarray(title_vectorizer(np.array(titles))).astype(
            np.int32
        ),
        "movie_genres": genres,
    }
    return table, titles, genres_count, max_genres


# --- the cache -----------------------------------------------------------------


def _arrays(features: Features) -> dict[str, np.ndarray]:
    arrays = {f"users.{k}": v for k, v in features.users.items()}
    arrays.update({f"movies.{k}": v for k, v in features.movies.items()})
    arrays.update(
        movie_titles=features.movie_titles,
        rating_user=features.rating_user,
        rating_movie=features.rating_movie,
        label=features.label,
    )
    return arrays


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_cache(path: Path, features: Features) -> None:
    """Writes the features atomically, with a digest of their content."""
    arrays = _arrays(features)
    meta = {
        "version": PREPROCESSING_VERSION,
        "vocabulary": dataclasses.asdict(features.vocabulary),
        "source": features.source,
        "checksum": features.checksum,
        "digest": _digest(arrays),
    }
    atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


def read_cache(path: Path) -> Features | None:
    """Loads cached features, or None if absent, partial, corrupt or outdated."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
        if meta.get("version") != PREPROCESSING_VERSION or meta["digest"] != _digest(
            arrays
        ):
            raise ValueError("content does not match its digest")
        return Features(
            vocabulary=Vocabulary(**meta["vocabulary"]),
            users={k[6:]: v for k, v in arrays.items() if k.startswith("users.")},
            movies={k[7:]: v for k, v in arrays.items() if k.startswith("movies.")},
            movie_titles=arrays["movie_titles"],
            rating_user=arrays["rating_user"],
            rating_movie=arrays["rating_movie"],
            label=arrays["label"],
            source=meta["source"],
            checksum=meta["checksum"],
        )
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
        EOFError,
    ) as e:
        print(f"sweep: rebuilding the data cache {path} ({e})", file=sys.stderr)
        return None
