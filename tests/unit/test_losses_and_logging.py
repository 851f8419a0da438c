"""The recipe's smoothed cross-entropy, and that a failing MLflow store never stops training."""

from __future__ import annotations

import logging

import numpy as np
import pytest


def test_label_smoothing_matches_the_recipe_formula():
    import mindspore as ms

    from vit_exp.train.losses import CrossEntropySmooth

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0], dtype=np.int32)
    s, c = 0.1, 5
    target = np.full((6, c), s / (c - 1))
    target[np.arange(6), labels] = 1 - s
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = float(-(target * log_softmax).sum(1).mean())
    got = float(CrossEntropySmooth(c, s)(ms.Tensor(logits), ms.Tensor(labels)).asnumpy())
    assert got == pytest.approx(expected, rel=1e-5)


def test_metric_logging_failure_warns_once_and_does_not_raise(tracking_store, caplog):
    import mlflow
    from mindspore.train import RunContext

    from vit_exp.tracking.metric_logger import MlflowMetricLogger
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.loop import CallbackParams

    mlflow.set_tracking_uri(tracking_store)
    mlflow.MlflowClient().search_experiments()  # creates the store
    history = TrainHistory(8, np.full(200, 1e-3, dtype=np.float32))
    logger = MlflowMetricLogger("f" * 32, history, max_buffered=40)  # no such run: every batch fails
    context = RunContext(CallbackParams())
    with caplog.at_level(logging.WARNING, logger="vit_exp.tracking"):
        for step in range(1, 121):
            history.global_step, history.last_loss, history.last_step_ms = step, 1.0, 10.0
            logger.on_train_step_end(context)
        logger.close()
    warnings = [r for r in caplog.records if "could not be logged" in r.getMessage()]
    assert len(warnings) == 1


def _drive(logger, history, context, steps, step_ms):
    for step in steps:
        history.global_step, history.last_loss, history.last_step_ms = step, 1.0 / step, step_ms(step)
        logger.on_train_step_end(context)


def test_loss_every_step_and_lr_speed_as_means_every_n_steps_and_at_epoch_end(tracking_store):
    import mlflow
    from mindspore.train import RunContext

    from vit_exp.tracking.metric_logger import MlflowMetricLogger
    from vit_exp.train.callbacks import EpochRecord, TrainHistory
    from vit_exp.train.loop import CallbackParams

    mlflow.set_tracking_uri(tracking_store)
    lrs = np.linspace(1e-3, 1e-4, 30).astype(np.float32)
    history = TrainHistory(8, lrs)
    context = RunContext(CallbackParams())
    with mlflow.start_run() as run:
        logger = MlflowMetricLogger(run.info.run_id, history, details_every_n_steps=4)
        _drive(logger, history, context, range(1, 11), step_ms=float)  # step i takes i ms
        history.epochs.append(EpochRecord(epoch=1, step=10, train_loss=0.5, seconds=1.0, images_per_s=1.0))
        logger.on_train_epoch_end(context)
        logger.close()
    client = mlflow.MlflowClient()

    def series(key):
        return [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]

    assert [s for s, _ in series("train/loss")] == list(range(1, 11))
    # windows: steps 1-4, 5-8, then 9-10 closed by the epoch end
    assert series("train/step_time_ms") == [(4, 2.5), (8, 6.5), (10, 9.5)]
    assert series("train/throughput_img_s") == [
        (s, pytest.approx(8000.0 / ms)) for s, ms in [(4, 2.5), (8, 6.5), (10, 9.5)]
    ]
    assert series("train/lr") == [(s, pytest.approx(float(lrs[s - 1]))) for s in (4, 8, 10)]
