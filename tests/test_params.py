"""The searched hyperparameters' one declaration, and everything read from it."""

import math

import pytest

from sweep import cli, params
from sweep.errors import ConfigError
from sweep.train import TrainConfig


def test_the_declaration_names_the_train_config_fields_and_the_reference():
    assert params.NAMES == ("depth", "width", "embedding_dim", "learning_rate")
    config = TrainConfig()  # the reference configuration
    assert {name: getattr(config, name) for name in params.NAMES} == {
        p.name: p.reference for p in params.SEARCHED
    }
    assert [p.flag for p in params.SEARCHED] == [
        "--depth", "--width", "--embedding-dim", "--learning-rate",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("depth", 0, "a whole number of dense layers, at least 1"),
        ("depth", 2.0, "a whole number of dense layers, at least 1"),
        ("depth", True, "a whole number of dense layers, at least 1"),
        ("depth", 17, "at most 16 dense layers"),
        ("width", 1, None),
        ("learning_rate", 1, None),
        ("learning_rate", 0.0, "a positive Adagrad learning rate"),
        ("learning_rate", math.inf, "a positive Adagrad learning rate"),
        ("learning_rate", "0.1", "a positive Adagrad learning rate"),
    ],
)
def test_one_rule_per_hyperparameter(name, value, problem):
    found = params.BY_NAME[name].problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_the_same_rule_in_train_config_and_in_study_files():
    with pytest.raises(ConfigError, match="depth = 17: expected at most 16 dense"):
        TrainConfig(depth=17)
    with pytest.raises(ConfigError, match="width = 0: expected a whole number"):
        TrainConfig(width=0)


def test_text_and_table_forms():
    p = {"depth": 2, "width": 64, "embedding_dim": 32, "learning_rate": 0.123456}
    assert params.text(p) == "depth 2 width 64 emb 32 lr 0.1235"
    assert params.text({}) == ""
    assert params.header() == "depth  width   emb        lr"
    assert params.row(p) == "    2     64    32    0.1235"
    assert len(params.row(p)) == len(params.header())


def test_train_flags_come_from_the_declaration():
    args = cli.build_parser().parse_args(["train", "--embedding-dim", "8"])
    assert {name: getattr(args, name) for name in params.NAMES} == {
        "depth": 1, "width": 32, "embedding_dim": 8, "learning_rate": 0.05,
    }  # fmt: skip
