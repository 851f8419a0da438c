"""Tiny real training runs: the fit loop learns, and the CLI trains, validates and checkpoints.

The CLI runs here go through ``vit_exp.run.main()`` in this process (tests/helpers/inprocess.py);
the session's trained store (tests/conftest.py) is a real ``python -m vit_exp.run`` process.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import yaml

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL, tiny_vit


def test_a_few_steps_reduce_the_loss(tmp_path):
    """fit as a notebook uses it: plain MindSpore objects and the training callbacks, no MLflow."""
    from mindspore.train import Callback

    from vit_exp.config import group_settings
    from vit_exp.data.folder import ImageFolderData
    from vit_exp.data.pipeline import TrainBatches, val_dataset
    from vit_exp.train.callbacks import CheckpointSaver, TrainHistory
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.lr import constant_schedule
    from vit_exp.train.metrics import classification_metrics
    from vit_exp.train.trainer import fit

    class FrozenObjects(Callback):  # fit keeps pre-existing objects out of the cyclic GC
        counts: tuple = ()

        def on_train_step_end(self, run_context) -> None:
            self.counts += (gc.get_freeze_count(),)

    frozen = FrozenObjects()
    group_settings("device").apply(seed=0)
    root = write_image_folder(tmp_path / "ds", ["red", "green", "blue", "grey"], per_class=16, size=16)
    data = ImageFolderData(root=root, train_crop_scale=(0.8, 1.0), hflip_prob=0.0, val_resize_margin=0)
    net = tiny_vit(num_classes=4)
    batches = TrainBatches(data, 32, 16, seed=0, exact_skip=True)
    plan = group_settings("trainer", epochs=6, batch_size=16).plan(batches.steps_per_epoch)
    optim = group_settings("optim", "adam", lr=3e-3)
    lr_values = optim.learning_rates(constant_schedule(plan.total_steps, plan.steps_per_epoch))
    history = TrainHistory(16, lr_values)
    saver = CheckpointSaver(tmp_path / "ckpt", "tiny", history, every_n_epochs=1, keep=100)
    fit(
        net,
        batches.epoch,
        val_dataset(data, 32, 16),
        optimizer=optim.build(net.trainable_params(), lr_values),
        loss_fn=CrossEntropySmooth(4, 0.0),
        metrics=classification_metrics(4),
        plan=plan,
        callbacks=[history, saver, frozen],
    )
    assert len(frozen.counts) == 24 and min(frozen.counts) > 10_000
    assert gc.get_freeze_count() == 0  # unfrozen when fit returns
    epochs = history.epochs
    assert len(epochs) == 6 and history.global_step == 24
    assert epochs[-1].train_loss < 0.5 * epochs[0].train_loss
    assert epochs[-1].val["top1"] > 0.9
    assert [c.path.name for c in saver.on_disk][-1] == "tiny-e006-s000024.ckpt"
    assert len(saver.on_disk) == 6 and all(c.path.is_file() for c in saver.on_disk)


def test_cli_trains_validates_and_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "trainer.max_steps=6",
        "trainer.batch_size=32",
        "trainer.print_every_n_steps=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "step 2/" in out and "loss" in out and "img/s" in out
    assert "val loss" in out and "top1" in out and "top5" in out
    assert "finished 6 step(s)" in out and "stopped at trainer.max_steps" in out
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["vit_tiny-e001-s000006.ckpt", "vit_tiny-e001-s000006.state.ckpt"]
    config = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    assert config["model"]["embed_dim"] == 32 and config["trainer"]["max_steps"] == 6
    assert (tmp_path / "cache/datasets/digits/train/7").is_dir()


@pytest.mark.integration  # make test stays under ~6 min; CI's integration tier runs it
def test_cli_pretrained_checkpoint_round_trip(tmp_path):
    """A checkpoint written by one run loads into the next via model.pretrained (head kept)."""
    import mindspore as ms

    common = [
        *TINY_MODEL,
        "trainer.max_steps=3",
        "trainer.batch_size=32",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    first = run_main("vit_exp.run", *common, f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = next((tmp_path / "a/checkpoints").glob("*[0-9].ckpt"))
    second = run_main("vit_exp.run", *common, f"model.pretrained={ckpt}", f"hydra.run.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "re-initialised" not in second.stdout + second.stderr
    before = ms.load_checkpoint(str(ckpt))["cls"].asnumpy()
    after = ms.load_checkpoint(str(next((tmp_path / "b/checkpoints").glob("*[0-9].ckpt"))))["cls"].asnumpy()
    assert before.shape == after.shape and not np.array_equal(before, after)  # trained further from it
