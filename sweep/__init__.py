"""sweep: hyperparameter sweeps for deep retrieval recommenders.

The product runs Keras 3 on the JAX backend. The backend is chosen here, before
any module of the package imports keras, because keras reads it once at import.
"""

import os

os.environ["KERAS_BACKEND"] = "jax"
# TensorFlow (data cache builds, serving export) logs C++ INFO lines otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21 announces its oneDNN kernels on stderr at import whatever the
# log level. Its work here (lookups, hashing, bucketing, a SavedModel) gains
# nothing from them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# MLflow draws a progress bar for every artifact download, a few small files here.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a tracking server MLflow prints a run link and an experiment link as
# each run ends: two lines per trial around the sweep's one. The sweep prints
# its experiment's link when it ends, and every trial's run is found there.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

# The study report draws its plots without a screen.
os.environ.setdefault("MPLBACKEND", "Agg")

__version__ = "0.1.0"
