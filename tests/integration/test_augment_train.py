"""A few training steps with ``augment=deit`` through the training CLI in this process: soft targets
(mixup/CutMix) in training, hard labels in validation, the recipe's settings recorded as params."""

from __future__ import annotations

import mlflow
import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL


@pytest.mark.integration
def test_deit_trains_on_soft_targets_and_validates_on_hard_labels(tmp_path, tracking_store):
    root = write_image_folder(tmp_path / "ds", ["ant", "bee", "cat"], per_class=8, size=16)
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "augment=deit",
        "augment.randaug.magnitude=7",
        "data=image_folder",
        f"data.root={root}",
        "data.train_fraction=0.75",
        "trainer.max_steps=4",
        "trainer.batch_size=4",
        "mlflow.experiment=augment",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "18 train / 24 val images" in proc.stdout  # 6 of each class's 8 train images; val untouched
    client = mlflow.MlflowClient(tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("augment").experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["augment.name"] == "deit" and params["augment.mix.prob"] == "1.0"
    assert params["augment.randaug.magnitude"] == "7" and params["data.train_fraction"] == "0.75"
    assert "augment.random_crop" not in params  # on, as before the group existed
    # CrossEntropySmooth would fail on [B, C] float targets and the metrics on them: training took
    # soft targets, validation hard labels
    assert metrics["train/epoch_loss"] > 0 and 0 <= metrics["val/top1"] <= 1 and metrics["val/loss"] > 0
