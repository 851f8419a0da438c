"""The training loop: one train step per batch, MindSpore callbacks around it, validation per epoch.

Same contract as ``mindspore.train.Model.fit`` for callbacks (``RunContext`` with ``cb_params``:
``cur_epoch_num``, ``cur_step_num``, ``net_outputs``, ``eval_results`` with ``eval_loss``;
``request_stop()``), without Model's per-step bookkeeping, which cost ~10 % of a 20 ms vit_tiny
step on 2 cores (bench/RESULTS.md). ``trainer.dataset_sink_mode=true`` still goes through Model.fit.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator, Sequence

from mindspore import nn
from mindspore.train import RunContext
from mindspore.train.callback._callback import InternalCallbackParam


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the objects that exist before training out of Python's cyclic GC until the block ends.

    With MindSpore, MLflow and pandas loaded the process holds ~400k objects, and each full
    (generation-2) collection walks all of them: ~180 ms, 8 vit_tiny steps, whenever the objects
    churned by training (MLflow's ORM rows, tensors) trigger one. Frozen objects are still freed by
    reference counting; only reference cycles among them wait until the block ends.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def evaluate(eval_network: nn.Cell, dataset, metrics: dict) -> dict[str, float]:
    """Metrics of ``eval_network`` (a WithEvalCell: loss, logits, labels) over ``dataset``.

    ``eval_loss`` is the training loss function's mean over all images (batch means weighted by
    batch size). MindSpore 2.10's Model.fit reported the last batch's loss under that key (it
    re-creates its Loss metric for every batch).
    """
    for metric in metrics.values():
        metric.clear()
    eval_network.set_train(False)
    loss_sum, count = 0.0, 0
    for images, labels in dataset.create_tuple_iterator(num_epochs=1):
        loss, logits, targets = eval_network(images, labels)
        loss_sum += float(loss.asnumpy()) * images.shape[0]
        count += images.shape[0]
        for metric in metrics.values():
            metric.update(logits, targets)
    results = {name: float(metric.eval()) for name, metric in metrics.items()}
    results["eval_loss"] = loss_sum / count if count else math.nan
    return results


def run_training(
    train_step: nn.Cell,
    train_ds,
    *,
    epochs: int,
    steps_per_epoch: int,
    callbacks: Sequence,
    validate=None,
    validation_epochs: Sequence[int] = (),
) -> None:
    """Run ``epochs`` epochs of ``train_step(images, labels)`` over ``train_ds``.

    ``validate()`` returns the metrics dict put in ``cb_params.eval_results`` after each epoch in
    ``validation_epochs`` (before the callbacks' ``on_train_epoch_end``, as in Model.fit).
    A callback's ``run_context.request_stop()`` ends training after the current step; the epoch's
    validation and end-of-epoch callbacks still run.
    """
    cb_params = InternalCallbackParam()
    cb_params.train_network = train_step
    cb_params.epoch_num = epochs
    cb_params.batch_num = steps_per_epoch
    cb_params.cur_epoch_num = 0
    cb_params.cur_step_num = 0
    cb_params.dataset_sink_mode = False
    cb_params.mode = "train"
    run_context = RunContext(cb_params)
    validation_epochs = set(validation_epochs)

    for callback in callbacks:
        callback.on_train_begin(run_context)
    batches = train_ds.create_tuple_iterator(num_epochs=epochs)
    for epoch in range(1, epochs + 1):
        cb_params.cur_epoch_num = epoch
        cb_params.pop("eval_results", None)
        train_step.set_train(True)
        for callback in callbacks:
            callback.on_train_epoch_begin(run_context)
        for images, labels in batches:
            for callback in callbacks:
                callback.on_train_step_begin(run_context)
            cb_params.net_outputs = train_step(images, labels)
            cb_params.cur_step_num += 1
            for callback in callbacks:
                callback.on_train_step_end(run_context)
            if run_context.get_stop_requested():
                break
        if validate is not None and (epoch in validation_epochs or run_context.get_stop_requested()):
            cb_params.eval_results = validate()
        for callback in callbacks:
            callback.on_train_epoch_end(run_context)
        if run_context.get_stop_requested():
            break
    for callback in callbacks:
        callback.on_train_end(run_context)
