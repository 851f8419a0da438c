"""Training: the ``trainer`` settings, the plan they make for a dataset, and ``fit``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vit_exp.errors import ConfigError, check_field_types, positive_int


@dataclass(frozen=True)
class TrainPlan:
    """How many epochs and steps a run takes, and after which epochs it validates."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    validation_epochs: tuple[int, ...]

    @property
    def stops_early(self) -> bool:
        """Whether ``trainer.max_steps`` ends training before the last epoch's last step."""
        return self.total_steps < self.epochs * self.steps_per_epoch


@dataclass
class TrainSettings:
    """The ``trainer`` config group (checked when it is built)."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    seed: int = 42
    label_smoothing: float = 0.1
    val_every_n_epochs: int = 1
    print_every_n_steps: int = 10
    checkpoint_every_n_epochs: int = 1
    keep_checkpoints: int = 100

    def __post_init__(self) -> None:
        check_field_types(self, "trainer")
        for key in (
            "epochs",
            "batch_size",
            "val_every_n_epochs",
            "print_every_n_steps",
            "checkpoint_every_n_epochs",
            "keep_checkpoints",
        ):
            positive_int(f"trainer.{key}", getattr(self, key))
        if self.max_steps is not None:
            positive_int("trainer.max_steps", self.max_steps)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def plan(self, steps_per_epoch: int) -> TrainPlan:
        """The plan for a training split of ``steps_per_epoch`` batches."""
        if steps_per_epoch == 0:
            raise ConfigError("the training split yields no full batch; lower trainer.batch_size")
        total = self.epochs * steps_per_epoch
        total = min(total, self.max_steps) if self.max_steps else total
        epochs = math.ceil(total / steps_per_epoch)
        every = self.val_every_n_epochs
        validation = sorted({e for e in range(1, epochs + 1) if e % every == 0} | {epochs})
        return TrainPlan(epochs, steps_per_epoch, total, tuple(validation))


def fit(
    net,
    train_ds,
    val_ds,
    *,
    optimizer,
    loss_fn,
    metrics: dict,
    plan: TrainPlan,
    callbacks: Sequence,
    amp_level: str = "O0",
) -> None:
    """Train ``net`` by ``plan`` with our loop (``loop.py``), validating on ``val_ds`` after each of
    ``plan.validation_epochs`` with ``metrics`` and the mean ``loss_fn``; ``callbacks`` (MindSpore
    ``Callback``s) see every step and epoch, in their order."""
    from mindspore import amp, nn

    from vit_exp.data.unreadable import unreadable_image_error
    from vit_exp.train.loop import gc_frozen, run_training, validation_metrics

    validate = None
    if val_ds is not None:
        eval_network = nn.WithEvalCell(net, loss_fn, add_cast_fp32=amp_level in ("O2", "O3", "auto"))

        def validate() -> dict:
            return validation_metrics(eval_network, val_ds, metrics)

    train_step = amp.build_train_network(net, optimizer, loss_fn, level=amp_level)
    with gc_frozen():
        try:
            run_training(train_step, train_ds, plan=plan, callbacks=callbacks, validate=validate)
        except RuntimeError as exc:  # MindSpore's pipeline names a file it cannot decode deep in its message
            raise (unreadable_image_error(exc) or exc) from exc
