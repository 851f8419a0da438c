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
    from mindspore.train.callback._callback import InternalCallbackParam

    from vit_exp.tracking.callback import MlflowLogger
    from vit_exp.train.callbacks import TrainHistory

    mlflow.set_tracking_uri(tracking_store)
    mlflow.MlflowClient().search_experiments()  # creates the store
    history = TrainHistory(8, np.full(200, 1e-3, dtype=np.float32))
    logger = MlflowLogger("f" * 32, history, max_buffered=40)  # no such run: every batch fails
    context = RunContext(InternalCallbackParam())
    with caplog.at_level(logging.WARNING, logger="vit_exp.tracking"):
        for step in range(1, 121):
            history.global_step, history.last_loss, history.last_step_ms = step, 1.0, 10.0
            logger.on_train_step_end(context)
        logger.close()
    warnings = [r for r in caplog.records if "could not be logged" in r.getMessage()]
    assert len(warnings) == 1
