import math

import numpy as np
import pytest

from sweep.errors import ConfigError, TrialFailed
from sweep.train import TrainConfig, train


def test_validation_epochs_include_the_last():
    assert TrainConfig(epochs=30, validation_freq=5).validation_epochs() == [
        5, 10, 15, 20, 25, 30,
    ]  # fmt: skip
    assert TrainConfig(epochs=7, validation_freq=3).validation_epochs() == [3, 6, 7]
    assert TrainConfig(epochs=2, validation_freq=5).validation_epochs() == [2]


def test_params_carry_layer_sizes():
    params = TrainConfig(depth=3, width=16).params()
    assert params["layer_sizes"] == [64, 32, 16]
    assert set(params) == {
        "depth", "width", "layer_sizes", "embedding_dim", "learning_rate",
    }  # fmt: skip


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("depth", 0, "depth = 0: expected a whole number of dense layers, at least 1"),
        ("epochs", 2.5, "epochs = 2.5"),
        (
            "learning_rate",
            0.0,
            "learning_rate = 0.0: expected a positive Adagrad learning rate",
        ),
        ("learning_rate", -1, "learning_rate = -1"),
        ("learning_rate", math.nan, "learning_rate = nan"),
    ],
)
def test_bad_config_names_field_and_value(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_train_reports_each_validation_and_the_best(synthetic_features):
    seen = []
    config = TrainConfig(epochs=3, validation_freq=2, batch_size=32, seed=3)
    result = train(config, synthetic_features, on_validation=seen.append)
    assert [v.epoch for v in result.validations] == [2, 3]
    assert seen == result.validations
    assert len(result.losses) == 3
    assert result.best.val_top100_accuracy == max(
        v.val_top100_accuracy for v in result.validations
    )
    summary = result.summary()
    assert summary["best_epoch"] == result.best.epoch
    assert summary["params"]["layer_sizes"] == [32]
    assert result.best_weights and all(
        isinstance(w, np.ndarray) for w in result.best_weights
    )


def test_a_validation_callback_can_end_training_there(synthetic_features):
    checkpoints = []
    config = TrainConfig(epochs=5, validation_freq=2, batch_size=32, seed=3)
    result = train(
        config,
        synthetic_features,
        on_validation=lambda v: v.epoch == 2,
        on_checkpoint=checkpoints.append,
    )
    assert [v.epoch for v in result.validations] == [2]
    assert len(result.losses) == 2
    assert result.best.epoch == 2 and result.best_weights
    assert checkpoints == []  # nothing to resume: the run ended there


def test_same_seed_same_result(synthetic_features):
    config = TrainConfig(epochs=2, validation_freq=1, batch_size=16, seed=11)
    a = train(config, synthetic_features)
    b = train(config, synthetic_features)
    assert a.losses == b.losses
    c = train(
        TrainConfig(epochs=2, validation_freq=1, batch_size=16, seed=12),
        synthetic_features,
    )
    assert c.losses != a.losses


def test_diverging_loss_fails_the_trial(synthetic_features):
    config = TrainConfig(epochs=3, validation_freq=1, learning_rate=1e30, batch_size=8)
    with pytest.raises(TrialFailed, match="diverged"):
        train(config, synthetic_features)
