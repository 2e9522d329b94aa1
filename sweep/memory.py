"""How much memory one configuration of the model needs, and how much there is.

A closed-form, conservative estimate from the hyperparameters and the table
sizes alone, so a study file or `sweep train` flags are checked before any
data is loaded or model built. Float32 throughout:

    bytes = 4 * (STATE_COPIES * parameters + rows * activations_per_row)

- `parameters`: every embedding table and dense layer of both towers
  (`parameter_count`, equal to the built model's count).
- `STATE_COPIES`: the weights, Adagrad's accumulators (one per weight) and the
  gradients on the device, and on the host the best weights, a checkpoint's
  weights and its accumulators (see `sweep.train.ValidationTracker`).
- `rows`: the largest batch a step sees, a training step (`batch_size`, at
  most the training ratings) or the one-batch validation.
- `activations_per_row`: each tower's embedding outputs (the title and genre
  tokens before pooling), their concatenation and every dense layer's output,
  twice (kept for the backward pass, and their gradients).
"""

from __future__ import annotations

import os
from pathlib import Path

from sweep.data import TITLE_LENGTH, TITLE_MAX_TOKENS, TRAIN_FRACTION, Vocabulary
from sweep.movielens import GENRE_NAMES, OCCUPATION_NAMES

# MovieLens 100k's table sizes, or their upper bounds (every occupation and
# genre label, title tokens at the vectorizer's cap): a configuration is
# checked without loading the data.
MOVIELENS_100K = Vocabulary(
    users=943,
    genders=2,
    occupations=len(OCCUPATION_NAMES),
    movies=1682,
    title_tokens=TITLE_MAX_TOKENS,
    genres=len(GENRE_NAMES),
    max_genres=6,
)
RATINGS = 100_000
TRAIN_RATINGS = round(RATINGS * TRAIN_FRACTION)
VALIDATION_RATINGS = RATINGS - TRAIN_RATINGS
BYTES_PER_FLOAT = 4
STATE_COPIES = 6
# Half the machine: the estimate covers the model alone; the Python and JAX
# runtime, XLA's compilations, the data, MLflow and the machine's other work
# need the rest.
MEMORY_SHARE = 0.5
# Where the physical memory cannot be read (e.g. Windows).
FALLBACK_MEMORY = 8 * 2**30
_QUERY_EMBEDDINGS = 5
_CANDIDATE_EMBEDDINGS = 3


def _layer_sizes(depth: int, width: int) -> list[int]:
    # `sweep.model.layer_sizes` without importing Keras.
    return [width * 2**i for i in reversed(range(depth))]


def _dense_parameters(inputs: int, sizes: list[int]) -> int:
    count = 0
    for units in sizes:
        count += (inputs + 1) * units
        inputs = units
    return count


def parameter_count(
    depth: int,
    width: int,
    embedding_dim: int,
    vocabulary: Vocabulary = MOVIELENS_100K,
) -> int:
    """The weights of both towers (as `RetrievalModel.count_params()` counts them).

    Args:
        depth: Dense layers per tower.
        width: Units of the last dense layer (earlier layers double).
        embedding_dim: Output dimension of every embedding table.
        vocabulary: The table sizes.

    Returns:
        The number of float32 values in the model's variables, the retrieval
        layer's table of candidate embeddings included.
    """
    v = vocabulary
    query_rows = (v.users + 1) + v.genders + v.age_bins
    query_rows += v.gender_age_crosses + v.occupations
    candidate_rows = (v.movies + 1) + (v.title_tokens + 1) + (v.genres + 1)
    sizes = _layer_sizes(depth, width)
    return (
        (query_rows + candidate_rows) * embedding_dim
        + _dense_parameters(_QUERY_EMBEDDINGS * embedding_dim, sizes)
        + _dense_parameters(_CANDIDATE_EMBEDDINGS * embedding_dim, sizes)
        + (v.movies + 1) * width
    )


def estimate_bytes(
    depth: int,
    width: int,
    embedding_dim: int,
    batch_size: int,
    vocabulary: Vocabulary = MOVIELENS_100K,
) -> int:
    """An upper estimate of the memory training one configuration takes.

    Args:
        depth: Dense layers per tower.
        width: Units of the last dense layer (earlier layers double).
        embedding_dim: Output dimension of every embedding table.
        batch_size: Ratings per training step.
        vocabulary: The table sizes.

    Returns:
        Bytes (see the module docstring for the formula).
    """
    rows = max(min(batch_size, TRAIN_RATINGS), VALIDATION_RATINGS)
    embedded = 2 * _QUERY_EMBEDDINGS  # each table's output, then concatenated
    embedded += 1 + TITLE_LENGTH + vocabulary.max_genres  # before pooling
    embedded += 2 + _CANDIDATE_EMBEDDINGS  # pooled, then concatenated
    per_row = 2 * (embedded * embedding_dim + 2 * sum(_layer_sizes(depth, width)))
    parameters = parameter_count(depth, width, embedding_dim, vocabulary)
    return BYTES_PER_FLOAT * (STATE_COPIES * parameters + rows * per_row)


def physical_memory() -> int:
    """This machine's memory in bytes, or a container's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = FALLBACK_MEMORY
    try:
        # cgroup v2: a container (docker compose) may hold less than the host.
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def limit_bytes() -> int:
    """The memory one configuration may take: `MEMORY_SHARE` of the machine."""
    return int(physical_memory() * MEMORY_SHARE)


def gib(size: int) -> str:
    """`size` bytes as GiB with one decimal (e.g. "11.6 GiB")."""
    return f"{size / 2**30:,.1f} GiB"


def over_limit(depth: int, width: int, embedding_dim: int, batch_size: int) -> str:
    """Why a configuration does not fit `limit_bytes()`, or "" if it fits.

    Args:
        depth: Dense layers per tower.
        width: Units of the last dense layer (earlier layers double).
        embedding_dim: Output dimension of every embedding table.
        batch_size: Ratings per training step.

    Returns:
        One sentence naming the configuration, its estimate and the limit.
    """
    need, limit = estimate_bytes(depth, width, embedding_dim, batch_size), limit_bytes()
    if need <= limit:
        return ""
    return (
        f"depth {depth}, width {width}, embedding_dim {embedding_dim}, batch_size "
        f"{batch_size} needs about {gib(need)} to train (estimate: weights, Adagrad "
        f"accumulators, gradients and a batch's activations), over the {gib(limit)} "
        f"a configuration may take ({MEMORY_SHARE:.0%} of this machine's "
        f"{gib(physical_memory())})"
    )
