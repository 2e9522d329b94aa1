import optuna
import pytest

from sweep.config import Param
from sweep.space import distribution, trial_seed


@pytest.mark.parametrize(
    "param, expected",
    [
        (Param("depth", low=1, high=3), optuna.distributions.IntDistribution(1, 3)),
        (
            Param("width", choices=(32, 64)),
            optuna.distributions.CategoricalDistribution((32, 64)),
        ),
        (
            Param("learning_rate", low=0.01, high=0.5, log=True),
            optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
        ),
        (
            Param("width", low=16, high=128, step=16),
            optuna.distributions.IntDistribution(16, 128, step=16),
        ),
        (
            Param("learning_rate", low=0.05, high=0.25, step=0.05),
            optuna.distributions.FloatDistribution(0.05, 0.25, step=0.05),
        ),
    ],
)
def test_space_entries_become_optuna_distributions(param, expected):
    assert distribution(param) == expected


def test_trial_seeds_differ_by_trial_and_study():
    seeds = {trial_seed(42, n) for n in range(50)}
    assert len(seeds) == 50
    assert trial_seed(42, 3) == trial_seed(42, 3)
    assert trial_seed(42, 3) != trial_seed(43, 3)


def test_param_contains_respects_step_and_choices():
    assert Param("w", low=16, high=128, step=16).contains(48)
    assert not Param("w", low=16, high=128, step=16).contains(50)
    assert not Param("w", choices=(32, 64)).contains(16)
    assert Param("lr", low=0.01, high=0.5, log=True).contains(0.05)
