"""Killed mid-training (SIGTERM, or kill -9) at random moments: the record stays consistent.

Every model version's metrics are in its run (a version is created only after them); after SIGTERM
the run ends KILLED with no half-made version (model artifacts without one) and no traceback.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import start_cli

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)


def train_then_signal(tmp_path, store: str, sig: int, seed: int) -> str:
    """Train (a checkpoint and a version every epoch), send ``sig`` at a random moment after epoch 3."""
    delay = random.Random(seed).uniform(0.0, 2.0)
    process = start_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "model.num_layers=1",
        "trainer.epochs=200",
        "registry.name=killed-vit",
        "registry.register=every",
        f"mlflow.tracking_uri={store}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        log=tmp_path / "train.out",
    )
    deadline = time.time() + 180
    while time.time() < deadline and "epoch 3/200 done" not in (tmp_path / "train.out").read_text():
        time.sleep(0.1)
    time.sleep(delay)
    process.send_signal(sig)
    process.wait(timeout=120)
    return (tmp_path / "train.out").read_text() + f"\n(signal {sig} {delay:.2f}s after epoch 3)"


def assert_versions_have_their_metrics(store: str) -> tuple[object, list]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    top1 = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/top1")}
    versions = client.search_model_versions("name='killed-vit'")
    assert versions, "no version was made before the signal"
    for version in versions:
        step = int(client.get_logged_model(version.source.removeprefix("models:/")).tags["global_step"])
        assert step in top1, f"version {version.version} (step {step}) has no val/top1 in its run"
        assert float(version.tags["val/top1"]) == pytest.approx(top1[step], abs=1e-5)
    return run, versions


def assert_no_half_made_versions(store: str, run, versions) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    models = client.search_logged_models([run.info.experiment_id])
    ready = {m.model_id for m in models if str(m.status).endswith("READY")}
    registered = {v.source.removeprefix("models:/") for v in versions}
    assert ready == registered, f"logged models without a version: {sorted(ready - registered)}"
    pending = [m.name for m in models if str(m.status).endswith("PENDING")]
    assert not pending, f"logged models left half-written: {pending}"


@pytest.mark.parametrize("seed", [0])
def test_sigterm_ends_the_run_killed_with_whole_versions(tmp_path, tracking_store, seed):
    output = train_then_signal(tmp_path, tracking_store, signal.SIGTERM, seed)
    assert "Traceback" not in output, output[-3000:]
    run, versions = assert_versions_have_their_metrics(tracking_store)
    assert run.info.status == "KILLED", output[-2000:]
    assert_no_half_made_versions(tracking_store, run, versions)


@pytest.mark.parametrize("seed", [1])
def test_kill_9_leaves_no_version_without_its_metrics(tmp_path, tracking_store, seed):
    output = train_then_signal(tmp_path, tracking_store, signal.SIGKILL, seed)
    assert_versions_have_their_metrics(tracking_store)
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 10))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signals_at_random_moments(tmp_path, tracking_store, sig, seed):
    output = train_then_signal(tmp_path, tracking_store, sig, seed)
    run, versions = assert_versions_have_their_metrics(tracking_store)
    if sig == signal.SIGTERM:
        assert run.info.status == "KILLED" and "Traceback" not in output, output[-3000:]
        assert_no_half_made_versions(tracking_store, run, versions)
