"""A tracking server that goes away: training does not wait, nothing is lost, the run ends right.

A real ``mlflow server`` on 127.0.0.1 is stopped during training and started again on the same
port with the same store.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.inprocess import run_main
from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import MlflowServer, run_cli, start_cli

EPOCHS = 12
STEPS_PER_EPOCH = 1438 // 64  # digits train split, batch 64


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.stop()


def wait_for(path, text: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"'{text}' not in {path} after {timeout}s:\n{path.read_text()[-2000:]}")


def training(server, tmp_path, *extra: str):
    return start_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "model.num_layers=1",
        f"trainer.epochs={EPOCHS}",
        "registry.name=outage-vit",
        "registry.register=every",
        "mlflow.flush_interval_s=1",
        f"mlflow.tracking_uri={server.url}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
        log=tmp_path / "train.out",
    )


def assert_complete_record(server, status: str = "FINISHED") -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == status
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # every point, once
    assert len(client.get_metric_history(run.info.run_id, "val/top1")) == EPOCHS
    versions = client.search_model_versions("name='outage-vit'")
    assert sorted(int(v.tags["epoch"]) for v in versions) == list(range(1, EPOCHS + 1))
    models = client.search_logged_models([run.info.experiment_id])
    assert len(models) == EPOCHS and len({m.name for m in models}) == EPOCHS  # one per checkpoint


@pytest.mark.integration
def test_server_away_during_training_loses_nothing(server, tmp_path):
    # Two epoch checkpoints kept: those queued while the server is away are pruned before their
    # versions can be sent; each version's checkpoint is held in the outbox until it is stored.
    process = training(server, tmp_path, "trainer.keep_checkpoints=2")
    wait_for(tmp_path / "train.out", "epoch 2/")
    server.stop()
    wait_for(tmp_path / "train.out", "epoch 6/")  # training goes on while the server is away
    server.start()
    assert process.wait(timeout=600) == 0, (tmp_path / "train.out").read_text()[-3000:]
    assert_complete_record(server)
    assert len(list((tmp_path / "run" / "checkpoints").glob("*-e*.state.ckpt"))) == 2
    assert not list((tmp_path / "run" / "mlflow_outbox" / "held").iterdir())  # released once stored
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert {"hydra", "config_resolved.yaml", "model_summary.txt"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string="name = 'vit_tiny-e001-s000022'"
    )
    (model,) = models  # one LoggedModel: a send cut short by the outage is completed, not made again
    assert str(model.status).endswith("READY")
    assert model.source_run_id == run.info.run_id
    model_files = {a.path.rsplit("/", 1)[-1] for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "requirements.txt", "artifacts", "code"} <= model_files


@pytest.mark.slow
def test_server_still_away_at_the_end_keeps_the_outbox_for_sync(server, tmp_path):
    process = training(server, tmp_path, "mlflow.drain_timeout_s=3")
    wait_for(tmp_path / "train.out", "epoch 2/")
    server.stop()
    assert process.wait(timeout=600) == 1
    output = (tmp_path / "train.out").read_text()
    assert f"finished {EPOCHS * STEPS_PER_EPOCH} step(s)" in output  # training itself completed
    last = output.strip().splitlines()[-1]
    outbox = tmp_path / "run" / "mlflow_outbox"
    assert last.startswith("error: mlflow: ") and f"python -m vit_exp.sync outbox={outbox}" in last
    server.start()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    assert run.info.status == "RUNNING"  # not FINISHED while records are only in the outbox
    sync = run_cli("vit_exp.sync", f"outbox={outbox}", f"hydra.run.dir={tmp_path / 'sync'}")
    assert sync.returncode == 0, sync.stderr[-3000:]
    assert_complete_record(server)
    again = run_cli("vit_exp.sync", f"outbox={outbox}", f"hydra.run.dir={tmp_path / 'sync2'}")
    assert again.returncode == 0 and "nothing to send" in again.stdout


def test_sync_sends_what_the_outbox_kept_into_the_same_run(tmp_path, tracking_store):
    """``vit_exp.sync`` on a journal nothing of which was stored (the store was away): all of it
    arrives once, in order, the run ends as recorded; a second sync has nothing to send."""
    import mlflow

    from vit_exp.tracking.record.outbox import EndRecord, MetricsRecord, Outbox, RunRecord
    from vit_exp.tracking.store import use_store

    client = use_store(tracking_store)
    run_id = client.create_run(client.create_experiment("kept")).info.run_id

    def away(record):
        raise ConnectionError("Max retries exceeded (Connection refused)")

    folder = tmp_path / "run" / "mlflow_outbox"
    outbox = Outbox(folder, away, background=False)
    outbox.put(RunRecord(run_id, tracking_store))
    for step in range(1, 6):
        outbox.put(MetricsRecord([["train/loss", 1.0 / step, 1000 + step, step]]))
    outbox.put(EndRecord("FINISHED"))
    assert outbox.unsent == 7
    outbox.close()  # the process that kept them has ended (an outbox is sent by one process at a time)
    sync = run_main("vit_exp.sync", f"outbox={folder}", f"hydra.run.dir={tmp_path / 'sync'}")
    assert sync.returncode == 0, sync.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=tracking_store, registry_uri=tracking_store)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4, 5]
    assert client.get_run(run_id).info.status == "FINISHED"
    again = run_main("vit_exp.sync", f"outbox={folder}", f"hydra.run.dir={tmp_path / 'sync2'}")
    assert again.returncode == 0 and "nothing to send" in again.stdout
    wrong = run_main("vit_exp.sync", f"outbox={tmp_path}", f"hydra.run.dir={tmp_path / 'sync3'}")
    assert wrong.returncode == 1 and wrong.stderr.strip().startswith("error: outbox: ")
