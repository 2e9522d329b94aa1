"""One configuration of the retrieval model, trained and validated.

Training is Keras `fit` on in-memory arrays (the features are precomputed, see
`sweep.data`), one whole epoch per `fit` batch that the model cuts into steps of
`batch_size` ratings inside one compiled call; validation is the model's
`evaluate` every `validation_freq` epochs and at the last epoch, over all 20,000
validation ratings in one batch, retrieving once per user.
Callbacks report each validation (for printing, pruning and tracking), keep the
best validation's weights, and fail the trial if the loss diverges.

The files a training leaves live here too, beside the code that writes and
reads their contents: `Checkpoint` (to continue after the last validation) and
`BestModel` (the best epoch's weights, for export), which is why the module
runs a little long.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sweep import interrupts, memory, params
from sweep.backend import keras
from sweep.config import MAX_EPOCHS, MAX_TEST_FRACTION, is_test_fraction
from sweep.data import Features
from sweep.errors import ConfigError, TrialFailed
from sweep.home import atomic_write
from sweep.model import METRIC_NAME, RetrievalModel, layer_sizes

VAL_METRIC = f"val_{METRIC_NAME}"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One configuration to train (defaults: the reference's shallow model).

    Attributes:
        depth: Number of dense layers per tower.
        width: Units of each tower's output layer (earlier layers double).
        embedding_dim: Output dimension of every embedding table.
        learning_rate: Adagrad's learning rate.
        epochs: Training epochs.
        validation_freq: Validate every this many epochs (and at the last one).
        batch_size: Ratings per training step.
        seed: Seeds weight initialisation and data order.
        test_fraction: The share of the ratings held out as a test set before
            the train/validation split (0: none, the reference's split).
    """

    depth: int = 1
    width: int = 32
    embedding_dim: int = 32
    learning_rate: float = 0.05
    epochs: int = 30
    validation_freq: int = 5
    batch_size: int = 1000
    seed: int = 42
    test_fraction: float = 0.0

    def __post_init__(self):
        for hyper in params.SEARCHED:
            value = getattr(self, hyper.name)
            problem = hyper.problem(value)
            if problem:
                raise ConfigError(f"{hyper.name} = {value!r}: expected {problem}")
        for name in ("epochs", "validation_freq", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{name} = {value!r}: expected a whole number of at least 1"
                )
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(
                f"epochs = {self.epochs}: expected at most {MAX_EPOCHS:,} (the "
                "reference trains 30)"
            )
        if not is_test_fraction(self.test_fraction):
            raise ConfigError(
                f"test_fraction = {self.test_fraction!r}: expected a number from 0 up "
                f"to (not including) {MAX_TEST_FRACTION}"
            )
        excess = memory.over_limit(
            **{p.name: getattr(self, p.name) for p in params.SEARCHED if p.sizes_model},
            batch_size=self.batch_size,
        )
        if excess:
            raise ConfigError(
                f"{excess}; lower width, embedding_dim or depth (or batch_size)"
            )

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The towers' dense layer units (see `sweep.model.layer_sizes`)."""
        return layer_sizes(self.depth, self.width)

    def params(self) -> dict:
        """The searched hyperparameters and the layer sizes they give."""
        return {
            **{name: getattr(self, name) for name in params.NAMES},
            "layer_sizes": list(self.layer_sizes),
        }

    def validation_epochs(self) -> list[int]:
        """The (1-based) epochs after which the model is validated."""
        epochs = list(
            range(self.validation_freq, self.epochs + 1, self.validation_freq)
        )
        if not epochs or epochs[-1] != self.epochs:
            epochs.append(self.epochs)
        return epochs


@dataclasses.dataclass(frozen=True)
class Validation:
    """One validation's figures."""

    epoch: int
    val_loss: float
    val_top100_accuracy: float


@dataclasses.dataclass
class TrainResult:
    """What training one configuration gave.

    Attributes:
        params: `TrainConfig.params()`.
        validations: Every validation, in epoch order.
        losses: The training loss of each epoch.
        best: The validation with the highest top-100 accuracy (earliest on ties).
        best_weights: The model weights at that validation.
        train_seconds: Wall time of `fit`, validations included.
        model: The trained model (its weights those of the last epoch, or of
            the best validation when the test set was evaluated).
        test_top100_accuracy: The best validation's weights scored on the
            held-out test ratings, if asked for and there are any.
    """

    params: dict
    validations: list[Validation]
    losses: list[float]
    best: Validation
    best_weights: list[np.ndarray]
    train_seconds: float
    model: RetrievalModel | None = None
    test_top100_accuracy: float | None = None

    def summary(self) -> dict:
        """The JSON form `sweep train --json` prints."""
        out = {
            "params": self.params,
            "validations": [dataclasses.asdict(v) for v in self.validations],
            "best_val_top100_accuracy": self.best.val_top100_accuracy,
            "best_epoch": self.best.epoch,
            "train_seconds": round(self.train_seconds, 3),
        }
        if self.test_top100_accuracy is not None:
            out["test_top100_accuracy"] = self.test_top100_accuracy
        return out


@dataclasses.dataclass
class Checkpoint:
    """Everything needed to continue a trial after its last validation.

    Attributes:
        epoch: The last finished (and validated) epoch.
        weights: The model weights after that epoch.
        optimizer: The optimizer's variables (Adagrad accumulators, iterations).
        validations: The validations so far.
        best_weights: The weights of the best validation so far.
    """

    epoch: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    validations: list[Validation]
    best_weights: list[np.ndarray]

    def save(self, path: Path) -> None:
        """Writes the checkpoint atomically (a reader sees all of it or none)."""
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays.update({f"o{i}": v for i, v in enumerate(self.optimizer)})
        arrays.update({f"b{i}": w for i, w in enumerate(self.best_weights)})
        meta = {
            "epoch": self.epoch,
            "counts": [len(self.weights), len(self.optimizer), len(self.best_weights)],
            "validations": [dataclasses.asdict(v) for v in self.validations],
        }
        atomic_write(
            path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        )

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Reads a checkpoint written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            weights, optimizer, best = meta["counts"]
            return cls(
                epoch=meta["epoch"],
                weights=[data[f"w{i}"] for i in range(weights)],
                optimizer=[data[f"o{i}"] for i in range(optimizer)],
                validations=[Validation(**v) for v in meta["validations"]],
                best_weights=[data[f"b{i}"] for i in range(best)],
            )


@dataclasses.dataclass(frozen=True)
class BestModel:
    """A trained configuration's best epoch: its weights and how to rebuild them.

    Kept as two files in a folder (a trial run's `best_model/` artifact, which
    `sweep export` turns into a servable model): the weights as a Keras
    `.weights.h5` file, and a JSON description of the model and data they fit.

    Attributes:
        config: The configuration trained.
        epoch: The best validation's epoch.
        val_top100_accuracy: Its val top-100 accuracy.
        data_source: The data it was trained on.
        data_checksum: That data's checksum (an export must use the same).
        weights: The weights file.
    """

    WEIGHTS_FILE = "model.weights.h5"
    INFO_FILE = "best.json"

    config: TrainConfig
    epoch: int
    val_top100_accuracy: float
    data_source: str
    data_checksum: str
    weights: Path

    @classmethod
    def save(
        cls, folder: Path, config: TrainConfig, result: TrainResult, features: Features
    ) -> BestModel:
        """Writes `result`'s best weights and their description into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / cls.WEIGHTS_FILE
        result.model.set_weights(result.best_weights)
        result.model.save_weights(weights)
        best = cls(
            config,
            result.best.epoch,
            result.best.val_top100_accuracy,
            features.source,
            features.checksum,
            weights,
        )
        info = {
            "config": dataclasses.asdict(config),
            "best_epoch": best.epoch,
            "best_val_top100_accuracy": best.val_top100_accuracy,
            "data_source": best.data_source,
            "data_checksum": best.data_checksum,
        }
        (folder / cls.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return best

    @classmethod
    def load(cls, folder: Path) -> BestModel | None:
        """What `save` wrote into `folder`, or None if either file is missing."""
        weights, info_path = folder / cls.WEIGHTS_FILE, folder / cls.INFO_FILE
        if not (weights.is_file() and info_path.is_file()):
            return None
        info = json.loads(info_path.read_text())
        return cls(
            TrainConfig(**info["config"]),
            info["best_epoch"],
            info["best_val_top100_accuracy"],
            info["data_source"],
            info["data_checksum"],
            weights,
        )

    def model(self, features: Features) -> RetrievalModel:
        """The model of `config` holding these weights.

        Raises:
            ValueError: The file does not fit the configuration's model.
        """
        model = build_model(self.config, features)
        x, _ = features.examples(np.arange(1))
        model(x, training=False)  # builds every layer, so the weights can load
        # The file holds the optimizer's state too; a built optimizer takes it.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(self.weights)
        return model


class ValidationTracker(keras.callbacks.Callback):
    """Collects losses and validations, keeps the best weights, stops divergence.

    Keras's `TerminateOnNaN` reads the loss after every batch, which forces a
    device sync per step, and only stops training; this checks once per epoch
    and raises `TrialFailed`, so the trial is recorded as failed with a reason.

    Args:
        on_epoch: Called with each epoch (1-based) and its training loss.
        on_validation: Called with each `Validation` as soon as it is known;
            if it returns True, training ends after this epoch (Keras's
            `stop_training`, as `EarlyStopping` does).
        on_checkpoint: Called with a `Checkpoint` after each validation (once
            `on_validation` returned, i.e. the trial goes on).
        resumed: The checkpoint training continues from, if any.
    """

    def __init__(
        self,
        on_epoch: Callable[[int, float], None] | None = None,
        on_validation: Callable[[Validation], bool | None] | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        resumed: Checkpoint | None = None,
    ):
        super().__init__()
        self.on_epoch = on_epoch
        self.on_validation = on_validation
        self.on_checkpoint = on_checkpoint
        self.losses: list[float] = []
        self.validations: list[Validation] = list(
            resumed.validations if resumed else []
        )
        self.best: Validation | None = _best(self.validations)
        self.best_weights: list[np.ndarray] | None = (
            resumed.best_weights if resumed and self.best else None
        )

    def on_epoch_end(self, epoch, logs=None):
        """Records the epoch; on validation epochs, the validation too."""
        interrupts.check()
        logs = logs or {}
        loss = float(logs["loss"])
        self.losses.append(loss)
        if not math.isfinite(loss):
            raise TrialFailed(f"training loss diverged to {loss} at epoch {epoch + 1}")
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, loss)
        if VAL_METRIC not in logs:
            return
        validation = Validation(
            epoch=epoch + 1,
            val_loss=float(logs["val_loss"]),
            val_top100_accuracy=float(logs[VAL_METRIC]),
        )
        if not math.isfinite(validation.val_loss):
            raise TrialFailed(
                f"validation loss diverged to {validation.val_loss} at epoch "
                f"{epoch + 1}"
            )
        self.validations.append(validation)
        if self.best is None or (
            validation.val_top100_accuracy > self.best.val_top100_accuracy
        ):
            self.best = validation
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        if self.on_validation is not None and self.on_validation(validation):
            self.model.stop_training = True
            return  # the run ends here: nothing to resume from
        if self.on_checkpoint is not None:
            self.on_checkpoint(
                Checkpoint(
                    epoch=epoch + 1,
                    weights=[np.array(w) for w in self.model.get_weights()],
                    optimizer=[np.array(v) for v in self.model.optimizer.variables],
                    validations=list(self.validations),
                    best_weights=self.best_weights,
                )
            )


def _best(validations: list[Validation]) -> Validation | None:
    best = None
    for v in validations:
        if best is None or v.val_top100_accuracy > best.val_top100_accuracy:
            best = v
    return best


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and Keras's global seed generator (weights, shuffling).

    `keras.utils.set_random_seed` does the same and also seeds TensorFlow, which
    it imports to do so (seconds per process); the JAX path never uses TF's
    generator, so TF is only seeded when something else already imported it.
    """
    if "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def restore(model: RetrievalModel, checkpoint: Checkpoint, sample: dict) -> None:
    """Loads a checkpoint's weights and optimizer state into a fresh model.

    Args:
        model: A compiled model of the checkpoint's configuration.
        checkpoint: What to load.
        sample: One example, to build the model's layers before loading.
    """
    model(sample, training=False)
    model.set_weights(checkpoint.weights)
    model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(checkpoint.optimizer):
        raise ValueError("the checkpoint's optimizer state does not fit this model")
    for variable, value in zip(
        model.optimizer.variables, checkpoint.optimizer, strict=True
    ):
        variable.assign(value)


def build_model(config: TrainConfig, features: Features) -> RetrievalModel:
    """A compiled model for `config`, weights seeded from `config.seed`."""
    seed_everything(config.seed)
    model = RetrievalModel(
        features.vocabulary,
        layer_sizes=config.layer_sizes,
        embedding_dim=config.embedding_dim,
        candidates=features.movies,
    )
    model.set_users(features.users)
    model.set_step_size(config.batch_size)
    model.compile(optimizer=keras.optimizers.Adagrad(config.learning_rate))
    return model


def train(
    config: TrainConfig,
    features: Features,
    on_validation: Callable[[Validation], bool | None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    resume_from: Checkpoint | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    test: bool = False,
) -> TrainResult:
    """Trains and validates one configuration.

    Args:
        config: What to train.
        features: The preprocessed MovieLens data (split with the reference's seed).
        on_validation: Called after each validation (e.g. to report to a pruner;
            it may raise to stop the trial, or return True to end training
            there and keep what it has).
        on_epoch: Called after each epoch with its number and training loss.
        on_checkpoint: Called with a `Checkpoint` after each validation.
        resume_from: Continue from this checkpoint (weights, optimizer state and
            epoch) instead of from scratch.
        callbacks: More Keras callbacks for `fit`.
        test: Also score the best validation's weights on the held-out test
            ratings (`config.test_fraction`; nothing to score without them).

    Returns:
        The validations, the best one and its weights.

    Raises:
        TrialFailed: The loss became NaN or infinite.
    """
    train_rows, val_rows = features.split(config.test_fraction)
    x_train, y_train = features.examples(train_rows)
    x_val, y_val = features.examples(val_rows)
    model = build_model(config, features)
    if resume_from is not None:
        restore(model, resume_from, {k: v[:1] for k, v in x_train.items()})
    tracker = ValidationTracker(on_epoch, on_validation, on_checkpoint, resume_from)
    validation_epochs = config.validation_epochs()
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        # One batch per epoch, reshuffled each epoch; the model cuts it into
        # steps of `config.batch_size` (see `RetrievalModel.set_step_size`).
        batch_size=len(y_train),
        epochs=config.epochs,
        initial_epoch=resume_from.epoch if resume_from else 0,
        shuffle=True,
        validation_data=(x_val, y_val),
        # All validation queries in one batch: one matmul and one top-k.
        validation_batch_size=len(y_val),
        validation_freq=validation_epochs,
        callbacks=[tracker, *callbacks],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    test_accuracy = None
    if test and config.test_fraction:
        model.set_weights(tracker.best_weights)
        test_rows = features.test_rows(config.test_fraction)
        test_accuracy = evaluate(model, features, test_rows)
    return TrainResult(
        params=config.params(),
        validations=tracker.validations,
        losses=tracker.losses,
        best=tracker.best,
        best_weights=tracker.best_weights,
        train_seconds=seconds,
        model=model,
        test_top100_accuracy=test_accuracy,
    )


def evaluate(model: RetrievalModel, features: Features, rows: np.ndarray) -> float:
    """The model's top-100 accuracy on the given ratings (one batch)."""
    x, y = features.examples(rows)
    metrics = model.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
    return float(metrics[METRIC_NAME])
