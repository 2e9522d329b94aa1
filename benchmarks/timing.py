"""A Keras callback timing epochs, steps and validations of one `fit`."""

from __future__ import annotations

import time

import jax

from sweep.backend import keras


class FitTiming(keras.callbacks.Callback):
    """Times each epoch's training and each validation of a `fit`.

    Keras dispatches JAX work asynchronously; the last batch of each epoch is
    waited for, so an epoch's time is its training and a validation's time (the
    rest of the epoch: `evaluate`, candidates refresh included) is its own.

    Args:
        batches_per_epoch: `fit` batches per epoch (the last one is waited for).
        steps_per_epoch: Gradient steps per epoch (for the per-step figure).
        started: `time.time()` when the process started (for the start figure).
    """

    def __init__(
        self, batches_per_epoch: int, steps_per_epoch: int, started: float | None
    ):
        super().__init__()
        self.batches_per_epoch = batches_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.started = started
        self.first_step_at: float | None = None
        self.train_seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self._epoch_start = 0.0
        self._trained_at = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batches_per_epoch - 1:
            # One wait per epoch, so the figures are the work, not its dispatch.
            jax.block_until_ready(logs)
            self._trained_at = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.train_seconds.append(self._trained_at - self._epoch_start)
        if logs and any(key.startswith("val_") for key in logs):
            # Everything after the last step: the candidates' refresh and
            # `evaluate`.
            self.validation_seconds.append(now - self._trained_at)

    def summary(self) -> dict:
        """Per-epoch, per-step and per-validation medians, and the start time."""
        train = sorted(self.train_seconds)
        epoch = train[len(train) // 2] if train else None
        validations = sorted(self.validation_seconds)
        return {
            "epoch_seconds": epoch,
            "step_ms": epoch / self.steps_per_epoch * 1000 if epoch else None,
            "validation_seconds": validations[len(validations) // 2]
            if validations
            else None,
            "first_step_after_start_seconds": (
                self.first_step_at - self.started
                if self.started and self.first_step_at
                else None
            ),
        }
