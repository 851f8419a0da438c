"""Several processes starting together on a new SQLite store: every run recorded, the store usable."""

from __future__ import annotations

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli, start_cli

# registry.register=every: each smoke run registers its checkpoint (auto would register none)
SMOKE_RUN = [
    *TINY_MODEL,
    "model.num_layers=1",
    "trainer.max_steps=2",
    "trainer.batch_size=64",
    "registry.register=every",
]


def start_together(store: str, tmp_path, count: int) -> list[str]:
    """Start ``count`` tiny training runs at once on ``store``; return each one's output."""
    processes = [
        start_cli(
            "vit_exp.run",
            *SMOKE_RUN,
            f"mlflow.tracking_uri={store}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / f'run{i}'}",
            log=tmp_path / f"run{i}.log",
        )
        for i in range(count)
    ]
    codes = [p.wait(timeout=600) for p in processes]
    outputs = [(tmp_path / f"run{i}.log").read_text() for i in range(count)]
    for code, output in zip(codes, outputs, strict=True):
        assert code == 0, output[-2000:]
    return outputs


def check_store(store: str, runs: int) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = client.get_experiment_by_name("vit-exp")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == runs and {r.info.status for r in found} == {"FINISHED"}
    versions = [int(v.version) for v in client.search_model_versions("name='vit_tiny-digits'")]
    assert sorted(versions) == list(range(1, runs + 1))  # one per run, numbers unique


@pytest.mark.integration
def test_four_runs_starting_together_on_a_new_store(tmp_path):
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    start_together(store, tmp_path, 4)
    check_store(store, 4)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_four_runs_starting_together_ten_trials(tmp_path, trial):
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    start_together(store, tmp_path, 4)
    check_store(store, 4)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("launcher", "metric"),
    [
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "val/top1"),
        # a cluster launcher (submitit_slurm on a cluster: sweeps/slurm_grid.yaml), run locally
        (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], "val/loss"),
    ],
    ids=["joblib", "submitit_local"],
)
def test_a_sweep_of_two_parallel_jobs_on_a_new_store(tmp_path, launcher, metric):
    """2 jobs at once: one parent run, a child per job, a summary table, the best job by the
    sweep's optimized_metric (higher or lower is better as the metric says) on the parent."""
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc = run_cli(
        "vit_exp.run",
        "--multirun",
        *launcher,
        f"optimized_metric={metric}",
        *SMOKE_RUN,
        "optim.lr=1e-3,2e-3",
        f"mlflow.tracking_uri={store}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.info.status for r in runs} == {"FINISHED"} and len(children) == 2
    assert parent.data.tags["hydra.sweep.dir"] == str(tmp_path / "sweep")
    assert "optim.lr=1e-3,2e-3" in parent.data.tags["hydra.sweep.overrides"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["optim.lr"]) for c in children) == [1e-3, 2e-3]
    assert "sweep results (2 job(s))" in proc.stdout and "val/top1" in proc.stdout
    # the parent compares with other sweeps: swept keys as params, the best job's metrics and run id
    assert parent.data.params["optim.lr"] == "1e-3,2e-3"
    sign = 1 if metric == "val/top1" else -1  # val/loss: lower is better
    best = max(children, key=lambda c: (sign * c.data.metrics[metric], -int(c.data.tags["hydra.job.num"])))
    assert parent.data.metrics[metric] == pytest.approx(best.data.metrics[metric])  # one epoch each
    assert {"val/top1", "val/loss"} <= set(parent.data.metrics)
    assert parent.data.tags["sweep.best_run_id"] == best.info.run_id


def test_the_slurm_sweep_composes_with_the_keys_a_cluster_needs():
    """sweeps/slurm_grid.yaml: Hydra's submitit_slurm launcher with our keys, and the local swap."""
    sweep = ("--config-dir", "sweeps", "--config-name", "slurm_grid", "--cfg", "hydra")
    slurm = run_main("vit_exp.run", *sweep, "hydra.launcher.partition=gpu-a100")
    assert slurm.returncode == 0, slurm.stderr
    assert "submitit_launcher.SlurmLauncher" in slurm.stdout and "partition: gpu-a100" in slurm.stdout
    assert "source .venv/bin/activate" in slurm.stdout
    local = run_main("vit_exp.run", *sweep, "hydra/launcher=submitit_local", "device=cpu")
    assert local.returncode == 0, local.stderr
    assert "submitit_launcher.LocalLauncher" in local.stdout and "partition" not in local.stdout
