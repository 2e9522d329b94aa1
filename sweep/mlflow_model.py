"""An exported recommender as an MLflow pyfunc model (an MLflow "model from code").

`sweep export --register` logs this file as the model's code, with the export's
`model.keras`, `candidates.npz` and `users.npz` as its artifacts, so loading it
runs this file and reads those files: nothing is unpickled. The loading
environment needs the `sweep` package (the Keras model's classes live there).

`predict` takes a DataFrame with a `user_id` column; the other query features
(`user_gender`, `raw_user_age`, `user_gender_X_raw_user_age`,
`user_occupation_label`, as the preprocessed indexes the data layer gives) are
looked up from the data when absent. It returns one row per input row: the top-k
`movie_ids`, `titles` and `scores` (k from the `k` param, default 10).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from sweep.data import QUERY_FEATURES
from sweep.serving import CandidateIndex, UserIndex

DEFAULT_K = 10


class Recommender(mlflow.pyfunc.PythonModel):
    """Query tower (Keras) + brute-force top-k over the candidate index (NumPy)."""

    def load_context(self, context):
        """Loads the Keras model and the indexes from the model's artifacts."""
        import sweep.model  # noqa: F401  (registers the model's Keras classes)
        from sweep.backend import keras

        self.model = keras.saving.load_model(context.artifacts["model"], compile=False)
        self.candidates = CandidateIndex.load(context.artifacts["candidates"])
        self.users = UserIndex.load(context.artifacts["users"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Top-k movies for each row of user features."""
        k = int((params or {}).get("k", DEFAULT_K))
        if set(QUERY_FEATURES) <= set(model_input.columns):
            features = {
                name: model_input[name].to_numpy(dtype=np.int32)
                for name in QUERY_FEATURES
            }
        else:
            rows = self.users.rows(model_input["user_id"].to_numpy())
            features = {
                name: self.users.features[name][rows] for name in QUERY_FEATURES
            }
        queries = np.asarray(self.model.query_model(features))
        top = self.candidates.top_k(queries, k)
        return pd.DataFrame(
            {
                "movie_ids": [[r.movie_id for r in row] for row in top],
                "titles": [[r.title for r in row] for row in top],
                "scores": [[r.score for r in row] for row in top],
            }
        )


mlflow.models.set_model(Recommender())
