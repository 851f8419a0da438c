"""device.precision=bf16 through the CLIs: a run trains and records what it computed in, its
checkpoints stay fp32 in the reference layout, and eval of its version agrees with fp32 eval."""

from __future__ import annotations

import math

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.models import TINY_MODEL, requires_bf16, tiny_vit
from tests.helpers.processes import run_cli

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)

CLASSES = ["ant", "bee", "cat"]


@requires_bf16
def test_bf16_run_records_its_precision_keeps_fp32_checkpoints_and_evaluates_like_fp32(tmp_path):
    import mindspore as ms
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    root = write_image_folder(tmp_path / "ds", CLASSES, per_class=12, size=16)
    common = [f"mlflow.tracking_uri={uri}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = run_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        "optim.lr=3e-3",
        "device.precision=bf16",
        "registry.name=bf16-vit",
        *common,
        f"hydra.run.dir={tmp_path / 'train'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "graph mode, bf16)" in proc.stdout + proc.stderr

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["device.precision"] == "bf16"
    assert run.data.params["device.precision_used"] == "bf16"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)

    # the checkpoint a version ships: fp32, every name and shape of an fp32 ViT's
    checkpoints = sorted((tmp_path / "train" / "checkpoints").glob("*-s*[0-9].ckpt"))
    assert checkpoints
    saved = ms.load_checkpoint(str(checkpoints[-1]))
    reference = {p.name: tuple(p.shape) for p in tiny_vit(num_classes=3).get_parameters()}
    assert {name: tuple(v.shape) for name, v in saved.items()} == reference
    assert {v.dtype for v in saved.values()} == {ms.float32}

    top1 = {}
    for precision in ("fp32", "bf16"):
        proc = run_cli(
            "vit_exp.eval",
            "model_uri=models:/bf16-vit/2",
            "data=image_folder",
            f"data.root={root}",
            f"device.precision={precision}",
            "tag_version=false",
            *common,
            f"hydra.run.dir={tmp_path / ('eval-' + precision)}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = client.search_runs(
        [client.get_experiment_by_name("vit-exp").experiment_id],
        filter_string="tags.`vit_exp.role` = 'eval'",
    )
    for r in runs:
        top1[r.data.params["device.precision"]] = r.data.metrics["eval/top1"]
    assert set(top1) == {"fp32", "bf16"}
    assert top1["bf16"] == pytest.approx(top1["fp32"], abs=1 / 12)  # at most one val image apart
