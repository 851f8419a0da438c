"""The value a training command returns and a sweep optimizes: the best over epochs of the per-epoch
metric ``optimized_metric``; a sweeper's direction must agree with that metric's sense of better."""

from __future__ import annotations

import math
from collections.abc import Iterable

from vit_exp.errors import ConfigError

# Per-epoch metrics the run logs to MLflow, and whether higher is better.
HIGHER_IS_BETTER = {"val/top1": True, "val/top5": True, "val/loss": False, "train/epoch_loss": False}


def check_optimized_metric(name: str, direction: str | None = None) -> str:
    """``name`` if the run logs it per epoch (and ``direction`` agrees with it), else a ConfigError."""
    if name not in HIGHER_IS_BETTER:
        raise ConfigError(
            f"optimized_metric={name} is not a per-epoch metric the run logs; use one of "
            f"{', '.join(HIGHER_IS_BETTER)}"
        )
    best = "maximize" if HIGHER_IS_BETTER[name] else "minimize"  # the direction that improves it
    if direction is not None and direction != best:
        better = "higher" if HIGHER_IS_BETTER[name] else "lower"
        raise ConfigError(
            f"hydra.sweeper.direction={direction} disagrees with optimized_metric={name}, where "
            f"{better} is better: use direction={best}"
        )
    return name


def best_value(name: str, values: Iterable[float]) -> float | None:
    """The best of a metric's per-epoch ``values`` (None when there are none)."""
    values = [v for v in values if not math.isnan(v)]  # NaN (a diverged epoch) is never the best
    if not values:
        return None
    return max(values) if HIGHER_IS_BETTER[name] else min(values)


def epoch_values(name: str, epochs) -> list[float]:
    """Metric ``name`` of each ``EpochRecord`` that has it (``val/x`` from its validation)."""
    if name == "train/epoch_loss":
        return [e.train_loss for e in epochs]
    key = name.removeprefix("val/")
    return [e.val[key] for e in epochs if key in e.val]


def epoch_score(name: str, record, weights: str = "raw") -> float:
    """Metric ``name`` of one ``EpochRecord`` for its ``weights``: ``raw`` (``val/*``) or ``ema``
    (``val_ema/*``); NaN when that epoch did not measure it (``train/epoch_loss`` is the raw weights')."""
    if record is None:
        return math.nan
    if name == "train/epoch_loss":
        return record.train_loss
    values = record.val_ema if weights == "ema" else record.val
    return values.get(name.removeprefix("val/"), math.nan)


def is_better(name: str, value: float, than: float, by: float = 0.0) -> bool:
    """Whether ``value`` of metric ``name`` beats ``than`` by more than ``by`` (NaN never does)."""
    if math.isnan(value):
        return False
    if math.isnan(than):
        return True
    return value - than > by if HIGHER_IS_BETTER[name] else than - value > by


def shipped_weights(setting: str | None, name: str, record) -> str:
    """The weights a checkpoint ships under ``trainer.ema.weights`` = ``setting`` (None: EMA off, raw):
    ``better`` takes EMA when it beats the raw weights on ``name`` at the checkpoint's validated epoch
    (``record``; a step checkpoint or an epoch without validation: raw; a tie: raw)."""
    if setting == "better":
        raw, ema = epoch_score(name, record, "raw"), epoch_score(name, record, "ema")
        return "ema" if record is not None and not math.isnan(raw) and is_better(name, ema, raw) else "raw"
    return setting or "raw"
