"""Learning-rate schedules as float32 arrays of per-step factors of the peak LR (``optim.lr``), so
``sched`` stays independent of the optimizer's peak LR."""

from __future__ import annotations

import math

import numpy as np

from vit_exp.errors import ConfigError


def _check(total_steps: int, steps_per_epoch: int, warmup_epochs: float, **factors: float) -> int:
    for key, value in {"warmup_epochs": warmup_epochs, **factors}.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"sched.{key} must be a number, got {value!r}")
    if total_steps <= 0 or steps_per_epoch <= 0:
        raise ConfigError(f"the schedule needs at least one step (got {total_steps} total steps)")
    if warmup_epochs < 0:
        raise ConfigError(f"sched.warmup_epochs must be >= 0, got {warmup_epochs}")
    return min(total_steps, round(warmup_epochs * steps_per_epoch))


def _warmup(warmup_steps: int, start_factor: float) -> np.ndarray:
    if warmup_steps == 0:
        return np.zeros(0)
    return np.linspace(start_factor, 1.0, warmup_steps, endpoint=False) + (1.0 - start_factor) / warmup_steps


def cosine_schedule(
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.0,
    end_factor: float = 0.0,
) -> np.ndarray:
    """Optional linear warm-up, then cosine decay from 1 to ``end_factor`` over the remaining steps."""
    warm = _check(
        total_steps,
        steps_per_epoch,
        warmup_epochs,
        warmup_start_factor=warmup_start_factor,
        end_factor=end_factor,
    )
    decay_steps = total_steps - warm
    t = np.arange(decay_steps) / max(decay_steps, 1)
    decay = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + np.cos(math.pi * t))
    return np.concatenate([_warmup(warm, warmup_start_factor), decay]).astype(np.float32)


def constant_schedule(
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.0,
) -> np.ndarray:
    """Optional linear warm-up, then the peak LR for every remaining step."""
    return cosine_schedule(total_steps, steps_per_epoch, warmup_epochs, warmup_start_factor, end_factor=1.0)
