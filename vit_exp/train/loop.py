"""The training loop: one train step per batch, MindSpore callbacks around it, validation per epoch.

Callbacks get ``mindspore.train.Model``'s contract (``RunContext``, ``cb_params``, ``request_stop()``)
without Model's per-step bookkeeping (~10 % of a vit_tiny step)."""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from mindspore import nn
from mindspore.train import RunContext

from vit_exp.train.state import LoopPosition

if TYPE_CHECKING:
    from vit_exp.train.plan import TrainPlan


class CallbackParams(dict):
    """``cb_params``: a dict whose keys also read and write as attributes, as callbacks expect."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        self[name] = value


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep pre-training objects out of the cyclic GC in the block (a full pass: ~400k objects, ~180 ms)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def validation_metrics(eval_network: nn.Cell, dataset, metrics: dict) -> dict[str, float]:
    """``metrics`` of ``eval_network`` (a WithEvalCell) over ``dataset``; ``eval_loss`` is over all
    images (batch means weighted by size), not the last batch's as in MindSpore's Model.fit."""
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


def run_training(  # noqa: C901 (66 lines: MindSpore's callback contract, step by step, read top to bottom)
    train_step: nn.Cell,
    epoch_batches: Callable[[int, int], Iterator],
    *,
    plan: TrainPlan,
    callbacks: Sequence,
    validate: Callable[[], dict] | None = None,
    start: LoopPosition | None = None,
    stop_signal: Callable[[], bool] = lambda: False,
    on_stop_signal: Callable[[RunContext, bool], None] | None = None,
) -> None:
    """Run ``train_step(images, labels)`` over ``epoch_batches(epoch, skip)`` up to ``plan.total_steps``.

    ``start`` resumes mid-epoch; ``validate()`` fills ``cb_params.eval_results`` in ``plan.validation_epochs``
    before ``on_train_epoch_end``. ``request_stop()`` ends after the step (the epoch still validates); a true
    ``stop_signal()`` (preemption) calls ``on_stop_signal(run_context, epoch_done)``, which must raise."""
    start = start or LoopPosition()  # the first step
    cb_params = CallbackParams(
        train_network=train_step,
        epoch_num=plan.epochs,
        batch_num=plan.steps_per_epoch,
        cur_epoch_num=start.epoch,
        cur_step_num=start.global_step,
        dataset_sink_mode=False,
        mode="train",
    )
    run_context = RunContext(cb_params)

    def check_signal(epoch_done: bool) -> None:
        if on_stop_signal is not None and stop_signal():
            on_stop_signal(run_context, epoch_done)

    for callback in callbacks:
        callback.on_train_begin(run_context)
    first = start.epoch + 1 if start.epoch_done else start.epoch
    # a stop requested at the start (a run resumed after its early stop) trains nothing
    epochs = () if run_context.get_stop_requested() else range(first, plan.epochs + 1)
    for epoch in epochs:
        cb_params.cur_epoch_num = epoch
        cb_params.pop("eval_results", None)
        train_step.set_train(True)
        for callback in callbacks:
            callback.on_train_epoch_begin(run_context)
        skip = start.step_in_epoch if epoch == start.epoch else 0
        if skip < plan.steps_per_epoch and cb_params.cur_step_num < plan.total_steps:
            for images, labels in epoch_batches(epoch, skip):
                for callback in callbacks:
                    callback.on_train_step_begin(run_context)
                cb_params.net_outputs = train_step(images, labels)
                cb_params.cur_step_num += 1
                for callback in callbacks:
                    callback.on_train_step_end(run_context)
                if cb_params.cur_step_num >= plan.total_steps or run_context.get_stop_requested():
                    break
                check_signal(epoch_done=False)
        if validate is not None and (epoch in plan.validation_epochs or run_context.get_stop_requested()):
            cb_params.eval_results = validate()
        for callback in callbacks:
            callback.on_train_epoch_end(run_context)
        if run_context.get_stop_requested() or cb_params.cur_step_num >= plan.total_steps:
            break
        check_signal(epoch_done=True)
    for callback in callbacks:
        callback.on_train_end(run_context)
