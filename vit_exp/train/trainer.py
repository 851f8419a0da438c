"""Training: the ``trainer`` settings, the plan they make for a dataset (``plan.TrainPlan``), and ``fit``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import TYPE_CHECKING, Annotated

from vit_exp.errors import NOT_COMPARED, SETUP, ConfigError, check_field_types, positive_int
from vit_exp.train.plan import TrainPlan

if TYPE_CHECKING:
    from vit_exp.train.preemption import Preemption
    from vit_exp.train.state import ResumePoint


EMA_WEIGHTS = ("raw", "ema", "better")  # which weights a checkpoint's network file (a version) holds
KEEP_BY = ("newest", "best")  # which epoch checkpoints trainer.keep_checkpoints keeps


@dataclass(frozen=True)
class EmaSettings:
    """``trainer.ema``: an exponential moving average of the weights (``decay`` None: off) and the
    weights a checkpoint ships: ``raw``, ``ema`` or ``better`` (of the two on optimized_metric)."""

    decay: float | None
    weights: str

    def __post_init__(self) -> None:
        check_field_types(self, "trainer.ema")
        if self.decay is not None and not 0.0 < self.decay < 1.0:
            raise ConfigError(f"trainer.ema.decay must be in (0, 1) (or null: off), got {self.decay}")
        if self.weights not in EMA_WEIGHTS:
            raise ConfigError(
                f"trainer.ema.weights must be one of {', '.join(EMA_WEIGHTS)}, got {self.weights!r}"
            )

    @property
    def shipped(self) -> str | None:
        """The ``weights`` setting when EMA is on, else None (every checkpoint holds the raw weights)."""
        return self.weights if self.decay is not None else None


@dataclass(frozen=True)
class EarlyStoppingSettings:
    """``trainer.early_stopping``: stop when optimized_metric has not improved by more than ``min_delta``
    for ``patience`` validated epochs (``patience`` None: off)."""

    patience: int | None
    min_delta: float

    def __post_init__(self) -> None:
        check_field_types(self, "trainer.early_stopping")
        if self.patience is not None:
            positive_int("trainer.early_stopping.patience", self.patience)
        if not self.min_delta >= 0:
            raise ConfigError(f"trainer.early_stopping.min_delta must be >= 0, got {self.min_delta}")


def _group(settings_class, value, key: str):
    """``value`` (a mapping from the config) as ``settings_class``; a ConfigError naming ``key`` else."""
    if isinstance(value, settings_class):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of its settings, got {value!r}")
    names = {f.name for f in fields(settings_class)}
    if unknown := sorted(set(value) - names):
        raise ConfigError(f"{key} has no setting {unknown[0]}; it has {', '.join(sorted(names))}")
    return settings_class(**{name: value.get(name) for name in names})


@dataclass
class TrainSettings:
    """The ``trainer`` config group, checked when built; types only, defaults in conf/trainer/default.yaml."""

    epochs: int
    max_steps: int | None
    batch_size: int
    seed: int
    label_smoothing: float
    val_every_n_epochs: Annotated[int, SETUP]
    print_every_n_steps: Annotated[int, NOT_COMPARED]
    progress_bar: Annotated[bool | str, NOT_COMPARED]
    checkpoint_every_n_epochs: Annotated[int, NOT_COMPARED]
    keep_checkpoints: Annotated[int, NOT_COMPARED]
    checkpoint_every_n_steps: Annotated[int | None, NOT_COMPARED]
    keep_step_checkpoints: Annotated[int, NOT_COMPARED]
    deterministic: Annotated[bool, SETUP]
    resume_fast_skip: Annotated[bool, NOT_COMPARED]
    preempt_grace_s: Annotated[float, NOT_COMPARED]
    checkpoint_in_background: Annotated[bool, NOT_COMPARED]
    ema: EmaSettings
    early_stopping: EarlyStoppingSettings
    keep_checkpoints_by: Annotated[str, NOT_COMPARED]

    def __post_init__(self) -> None:
        self.ema = _group(EmaSettings, self.ema, "trainer.ema")
        self.early_stopping = _group(EarlyStoppingSettings, self.early_stopping, "trainer.early_stopping")
        check_field_types(self, "trainer")
        for key in (
            "epochs",
            "batch_size",
            "val_every_n_epochs",
            "print_every_n_steps",
            "checkpoint_every_n_epochs",
            "keep_checkpoints",
            "keep_step_checkpoints",
        ):
            positive_int(f"trainer.{key}", getattr(self, key))
        for key in ("max_steps", "checkpoint_every_n_steps"):
            if getattr(self, key) is not None:
                positive_int(f"trainer.{key}", getattr(self, key))
        if self.progress_bar not in (True, False, "auto"):
            raise ConfigError(f"trainer.progress_bar must be auto, true or false, got {self.progress_bar!r}")
        if self.deterministic and self.resume_fast_skip:
            raise ConfigError(
                "trainer.resume_fast_skip=true makes a resumed epoch's random crops differ; "
                "with trainer.deterministic=true leave it false"
            )
        if not self.preempt_grace_s > 0:
            raise ConfigError(f"trainer.preempt_grace_s must be seconds > 0, got {self.preempt_grace_s}")
        if self.keep_checkpoints_by not in KEEP_BY:
            choices, got = ", ".join(KEEP_BY), self.keep_checkpoints_by
            raise ConfigError(f"trainer.keep_checkpoints_by must be one of {choices}, got {got!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def plan(self, steps_per_epoch: int) -> TrainPlan:
        """The plan for a training split of ``steps_per_epoch`` batches."""
        if steps_per_epoch == 0:
            raise ConfigError("the training split yields no full batch; lower trainer.batch_size")
        total = self.epochs * steps_per_epoch
        total = min(total, self.max_steps) if self.max_steps else total
        epochs = math.ceil(total / steps_per_epoch)
        validation = sorted({e for e in range(1, epochs + 1) if e % self.val_every_n_epochs == 0} | {epochs})
        return TrainPlan(epochs, steps_per_epoch, total, tuple(validation))


def fit(  # noqa: PLR0913 (keyword-only, as MindSpore's Model.fit)
    net,
    epoch_batches,
    val_ds,
    *,
    optimizer,
    loss_fn,
    metrics: dict,
    plan: TrainPlan,
    callbacks: Sequence,
    amp_level: str = "O0",
    clip_grad_norm: float | None = None,
    resume: ResumePoint | None = None,
    preemption: Preemption | None = None,
    world_size: int = 1,
    eval_loss_fn=None,
    ema_decay: float | None = None,
    seed: int = 0,
    rank: int = 0,
) -> None:
    """Train ``net`` by ``plan`` over ``epoch_batches(epoch, skip)``, validating on ``val_ds`` after each
    of ``plan.validation_epochs``. ``resume`` starts from a full-state checkpoint; ``preemption`` turns
    SIGTERM/Ctrl-C into a checkpoint and a ``Preempted`` exit; ``world_size`` > 1 averages the loss
    over the workers; ``clip_grad_norm`` clips the gradients' global norm (None: off);
    ``ema_decay`` keeps an EMA of the weights (``trainer.ema``), validated too.
    ``eval_loss_fn``: validation's loss on hard labels (default ``loss_fn``; training on soft targets
    needs its own). ``seed`` and ``rank`` (the msrun worker's) key drop path's masks, with the optimizer
    step (vit_exp/train/step.py)."""
    from mindspore import nn

    from vit_exp.data.unreadable import unreadable_image_error
    from vit_exp.train.loop import gc_frozen, run_training, validation_metrics
    from vit_exp.train.parallel import mean_loss_step
    from vit_exp.train.state import load_training_network
    from vit_exp.train.step import build_train_step

    validate = None
    if val_ds is not None:
        eval_network = nn.WithEvalCell(
            net, eval_loss_fn or loss_fn, add_cast_fp32=amp_level in ("O2", "O3", "auto")
        )
        validate = partial(validation_metrics, eval_network, val_ds, metrics)
    train_step = build_train_step(net, optimizer, loss_fn, amp_level, clip_grad_norm, seed, rank)
    if ema_decay is not None:
        from vit_exp.train.ema import EmaWeights

        train_step.ema = ema = EmaWeights(net, ema_decay)  # in the train step's state: its checkpoints
        validate = ema.validating(validate) if validate is not None else None
        callbacks = [ema.updater(), *callbacks]  # updated before any callback saves the step
    if resume is not None:
        load_training_network(train_step, resume.entries, resume.path)
    train_step = mean_loss_step(train_step, world_size)
    with gc_frozen(), preemption or contextlib.nullcontext():
        try:
            run_training(
                train_step,
                epoch_batches,
                plan=plan,
                callbacks=callbacks,
                validate=validate,
                start=resume.position if resume else None,
                stop_signal=lambda: preemption is not None and preemption.requested,
                on_stop_signal=preemption.stop if preemption else None,
            )
        except RuntimeError as exc:  # MindSpore's pipeline names a file it cannot decode deep in its message
            raise (unreadable_image_error(exc) or exc) from exc
