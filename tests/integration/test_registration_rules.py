"""``registry.register=auto`` by the kind of run (real Hydra multirun, MindSpore and MLflow, in-process):
a sweep job registers its last epoch checkpoint, a smoke run none; every epoch checkpoint is a
LoggedModel of its run, once; @last and @best follow the versions."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL


@pytest.mark.integration
def test_auto_registers_a_sweep_jobs_last_checkpoint_and_a_smoke_run_none(tmp_path, tracking_store):
    import mlflow

    common = [*TINY_MODEL, "model.num_layers=1", "trainer.epochs=2", f"paths.cache_dir={tmp_path / 'cache'}"]
    sweep = run_main(
        "vit_exp.run", "--multirun", *common, "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    smoke = run_main("vit_exp.run", *common, "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'smoke'}")
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert "model versions: 0 of 'vit_tiny-digits' (registry.register=none (auto: a smoke run" in smoke.stdout

    client = mlflow.MlflowClient(tracking_store, tracking_store)
    experiment = client.get_experiment_by_name("vit-exp").experiment_id
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("vit_exp.role") != "sweep"]
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (alone,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(jobs) == 2
    for run in [*jobs, alone]:
        models = client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        names = Counter(m.name for m in models)
        assert set(names.values()) == {1}, names  # each checkpoint once, also the one registered at the end
        versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
        if run is alone:
            assert versions == [] and len(models) == 1  # its one checkpoint: a LoggedModel, no version
            continue
        assert len(models) == 2
        (version,) = versions
        assert version.tags["registered_by"] == "last (auto: a sweep job)" and version.tags["epoch"] == "2"
        last = next(m for m in models if m.name.startswith("vit_tiny-e002-"))
        assert version.source == f"models:/{last.model_id}"

    versions = sorted(client.search_model_versions("name='vit_tiny-digits'"), key=lambda v: int(v.version))
    aliases = {k: str(v) for k, v in client.get_registered_model("vit_tiny-digits").aliases.items()}
    top1 = [float(v.tags["val/top1"]) for v in versions]
    assert aliases == {
        "last": str(versions[-1].version),
        "best": str(versions[top1.index(max(top1))].version),
    }
