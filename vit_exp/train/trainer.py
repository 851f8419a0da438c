"""The fit loop: ``mindspore.train.Model.fit`` wired with loss, metrics, schedule and callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_exp.errors import ConfigError

log = logging.getLogger("vit_exp.train")


@dataclass
class TrainSettings:
    """Loop settings from the ``trainer`` config group."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    seed: int = 42
    label_smoothing: float = 0.1
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    checkpoint_every_n_epochs: int = 1
    keep_checkpoints: int = 100
    dataset_sink_mode: bool = False

    def validate(self) -> None:
        """ConfigError naming the ``trainer.*`` key for impossible values."""
        for key in (
            "epochs",
            "batch_size",
            "val_every_n_epochs",
            "log_every_n_steps",
            "checkpoint_every_n_epochs",
            "keep_checkpoints",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"trainer.{key} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps <= 0):
            raise ConfigError(f"trainer.max_steps must be a positive integer or null, got {self.max_steps!r}")


@dataclass
class TrainResult:
    """What a fit produced: the history callback (metrics per step/epoch) and saved checkpoints."""

    history: object
    checkpoints: list
    steps_per_epoch: int
    total_steps: int


def planned_steps(settings: TrainSettings, steps_per_epoch: int) -> int:
    """Optimizer steps the run will take: epochs x steps, capped by ``max_steps``."""
    total = settings.epochs * steps_per_epoch
    return min(total, settings.max_steps) if settings.max_steps else total


def validation_epochs(epochs: int, every_n_epochs: int) -> list[int]:
    """Epochs (1-based) after which validation runs: every n-th, and always the last."""
    return sorted({e for e in range(1, epochs + 1) if e % every_n_epochs == 0} | {epochs})


def fit(
    net,
    train_ds,
    val_ds,
    *,
    settings: TrainSettings,
    num_classes: int,
    optimizer_factory: Callable,
    schedule_factory: Callable,
    checkpoint_dir: str | Path,
    checkpoint_prefix: str,
    amp_level: str = "O0",
    extra_callbacks: Callable | None = None,
) -> TrainResult:
    """Train ``net`` with Model.fit; validation every ``settings.val_every_n_epochs`` epochs.

    ``schedule_factory(total_steps=, steps_per_epoch=)`` returns per-step LR factors;
    ``optimizer_factory(params=, lr_factors=)`` returns the optimizer.
    ``extra_callbacks(history, checkpoints)`` returns callbacks (e.g. tracking) that run after the
    built-in ones and may read the history and the saved checkpoints.
    """
    from mindspore.train import Model

    from vit_exp.train.callbacks import EpochCheckpoint, ProgressLogger, StepLimit, TrainHistory
    from vit_exp.train.loop import gc_frozen
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.metrics import classification_metrics

    settings.validate()
    steps_per_epoch = train_ds.get_dataset_size()
    if steps_per_epoch == 0:
        raise ConfigError("the training split yields no full batch; lower trainer.batch_size")
    total_steps = planned_steps(settings, steps_per_epoch)
    epochs = min(settings.epochs, int(np.ceil(total_steps / steps_per_epoch)))
    factors = schedule_factory(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    optimizer = optimizer_factory(params=net.trainable_params(), lr_factors=factors)
    lr_values = optimizer.lr_values
    loss_fn = CrossEntropySmooth(num_classes, settings.label_smoothing)
    history = TrainHistory(settings.batch_size, lr_values)
    checkpoints = EpochCheckpoint(
        net,
        checkpoint_dir,
        checkpoint_prefix,
        settings.checkpoint_every_n_epochs,
        settings.keep_checkpoints,
        history,
    )
    callbacks = [history]
    if settings.max_steps:
        callbacks.append(StepLimit(total_steps, history))
    callbacks += [ProgressLogger(history, epochs, steps_per_epoch, settings.log_every_n_steps), checkpoints]
    callbacks += list(extra_callbacks(history, checkpoints)) if extra_callbacks else []
    log.info(
        "training %d epoch(s) x %d steps (batch %d) = %d steps",
        epochs,
        steps_per_epoch,
        settings.batch_size,
        total_steps,
    )
    with gc_frozen():
        if settings.dataset_sink_mode:  # Model.fit: callbacks then see one "step" per sink
            model = Model(
                net,
                loss_fn=loss_fn,
                optimizer=optimizer,
                metrics=classification_metrics(num_classes),
                amp_level=amp_level,
            )
            model.fit(
                epochs,
                train_ds,
                valid_dataset=val_ds,
                valid_frequency=validation_epochs(epochs, settings.val_every_n_epochs),
                callbacks=callbacks,
                dataset_sink_mode=True,
            )
        else:  # our loop: per-step callbacks without Model.train's overhead (vit_exp/train/loop.py)
            from mindspore import amp, nn

            from vit_exp.train.loop import evaluate, run_training

            validate = None
            if val_ds is not None:
                metrics = classification_metrics(num_classes)
                eval_network = nn.WithEvalCell(net, loss_fn, add_cast_fp32=amp_level in ("O2", "O3", "auto"))

                def validate() -> dict:
                    return evaluate(eval_network, val_ds, metrics)

            run_training(
                amp.build_train_network(net, optimizer, loss_fn, level=amp_level),
                train_ds,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                validate=validate,
                validation_epochs=validation_epochs(epochs, settings.val_every_n_epochs),
            )
    return TrainResult(
        history=history,
        checkpoints=checkpoints.saved,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
