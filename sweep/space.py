"""How a study searches: its distributions, sampler and pruner, and what a trial trains.

`[space]` -> Optuna distributions; `[study]` -> the seeded sampler and the pruner;
a trial -> the `TrainConfig` it trains.
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna

from sweep import config as config_module
from sweep import params
from sweep.config import Param, Study
from sweep.train import TrainConfig


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one `[space]` entry."""
    if param.choices is not None:
        return optuna.distributions.CategoricalDistribution(param.choices)
    if (
        isinstance(param.low, int)
        and isinstance(param.high, int)
        and (param.step is None or isinstance(param.step, int))
    ):
        return optuna.distributions.IntDistribution(
            param.low, param.high, log=param.log, step=param.step or 1
        )
    return optuna.distributions.FloatDistribution(
        float(param.low), float(param.high), log=param.log, step=param.step
    )


def distributions(study: Study) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every searched hyperparameter's distribution, by name."""
    return {name: distribution(param) for name, param in study.space.items()}


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A seed for one trial's weights and data order, from study seed and number."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


def suggest(trial: optuna.Trial, study: Study) -> TrainConfig:
    """Asks the trial for every hyperparameter and returns what to train.

    Enqueued trials (the baselines) get their fixed values back from `suggest_*`.
    """
    values = {
        name: _suggest(trial, name, dist) for name, dist in distributions(study).items()
    }
    return TrainConfig(
        **{p.name: p.kind(values[p.name]) for p in params.SEARCHED},
        epochs=study.training.epochs,
        validation_freq=study.training.validation_freq,
        batch_size=study.training.batch_size,
        seed=trial_seed(study.study.seed, trial.number),
        test_fraction=study.data.test_fraction,
    )


def _suggest(trial: optuna.Trial, name: str, dist) -> int | float:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(
            name, dist.low, dist.high, step=dist.step, log=dist.log
        )
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def make_sampler(
    settings: config_module.StudySettings, offset: int = 0, worker: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed.

    Args:
        settings: The `[study]` table.
        offset: 0 for a new study (or the trials a warm start imported); on
            resume, past the trials run so far.
        worker: The worker's index, so parallel workers propose apart.
    """
    seed = settings.seed
    if offset or worker:
        seed = int(np.random.SeedSequence([seed, offset, worker]).generate_state(1)[0])
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.sampler == "qmc":
            # Scrambled, so that the study seed picks the sequence.
            return optuna.samplers.QMCSampler(seed=seed, scramble=True)
        if settings.sampler == "cmaes":
            # CMA-ES models the integer and float parameters only; the
            # categorical ones (width, embedding_dim) come from its
            # independent sampler, which it would otherwise warn about on
            # every trial.
            return optuna.samplers.CmaEsSampler(
                seed=seed, warn_independent_sampling=False
            )
        if settings.sampler == "gp":
            # Gaussian-process Bayesian optimisation (PyTorch, the `gp` extra).
            # It weighs other workers' running trials itself (q-batch EI).
            return optuna.samplers.GPSampler(seed=seed)
        # Workers on other processes or machines may join any study: TPE then
        # counts their running trials as bad results, instead of proposing the
        # point they are training (benchmarks/parallel_tpe.py).
        return optuna.samplers.TPESampler(
            seed=seed,
            constant_liar=True,
            multivariate=settings.sampler == "tpe-multivariate",
        )


def make_pruner(
    settings: config_module.StudySettings, training: config_module.TrainingSettings
) -> optuna.pruners.BasePruner:
    """The study's pruner; steps are epochs, reported at each validation.

    No trial is stopped before `[study] prune_from_epoch` (by default, the
    first validation): deeper models start slower, and a median taken at the
    first validation can stop the configurations that end best. The
    percentile pruner is the median one keeping a share other than half.
    """
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    first = settings.prune_from_epoch or 0
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(first, training.validation_freq),
            max_resource=training.epochs,
        )
    # Optuna prunes from the step equal to `n_warmup_steps` on.
    if settings.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            settings.pruner_percentile, n_startup_trials=5, n_warmup_steps=first
        )
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=first)
