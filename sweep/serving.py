"""Recommendations from an exported model: the candidate and user indexes.

An export (see `sweep.export`) holds every movie's candidate embedding
(`candidates.npz`) and every MovieLens user's query features and query
embedding (`users.npz`), both computed by the exported model. Recommending for a
known user is then a dot product with every movie and a top-k, in NumPy: no
Keras, JAX or TensorFlow import, so `sweep recommend` answers in well under a
second. The MLflow pyfunc form (`sweep.mlflow_model`) runs the query tower on
the features it is given and ranks with the same `CandidateIndex`.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from sweep.data import QUERY_FEATURES
from sweep.errors import SweepError

CANDIDATES_FILE = "candidates.npz"
USERS_FILE = "users.npz"


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One recommended movie."""

    movie_id: int
    title: str
    score: float


@dataclasses.dataclass(frozen=True)
class CandidateIndex:
    """Every movie's id, title and candidate embedding.

    Attributes:
        movie_ids: The MovieLens movie ids.
        titles: Their titles.
        embeddings: Their candidate embeddings, one row per movie.
    """

    movie_ids: np.ndarray
    titles: np.ndarray
    embeddings: np.ndarray

    @classmethod
    def load(cls, path: Path) -> CandidateIndex:
        """Reads `candidates.npz`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(data["movie_id"], data["title"], data["embedding"])

    def save(self, path: Path) -> None:
        """Writes `candidates.npz`."""
        np.savez(
            path, movie_id=self.movie_ids, title=self.titles, embedding=self.embeddings
        )

    def top_k(self, queries: np.ndarray, k: int) -> list[list[Recommendation]]:
        """The k highest-scoring movies of each query embedding, best first.

        Ties keep the lower movie id first, so results are reproducible.
        """
        if k < 1:
            raise SweepError(f"k = {k}: expected a whole number of at least 1")
        k = min(k, len(self.movie_ids))
        scores = np.asarray(queries, dtype=np.float32) @ self.embeddings.T
        # argpartition picks the top k in linear time; only those are sorted.
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, candidates in zip(scores, top, strict=True):
            order = candidates[np.lexsort((candidates, -row[candidates]))]
            results.append(
                [
                    Recommendation(
                        int(self.movie_ids[i]), str(self.titles[i]), float(row[i])
                    )
                    for i in order
                ]
            )
        return results


@dataclasses.dataclass(frozen=True)
class UserIndex:
    """Every MovieLens user's query features and query embedding.

    Attributes:
        user_ids: The user ids, ascending.
        features: `QUERY_FEATURES` per user, in `user_ids` order (`user_id`
            among them).
        embeddings: The query embedding of each user.
    """

    user_ids: np.ndarray
    features: dict[str, np.ndarray]
    embeddings: np.ndarray

    @classmethod
    def load(cls, path: Path) -> UserIndex:
        """Reads `users.npz`."""
        with np.load(path, allow_pickle=False) as data:
            features = {name: data[name] for name in QUERY_FEATURES}
            return cls(features["user_id"], features, data["query_embedding"])

    def save(self, path: Path) -> None:
        """Writes `users.npz`."""
        np.savez(path, query_embedding=self.embeddings, **self.features)

    def rows(self, user_ids) -> np.ndarray:
        """The rows of the given user ids.

        Raises:
            SweepError: An id is not a MovieLens user of the export's data.
        """
        user_ids = np.asarray(user_ids).reshape(-1)
        rows = np.searchsorted(self.user_ids, user_ids)
        rows = np.minimum(rows, len(self.user_ids) - 1)
        unknown = user_ids[self.user_ids[rows] != user_ids]
        if len(unknown):
            raise SweepError(
                f"unknown user id {unknown[0]}: MovieLens users here are "
                f"{self.user_ids.min()}..{self.user_ids.max()}"
            )
        return rows


def load_indexes(folder: Path) -> tuple[CandidateIndex, UserIndex]:
    """The candidate and user indexes of an export folder.

    Raises:
        SweepError: The folder is not a complete export, or an index in it is
            damaged.
    """
    folder = Path(folder)
    missing = [n for n in (CANDIDATES_FILE, USERS_FILE) if not (folder / n).is_file()]
    if missing:
        raise SweepError(
            f"{folder} is not a sweep export (no {', '.join(missing)}); create "
            "one with `sweep export STUDY --out DIR`"
        )
    return (
        _load(CandidateIndex, folder / CANDIDATES_FILE),
        _load(UserIndex, folder / USERS_FILE),
    )


def _load(
    index: type[CandidateIndex] | type[UserIndex], path: Path
) -> CandidateIndex | UserIndex:
    try:
        return index.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        # NumPy's own message (e.g. about pickles) would point the wrong way.
        raise SweepError(
            f"{path} is damaged or not an index sweep export wrote; export again "
            "with `sweep export STUDY --out DIR --force`"
        ) from None


def recommend(folder: Path, user_id: int, k: int = 10) -> list[Recommendation]:
    """The top-k movies for a MovieLens user, from an export folder."""
    candidates, users = load_indexes(folder)
    rows = users.rows([user_id])
    return candidates.top_k(users.embeddings[rows], k)[0]


def recommend_registered(
    uri: str, tracking_uri: str, user_id: int, k: int = 10
) -> list[Recommendation]:
    """The top-k movies for a MovieLens user, from a registered pyfunc model.

    Args:
        uri: A model URI such as `models:/NAME@champion`.
        tracking_uri: The MLflow store holding the registry.
        user_id: The MovieLens user.
        k: How many movies.

    Raises:
        SweepError: The model or the user is unknown.
    """
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as e:
        raise SweepError(
            f"cannot load model {uri} from {tracking_uri} ({e.message.splitlines()[0]})"
            "; register one with `sweep export STUDY --out DIR`"
        ) from None
    try:
        frame = model.predict(pd.DataFrame({"user_id": [user_id]}), params={"k": k})
    except MlflowException as e:
        raise SweepError(f"model {uri} refused the input ({e.message})") from None
    row = frame.iloc[0]
    return [
        Recommendation(int(m), str(t), float(s))
        for m, t, s in zip(row["movie_ids"], row["titles"], row["scores"], strict=True)
    ]
