"""System metrics: a training run records MLflow's ``system/*`` metrics by default, none with
``mlflow.system_metrics=false``, and its monitor ends with the run, also a failed one.

Tiny real runs through ``vit_exp.run.main()`` in this process (tests/helpers/inprocess.py), each in
its own SQLite store, sampling every 0.1 s so a few seconds of training give several points.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL

# What MLflow's CPU, disk and network monitors log (GPU keys only with a GPU and pynvml).
SYSTEM_KEYS = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
}
MONITOR_THREAD = "SystemMetricsMonitor"  # the name MLflow gives its monitor's thread


def train(tmp_path, tracking_store: str, *extra: str):
    """Train the tiny ViT for 4 steps on a 2-class folder; return the command's result and its run."""
    import mlflow

    root = write_image_folder(tmp_path / "ds", ["a", "b"], per_class=8, size=16)
    proc = run_main(
        "vit_exp.run",
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.max_steps=4",
        "trainer.batch_size=8",
        "registry.register=none",
        "mlflow.system_metrics_interval_s=0.1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    )
    client = mlflow.MlflowClient(tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    return proc, run, client


def system_keys(run) -> set[str]:
    return {key for key in run.data.metrics if key.startswith("system/")}


def monitors_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == MONITOR_THREAD and t.is_alive()]


def test_a_training_run_records_system_metrics_until_it_ends(tmp_path, tracking_store):
    proc, run, client = train(tmp_path, tracking_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert system_keys(run) == SYSTEM_KEYS
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    steps = [m.step for m in history]
    assert len(steps) >= 2 and steps == list(range(len(steps)))  # one point per sample, in order
    memory = run.data.metrics["system/system_memory_usage_megabytes"]
    assert 0 < memory and 0 < run.data.metrics["system/system_memory_usage_percentage"] <= 100
    assert max(m.timestamp for m in history) <= run.info.end_time  # stopped before the run's end
    assert not monitors_alive()


@pytest.mark.integration  # the default tier keeps the first run's check (make test stays ~5 min)
def test_system_metrics_false_records_none_and_starts_no_monitor(tmp_path, tracking_store, monkeypatch):
    import vit_exp.train.trainer

    fit, during_training = vit_exp.train.trainer.fit, []

    def watched_fit(*args, **kwargs):
        during_training.extend(monitors_alive())
        return fit(*args, **kwargs)

    monkeypatch.setattr(vit_exp.train.trainer, "fit", watched_fit)
    proc, run, _ = train(tmp_path, tracking_store, "mlflow.system_metrics=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert during_training == [] and system_keys(run) == set()
    assert "train/loss" in run.data.metrics  # the run's own metrics are still there


@pytest.mark.integration  # the default tier keeps the first run's check (make test stays ~5 min)
def test_the_monitor_ends_with_a_failed_run(tmp_path, tracking_store, monkeypatch):
    """A failure inside training (here our fit, after a second of work) ends the run FAILED; its
    system metrics were recorded up to then, and its monitor stops."""
    import vit_exp.train.trainer

    def failing_fit(*args, **kwargs):
        assert monitors_alive()  # started with the run, before training
        time.sleep(1.0)
        raise RuntimeError("the step broke")

    monkeypatch.setattr(vit_exp.train.trainer, "fit", failing_fit)
    proc, run, _ = train(tmp_path, tracking_store)
    assert proc.returncode == 1 and "the step broke" in proc.stderr
    assert run.info.status == "FAILED"
    assert system_keys(run) == SYSTEM_KEYS
    assert not monitors_alive()


@pytest.mark.integration  # the default tier keeps the first run's check (make test stays ~5 min)
def test_the_monitor_goes_on_after_a_store_error(tmp_path):
    """MLflow's own monitor loop ends at the first store error; ours starts it again. The error here is
    real: the SQLite store's metrics table is away for a second (renamed by another connection)."""
    import sqlite3

    from vit_exp.tracking.record.system_metrics import SystemMetrics
    from vit_exp.tracking.store import use_store

    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    client = use_store(uri)
    run_id = client.create_run("0").info.run_id
    monitor = SystemMetrics(run_id, uri, interval_s=0.1)
    time.sleep(1.0)
    with sqlite3.connect(database, isolation_level=None) as connection:
        connection.execute("ALTER TABLE metrics RENAME TO metrics_away")
        time.sleep(1.0)
        connection.execute("ALTER TABLE metrics_away RENAME TO metrics")
    back = time.time() * 1000
    time.sleep(1.5)
    monitor.stop()
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert sum(m.timestamp > back for m in history) >= 3  # points after the store came back
    steps = sorted(m.step for m in history)
    assert steps == sorted(set(steps))  # no step logged twice (a failed one is resent as it was)
    assert not monitors_alive()


@pytest.mark.integration  # the default tier keeps the first run's check (make test stays ~5 min)
def test_a_continued_run_goes_on_from_its_last_system_step(tmp_path):
    from vit_exp.tracking.record.system_metrics import SystemMetrics
    from vit_exp.tracking.store import use_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = use_store(uri)
    run_id = client.create_run("0").info.run_id

    def steps() -> list[int]:
        return [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]

    for resumed in (False, True):  # the first attempt, then a resume in the same run
        monitor = SystemMetrics(run_id, uri, interval_s=0.1, resumed=resumed)
        time.sleep(1.0)
        monitor.stop()
        if not resumed:
            first = steps()
    assert len(first) >= 2 and len(steps()) > len(first)
    assert sorted(steps()) == list(range(len(steps())))  # numbered on, none twice


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_sampling_interval_not_above_zero_is_a_one_line_error(tmp_path, value):
    proc = run_main(
        "vit_exp.run", f"mlflow.system_metrics_interval_s={value}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 1
    assert proc.stderr == (f"error: mlflow.system_metrics_interval_s must be a number > 0, got {value}\n")
