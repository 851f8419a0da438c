"""The README's default experiment, end to end (about a minute on 2 cores: marked slow, `make test-all`)."""

from __future__ import annotations

import pytest

from tests.helpers.processes import run_cli


@pytest.mark.slow
def test_default_run_learns_digits_and_registers_every_epoch(tmp_path, tracking_store):
    proc = run_cli(
        "vit_exp.run", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "FINISHED"
    top1 = [m.value for m in client.get_metric_history(run.info.run_id, "val/top1")]
    assert len(top1) == 30 and max(top1) >= 0.97  # 0.986 measured (bench/RESULTS.md)
    versions = client.search_model_versions("name='vit_tiny-digits'")
    assert sorted(int(v.tags["epoch"]) for v in versions) == list(range(1, 31))
