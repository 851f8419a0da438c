"""The same tiny training run against a real `mlflow server` on a free 127.0.0.1 port."""

from __future__ import annotations

import pytest

from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import MlflowServer, run_cli


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    yield server.url
    server.stop()


def test_tiny_run_against_a_real_tracking_server(mlflow_server, tmp_path):
    proc = run_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "trainer.max_steps=3",
        "trainer.batch_size=32",
        "registry.name=served-vit",
        f"mlflow.tracking_uri={mlflow_server}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "val/top1")) == 1
    assert "hydra" in {a.path for a in client.list_artifacts(run.info.run_id)}
    (version,) = client.search_model_versions("name='served-vit'")
    assert version.tags["global_step"] == "3" and version.run_id == run.info.run_id
    model_files = {
        a.path.rsplit("/", 1)[-1]
        for a in client.list_artifacts(run.info.run_id, "models/vit_tiny-e001-s000003")
    }
    assert {"MLmodel", "serving_input_example.json", "artifacts"} <= model_files
