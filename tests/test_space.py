import dataclasses
import warnings
from pathlib import Path

import optuna
import pytest

from sweep.config import SAMPLERS, Param, load_study
from sweep.space import distribution, make_pruner, make_sampler, suggest, trial_seed

DEFAULT_STUDY = Path(__file__).parent.parent / "studies" / "deep_retrieval.toml"


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


def _proposals(sampler_name: str, seed: int, n: int = 14) -> list[dict]:
    """The points a sampler proposes on the default study's space.

    The baselines go first, as a launch queues them; odd trials are pruned
    after one report, and the study is taken up again halfway with the sampler
    reseeded past its trials, as a resume does.
    """
    default = load_study(DEFAULT_STUDY)
    settings = dataclasses.replace(default.study, sampler=sampler_name, seed=seed)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(settings), pruner=_PruneOdd()
    )
    for baseline in default.baselines:
        study.enqueue_trial(baseline)

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, default)
        value = config.depth / 10 - abs(config.learning_rate - 0.1)
        trial.report(value, 5)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n // 2)
    study.sampler = make_sampler(settings, offset=len(study.trials))
    study.optimize(objective, n_trials=n - n // 2)
    return [t.params for t in study.trials]


class _PruneOdd(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_searches_the_default_space_reproducibly(name, caplog):
    if name == "gp":
        pytest.importorskip("torch", reason="the gp extra (PyTorch) is not installed")
    # Neither the sampler's experimental warnings nor CMA-ES's log line about
    # the categorical parameters (on every trial) reach the user.
    optuna.logging.enable_propagation()
    try:
        with warnings.catch_warnings(), caplog.at_level("WARNING", "optuna"):
            warnings.simplefilter("error")
            first = _proposals(name, seed=1)
    finally:
        optuna.logging.disable_propagation()
    assert [r.getMessage() for r in caplog.records] == []
    space = load_study(DEFAULT_STUDY).space
    assert len(first) == 14
    assert all(space[k].contains(v) for point in first for k, v in point.items())
    assert _proposals(name, seed=1) == first
    assert _proposals(name, seed=2)[3:] != first[3:]  # past the baselines


def test_sampler_names_pick_optuna_samplers():
    default = load_study(DEFAULT_STUDY).study

    def made(name):
        return make_sampler(dataclasses.replace(default, sampler=name))

    assert made("tpe")._constant_liar and not made("tpe")._multivariate
    assert made("tpe-multivariate")._multivariate
    assert made("tpe-multivariate")._constant_liar
    assert isinstance(made("cmaes"), optuna.samplers.CmaEsSampler)
    assert isinstance(made("qmc"), optuna.samplers.QMCSampler)
    assert isinstance(made("random"), optuna.samplers.RandomSampler)
    assert isinstance(made("gp"), optuna.samplers.GPSampler)


@pytest.mark.parametrize("pruner", ["median", "percentile", "hyperband"])
def test_no_trial_is_pruned_before_prune_from_epoch(pruner):
    # Trials report at every 5th epoch: five good curves, then good and bad
    # ones in turn. The earliest epoch any trial is stopped at is the first
    # validation when the study file names no epoch, the one it names
    # (Hyperband's first rung), as the default study's 10 does, and none when
    # pruning is off.
    study_file = load_study(DEFAULT_STUDY)

    def first_pruned_epoch(**changes) -> int | None:
        percentile = 75.0 if changes.get("pruner", pruner) == "percentile" else None
        changes = {"pruner": pruner, "pruner_percentile": percentile, **changes}
        settings = dataclasses.replace(study_file.study, **changes)
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=make_pruner(settings, study_file.training),
        )
        pruned_at = []
        for number in range(40):
            trial = study.ask()
            bad = number >= 5 and number % 2
            for epoch in range(5, study_file.training.epochs + 1, 5):
                trial.report(0.01 if bad else 0.3 + epoch / 100, epoch)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    pruned_at.append(epoch)
                    break
            else:
                study.tell(trial, 0.3)
        return min(pruned_at, default=None)

    assert first_pruned_epoch(prune_from_epoch=None) == 5
    assert first_pruned_epoch() == 10
    assert first_pruned_epoch(prune_from_epoch=15) == 15
    assert first_pruned_epoch(prune_from_epoch=3) == 5
    assert first_pruned_epoch(pruner="none", prune_from_epoch=10) is None


def test_the_percentile_pruner_keeps_the_share_it_names():
    # Ten complete trials at 0.30 to 0.39 at epoch 10; a new trial at 0.325
    # is below their median but within their top 75 percent.
    study_file = load_study(DEFAULT_STUDY)

    def pruned(**changes) -> bool:
        settings = dataclasses.replace(study_file.study, **changes)
        study = optuna.create_study(
            direction="maximize", pruner=make_pruner(settings, study_file.training)
        )
        for k in range(10):
            trial = study.ask()
            trial.report(0.30 + k / 100, 10)
            study.tell(trial, 0.30 + k / 100)
        trial = study.ask()
        trial.report(0.325, 10)
        return bool(trial.should_prune())

    assert pruned(pruner="median") is True
    assert pruned(pruner="percentile", pruner_percentile=50.0) is True
    assert pruned(pruner="percentile", pruner_percentile=75.0) is False
    assert pruned(pruner="percentile", pruner_percentile=25.0) is True
