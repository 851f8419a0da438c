"""vit_exp.train.loop: the Model.fit callback contract, on a real tiny ViT and real MindSpore datasets."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import tiny_vit
from vit_exp.train.plan import TrainPlan


def _setup(num_images=24, batch=8):
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore import nn

    from vit_exp.train.losses import CrossEntropySmooth

    rng = np.random.default_rng(0)
    images = rng.normal(size=(num_images, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 3, num_images).astype(np.int32)
    dataset = ds.NumpySlicesDataset({"image": images, "label": labels}, shuffle=False).batch(batch)
    net = tiny_vit(num_classes=3)
    loss = CrossEntropySmooth(3, 0.0)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), nn.SGD(net.trainable_params(), 0.05))
    return ms, net, loss, step, dataset, images, labels


def epochs_of(dataset):
    """``epoch_batches(epoch, skip)`` over a fixed dataset: the same batches every epoch."""

    def batches(epoch: int, skip: int):
        iterator = dataset.create_tuple_iterator(num_epochs=1)
        for _ in range(skip):
            next(iterator)
        return iterator

    return batches


class Recorder:
    """A MindSpore Callback that records what it sees."""

    def __new__(cls, stop_at_step=None):
        from mindspore.train import Callback

        class _Recorder(Callback):
            def __init__(self):
                super().__init__()
                self.events, self.steps, self.losses, self.eval_seen = [], [], [], {}

            def on_train_begin(self, rc):
                self.events.append("begin")

            def on_train_epoch_begin(self, rc):
                self.events.append(f"epoch_begin {rc.original_args().cur_epoch_num}")

            def on_train_step_end(self, rc):
                cb = rc.original_args()
                self.steps.append(cb.cur_step_num)
                self.losses.append(float(cb.net_outputs.asnumpy()))
                if stop_at_step is not None and cb.cur_step_num == stop_at_step:
                    rc.request_stop()

            def on_train_epoch_end(self, rc):
                cb = rc.original_args()
                self.eval_seen[cb.cur_epoch_num] = dict(cb.get("eval_results") or {})
                self.events.append(f"epoch_end {cb.cur_epoch_num}")

            def on_train_end(self, rc):
                self.events.append("end")

        return _Recorder()


def test_loop_calls_callbacks_in_model_fit_order_and_validates_on_schedule():
    from vit_exp.train.loop import run_training

    _, net, _, step, dataset, _, _ = _setup()
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    recorder = Recorder()
    calls = []
    run_training(
        step,
        epochs_of(dataset),
        plan=TrainPlan(epochs=3, steps_per_epoch=3, total_steps=9, validation_epochs=(2, 3)),
        callbacks=[recorder],
        validate=lambda: calls.append(1) or {"top1": 0.5, "eval_loss": 1.0},
    )
    assert recorder.events == [
        "begin",
        "epoch_begin 1",
        "epoch_end 1",
        "epoch_begin 2",
        "epoch_end 2",
        "epoch_begin 3",
        "epoch_end 3",
        "end",
    ]
    assert recorder.steps == list(range(1, 10))  # global step numbers, 3 per epoch
    assert recorder.eval_seen == {
        1: {},
        2: {"top1": 0.5, "eval_loss": 1.0},
        3: {"top1": 0.5, "eval_loss": 1.0},
    }
    assert len(calls) == 2
    assert all(np.isfinite(recorder.losses))
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the optimizer really stepped


def test_request_stop_ends_after_the_step_and_still_validates_that_epoch():
    from vit_exp.train.loop import run_training

    _, _, _, step, dataset, _, _ = _setup()
    recorder = Recorder(stop_at_step=4)
    run_training(
        step,
        epochs_of(dataset),
        plan=TrainPlan(epochs=5, steps_per_epoch=3, total_steps=15, validation_epochs=(5,)),
        callbacks=[recorder],
        validate=lambda: {"top1": 1.0, "eval_loss": 0.0},
    )
    assert recorder.steps == [1, 2, 3, 4]
    assert recorder.events[-2:] == ["epoch_end 2", "end"]
    assert recorder.eval_seen[2] == {"top1": 1.0, "eval_loss": 0.0}


def test_total_steps_ends_training_mid_epoch_and_that_epoch_validates():
    from vit_exp.train.loop import run_training

    _, _, _, step, dataset, _, _ = _setup()
    recorder = Recorder()
    run_training(
        step,
        epochs_of(dataset),
        plan=TrainPlan(epochs=2, steps_per_epoch=3, total_steps=5, validation_epochs=(2,)),
        callbacks=[recorder],
        validate=lambda: {"top1": 1.0, "eval_loss": 0.0},
    )
    assert recorder.steps == [1, 2, 3, 4, 5]
    assert recorder.events[-2:] == ["epoch_end 2", "end"]
    assert recorder.eval_seen == {1: {}, 2: {"top1": 1.0, "eval_loss": 0.0}}


def test_plan_counts_steps_epochs_and_validation_epochs():
    from vit_exp.config import group_settings

    plan = group_settings("trainer", epochs=5, val_every_n_epochs=2).plan(steps_per_epoch=4)
    assert plan == TrainPlan(epochs=5, steps_per_epoch=4, total_steps=20, validation_epochs=(2, 4, 5))
    assert not plan.stops_early
    capped = group_settings("trainer", epochs=5, max_steps=9).plan(steps_per_epoch=4)
    assert (capped.epochs, capped.total_steps, capped.validation_epochs) == (3, 9, (1, 2, 3))
    assert capped.stops_early


@pytest.mark.integration  # make test stays under ~6 min; CI's integration tier runs it
def test_validation_metrics_match_mindspore_model_eval_and_the_per_image_mean_loss():
    from mindspore import nn
    from mindspore.train import Model

    from vit_exp.train.loop import validation_metrics
    from vit_exp.train.metrics import classification_metrics

    ms, net, loss, _, dataset, images, labels = _setup(num_images=20, batch=8)  # last batch has 4
    results = validation_metrics(nn.WithEvalCell(net, loss), dataset, classification_metrics(3))
    reference = Model(net, loss_fn=loss, metrics=classification_metrics(3)).eval(
        dataset, dataset_sink_mode=False
    )
    assert results["top1"] == pytest.approx(reference["top1"])
    assert results["top5"] == pytest.approx(reference["top5"])
    net.set_train(False)
    batch_losses = [
        float(loss(net(ms.Tensor(images[i : i + 8])), ms.Tensor(labels[i : i + 8])).asnumpy())
        for i in range(0, 20, 8)
    ]
    # batches of 8, 8 and 4 images: the mean over images weights the batch means by their sizes
    assert results["eval_loss"] == pytest.approx(np.average(batch_losses, weights=[8, 8, 4]), rel=1e-5)
    assert results["eval_loss"] != pytest.approx(batch_losses[-1], rel=1e-3)  # not the last batch's
