import keras
import numpy as np
import pytest

from sweep import memory
from sweep.model import RetrievalModel, layer_sizes
from tests.helpers import VOCAB, model_batch


@pytest.mark.parametrize(
    "depth, width, embedding_dim", [(1, 4, 3), (2, 8, 5), (3, 1, 2)]
)
def test_parameter_count_is_the_built_models(depth, width, embedding_dim):
    keras.utils.set_random_seed(1)
    model = RetrievalModel(
        VOCAB,
        layer_sizes=layer_sizes(depth, width),
        embedding_dim=embedding_dim,
        retrieval_k=3,
    )
    model(model_batch(np.random.default_rng(0), 4), training=True)  # builds both towers
    assert model.count_params() == memory.parameter_count(
        depth, width, embedding_dim, VOCAB
    )


def test_estimate_covers_state_and_activations():
    params = memory.parameter_count(2, 32, 16)
    estimate = memory.estimate_bytes(2, 32, 16, batch_size=1000)
    assert estimate > memory.STATE_COPIES * 4 * params
    # A step's batch beyond the validation's rows grows the activations, up to
    # every training rating in one step.
    assert memory.estimate_bytes(2, 32, 16, 50_000) > estimate
    assert memory.estimate_bytes(2, 32, 16, 10**9) == memory.estimate_bytes(
        2, 32, 16, memory.TRAIN_RATINGS
    )


@pytest.mark.parametrize("grow", ["depth", "width", "embedding_dim"])
def test_estimate_grows_with_each_size(grow):
    base = {"depth": 2, "width": 32, "embedding_dim": 32}
    bigger = {**base, grow: base[grow] * 2}
    assert memory.estimate_bytes(**bigger, batch_size=1000) > memory.estimate_bytes(
        **base, batch_size=1000
    )


def test_over_limit_names_configuration_estimate_and_limit():
    assert memory.over_limit(3, 128, 64, 1000) == ""
    text = memory.over_limit(1, 10_000_000, 16, 1000)
    assert text.startswith("depth 1, width 10000000, embedding_dim 16, batch_size")
    assert memory.gib(memory.estimate_bytes(1, 10_000_000, 16, 1000)) in text
    assert memory.gib(memory.limit_bytes()) in text


def test_limit_is_a_share_of_this_machine():
    assert 0 < memory.limit_bytes() <= memory.physical_memory()
