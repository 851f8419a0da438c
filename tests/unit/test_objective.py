"""optimized_metric: a per-epoch metric the run logs, its best value in its own sense of better."""

from __future__ import annotations

import math

import pytest

from vit_exp.errors import ConfigError
from vit_exp.train.callbacks import EpochRecord
from vit_exp.train.objective import best_value, check_optimized_metric, epoch_values


def test_the_best_value_follows_the_metric_sense():
    assert best_value("val/top1", [0.5, 0.9, 0.7]) == 0.9
    assert best_value("val/loss", [0.5, 0.2, math.nan, 0.7]) == 0.2  # lower is better; NaN never best
    assert best_value("val/top5", []) is None


def test_epoch_values_read_validation_and_training_metrics():
    epochs = [
        EpochRecord(
            epoch=1, step=10, train_loss=2.0, seconds=1.0, images_per_s=1.0, val={"top1": 0.4, "loss": 1.5}
        ),
        EpochRecord(epoch=2, step=20, train_loss=1.0, seconds=1.0, images_per_s=1.0, val={}),
    ]
    assert epoch_values("val/top1", epochs) == [0.4]
    assert epoch_values("train/epoch_loss", epochs) == [2.0, 1.0]


@pytest.mark.parametrize(
    ("metric", "direction", "named"),
    [
        ("val/acc", None, "optimized_metric=val/acc"),
        ("val/loss", "maximize", "hydra.sweeper.direction=maximize"),
        ("val/top1", "minimize", "use direction=maximize"),
    ],
)
def test_an_unknown_metric_or_a_wrong_direction_is_named(metric, direction, named):
    with pytest.raises(ConfigError, match=named.replace("/", ".")):
        check_optimized_metric(metric, direction)
    assert check_optimized_metric("val/loss", "minimize") == "val/loss"
