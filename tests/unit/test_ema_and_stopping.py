"""The recipe's EMA of the weights, early stopping and best-k checkpoints (issue 27, points 3 and 4):
real MindSpore, real Hydra, a real in-process run in a temporary SQLite store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL, tiny_vit


def test_the_ema_equals_its_closed_form_after_n_steps_and_a_swap_round_trip_is_exact(execution_mode):
    import mindspore as ms

    from vit_exp.train.ema import EmaWeights

    decay, steps = 0.9, 6
    net = tiny_vit(num_classes=3)
    params = net.trainable_params()
    ema = EmaWeights(net, decay)
    assert [a.name for a in ema.averages] == [f"ema.{p.name}" for p in params]
    rng = np.random.default_rng(0)
    values = [{p.name: p.asnumpy().astype(np.float64) for p in params}]  # p_0: the weights at the start
    for _ in range(steps):  # known weights p_k after each optimizer step k, then the update
        for p in params:
            p.set_data(ms.Tensor(rng.normal(size=p.shape).astype(np.float32)))
        values.append({p.name: p.asnumpy().astype(np.float64) for p in params})
        ema.update()
    for p, average in zip(params, ema.averages, strict=True):
        # ema_n = d^n p_0 + sum_k (1 - d) d^(n - k) p_k
        closed = decay**steps * values[0][p.name]
        closed += sum((1 - decay) * decay ** (steps - k) * values[k][p.name] for k in range(1, steps + 1))
        np.testing.assert_allclose(average.asnumpy(), closed, rtol=1e-5, atol=1e-6)

    raw = {p.name: p.asnumpy().copy() for p in params}
    averaged = {a.name: a.asnumpy().copy() for a in ema.averages}
    ema.swap()
    assert all(np.array_equal(p.asnumpy(), averaged[f"ema.{p.name}"]) for p in params)
    ema.swap()
    assert all(np.array_equal(p.asnumpy(), raw[p.name]) for p in params)
    assert all(np.array_equal(a.asnumpy(), averaged[a.name]) for a in ema.averages)


@pytest.mark.parametrize("background", [pytest.param(False, marks=pytest.mark.integration), True])
def test_a_checkpoint_shipping_the_ema_keeps_the_models_names_and_resumes_the_raw_weights(
    background, tmp_path
):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.config import group_settings
    from vit_exp.train.callbacks import _ParameterCopy
    from vit_exp.train.ema import EmaWeights
    from vit_exp.train.state import load_training_network, read_checkpoint, read_training_state, state_file
    from vit_exp.train.state import save_training_checkpoint as save

    def train_step():
        net = tiny_vit(num_classes=3)
        optimizer = group_settings("optim", "adam", lr=1e-2).build(net.trainable_params(), np.full(8, 1e-2))
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        step = ms.amp.build_train_network(net, optimizer, loss, level="O0")
        step.ema = EmaWeights(net, 0.5)
        return net, step

    net, step = train_step()
    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 0], np.int32))
    for _ in range(3):
        step(images, labels)
        step.ema.update()
    saved = {p.name: p.asnumpy().copy() for p in step.get_parameters()}
    source = _ParameterCopy().of(step) if background else step
    path = save(source, tmp_path / "e.ckpt", {"position": {"epoch": 1}}, weights="ema")

    shipped = ms.load_checkpoint(str(path))  # what a version ships and model.pretrained= loads
    assert set(shipped) == {p.name for p in net.get_parameters()}  # the model's names
    assert all(np.array_equal(shipped[n].asnumpy(), saved[f"ema.{n}"]) for n in shipped)
    assert not all(np.array_equal(saved[n], saved[f"ema.{n}"]) for n in shipped)
    states = ms.load_checkpoint(str(state_file(path)))
    assert {f"ema.{n}" for n in shipped} | {f"raw.{n}" for n in shipped} <= set(states)
    assert read_training_state(path)["network"]["weights"] == "ema"

    _, fresh = train_step()
    load_training_network(fresh, read_checkpoint(path), path)  # a resume: raw weights, EMA, optimizer
    assert all(np.array_equal(p.asnumpy(), saved[p.name]) for p in fresh.get_parameters())


def _record(epoch: int, top1: float | None, ema_top1: float | None = None):
    from vit_exp.train.callbacks import EpochRecord

    val = {} if top1 is None else {"top1": top1, "top5": 1.0, "loss": 1.0 - top1}
    val_ema = {} if ema_top1 is None else {"top1": ema_top1, "top5": 1.0, "loss": 1.0 - ema_top1}
    return EpochRecord(epoch, 10 * epoch, 1.0, 1.0, 1.0, val=val, val_ema=val_ema)


def test_which_weights_a_checkpoint_ships():
    from vit_exp.train.objective import shipped_weights

    better_ema, better_raw, tie = _record(1, 0.5, 0.6), _record(2, 0.6, 0.5), _record(3, 0.5, 0.5)
    assert [shipped_weights("better", "val/top1", r) for r in (better_ema, better_raw, tie)] == [
        "ema",
        "raw",
        "raw",
    ]
    assert shipped_weights("better", "val/loss", better_raw) == "raw"  # loss 0.4 vs 0.5: lower wins
    assert shipped_weights("better", "val/top1", None) == "raw"  # a step checkpoint: not validated
    assert (
        shipped_weights("ema", "val/top1", None) == "ema"
        and shipped_weights(None, "val/top1", better_ema) == "raw"
    )


def test_best_k_keeps_the_best_epoch_checkpoints_by_the_objective_plus_the_last(tmp_path):
    from mindspore import nn
    from mindspore.train import RunContext

    from vit_exp.train.callbacks import CheckpointSaver, TrainHistory
    from vit_exp.train.loop import CallbackParams
    from vit_exp.train.state import checkpoint_files

    history = TrainHistory(batch_size=8, lr_values=[])
    saver = CheckpointSaver(
        tmp_path, "m", history, every_n_epochs=1, keep=2, keep_by="best", ema_weights="better"
    )
    cb = CallbackParams(train_network=nn.Dense(2, 2), batch_num=10, cur_epoch_num=1, cur_step_num=0)
    # raw top1 / EMA top1 per epoch; epoch 4 is not validated (scores worst); epoch 5 ties epoch 2
    scores = [(0.5, 0.4), (0.7, 0.8), (0.6, 0.5), (None, None), (0.8, 0.7), (0.3, 0.2)]
    for epoch, (raw, ema) in enumerate(scores, start=1):
        cb.cur_epoch_num, cb.cur_step_num = epoch, 10 * epoch
        history.epochs.append(_record(epoch, raw, ema))
        saver.on_train_epoch_end(RunContext(cb))
    saver.wait_for_write()
    assert [c.weights for c in saver.written] == ["raw", "ema", "raw", "raw", "raw", "raw"]
    assert [c.epoch for c in saver.on_disk] == [2, 5, 6]  # the best two (0.8 at 2 first), the last
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == sorted(f.name for c in saver.on_disk for f in checkpoint_files(c.path))


def test_early_stopping_counts_validated_epochs_and_a_run_resumed_after_its_stop_trains_no_more():
    from tests.unit.test_loop import Recorder, _setup, epochs_of
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.loop import run_training
    from vit_exp.train.plan import TrainPlan
    from vit_exp.train.state import LoopPosition
    from vit_exp.train.stopping import EarlyStopping

    history = TrainHistory(batch_size=8, lr_values=[])
    stopping = EarlyStopping(history, "val/loss", patience=2, min_delta=0.05, total_steps=60)
    # val/loss (lower is better): 0.5, 0.3 (best), 0.28 (not by > 0.05), not validated, 0.29: stop
    for epoch, top1 in enumerate([0.5, 0.7, 0.72, None, 0.71], start=1):
        history.epochs.append(_record(epoch, top1))
        history.global_step = 10 * epoch
        assert (stopping.verdict() is None) == (epoch < 5), epoch
    assert stopping.verdict() == (
        "epoch 5: val/loss did not improve by more than 0.05 for 2 validated epoch(s) "
        "(best 0.3000 at epoch 2)"
    )

    _, _, _, step, dataset, _, _ = _setup()
    recorder = Recorder()
    plan = TrainPlan(6, 3, 18, (1, 2, 3, 4, 5, 6))
    start = LoopPosition(epoch=5, step_in_epoch=3, global_step=15, epoch_done=True)
    history.global_step = 15
    run_training(step, epochs_of(dataset), plan=plan, callbacks=[history, stopping, recorder], start=start)
    assert recorder.steps == [] and recorder.events == ["begin", "end"]
    assert stopping.reason is not None and stopping.reason.startswith("epoch 5: val/loss")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.ema.decay=1.0", "trainer.ema.decay"),
        ("trainer.ema.decay=0", "trainer.ema.decay"),
        ("trainer.ema.decay=-0.5", "trainer.ema.decay"),
        ("trainer.ema.weights=best", "trainer.ema.weights"),
        ("trainer.early_stopping.patience=0", "trainer.early_stopping.patience"),
        ("trainer.early_stopping.patience=-2", "trainer.early_stopping.patience"),
        ("trainer.early_stopping.min_delta=-0.1", "trainer.early_stopping.min_delta"),
        ("trainer.keep_checkpoints_by=oldest", "trainer.keep_checkpoints_by"),
    ],
)
def test_bad_recipe_values_are_one_line_config_errors_naming_the_key(compose, override, key):
    from hydra.errors import InstantiationException

    from vit_exp.errors import ConfigError, user_message

    with pytest.raises((ConfigError, InstantiationException)) as raised:
        instantiate(compose([override]).trainer)
    message = user_message(raised.value)
    assert message is not None and key in message and "\n" not in message


def test_recipe_switches_off_keep_the_default_runs_params_and_on_make_them_params(compose):
    from vit_exp.job import ConfigSnapshot
    from vit_exp.tracking.resume import comparable_config, hyperparameters

    default = ConfigSnapshot.of(compose()).flat
    assert not [
        k for k in hyperparameters(default) if k.startswith(("trainer.ema", "trainer.early", "trainer.keep"))
    ]
    assert "trainer.keep_checkpoints_by" not in comparable_config(default)  # NOT_COMPARED
    on = ConfigSnapshot.of(compose(["trainer.ema.decay=0.999", "trainer.early_stopping.patience=3"])).flat
    params = hyperparameters(on)
    assert {"trainer.ema.decay", "trainer.ema.weights", "trainer.early_stopping.patience"} <= set(params)
    assert params["trainer.ema.decay"] == "0.999"


@pytest.mark.integration  # make test stays under ~6 min; CI's integration tier runs it
def test_early_stopping_ends_the_run_finished_with_a_tag_a_console_line_and_the_best_k_kept(
    tmp_path, tracking_store
):
    """An improvement must exceed min_delta=1 (top-1 never can): the run stops after 1 + patience
    validated epochs, FINISHED; keep_checkpoints=1 by best keeps the best epoch's and the last, and
    every epoch's version keeps its files and the metric of the weights it ships."""
    import mlflow

    root = write_image_folder(tmp_path / "ds", ["ant", "bee", "cat"], per_class=4, size=16)
    uri = tracking_store
    common = [
        *TINY_MODEL,
        "model.num_layers=1",
        "data=image_folder",
        f"data.root={root}",
        "trainer.batch_size=4",
        "trainer.epochs=4",
        "trainer.early_stopping.patience=1",
        "trainer.early_stopping.min_delta=1.0",
        "trainer.keep_checkpoints=1",
        "trainer.keep_checkpoints_by=best",
        "trainer.ema.decay=0.5",
        "registry.register=every",
        "mlflow.system_metrics=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    proc = run_main("vit_exp.run", *common, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reason = "epoch 2: val/top1 (of the better of raw and EMA weights) did not improve by more than 1"
    assert f"early stopping: {reason}" in proc.stdout and f"(stopped early: {reason}" in proc.stdout
    assert "epoch 3/4" not in proc.stdout  # stopped after epoch 2 (its checkpoint written)

    client = mlflow.MlflowClient(uri, uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["vit_exp.stopped_early"].startswith(reason)
    assert "stopped early by trainer.early_stopping: epoch 2" in run.data.tags["mlflow.note.content"]
    ema_top1 = client.get_metric_history(run.info.run_id, "val_ema/top1")
    assert sorted(m.step for m in ema_top1) == [3, 6]

    top1 = [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "val/top1"), key=lambda m: m.step)
    ]
    ema = [m.value for m in sorted(ema_top1, key=lambda m: m.step)]
    shipped = [max(r, e) for r, e in zip(top1, ema, strict=True)]
    best = 1 + shipped.index(max(shipped))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*[0-9].ckpt"))
    assert kept == sorted({f"vit_tiny-e{e:03d}-s{3 * e:06d}.ckpt" for e in (best, 2)})
    versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert len(versions) == 2  # every epoch's, pruned or not, with its files and shipped metric
    for version in versions:
        epoch = int(version.tags["epoch"])
        assert float(version.tags["val/top1"]) == pytest.approx(shipped[epoch - 1], abs=1e-6)
        assert version.tags["weights"] == ("ema" if ema[epoch - 1] > top1[epoch - 1] else "raw")
        files = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
        assert len(list((files / "artifacts").glob("*.ckpt"))) == 1

    again = run_main(
        "vit_exp.run", *common, f"resume={run.info.run_id}", f"hydra.run.dir={tmp_path / 'again'}"
    )
    assert again.returncode == 0 and "already FINISHED; nothing to do" in again.stdout
    assert math.isfinite(float(run.data.metrics["best/val_top1"]))
