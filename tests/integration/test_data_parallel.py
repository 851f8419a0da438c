"""Data parallelism with msrun: 2 workers at batch 32 train like one process at batch 64; rank 0 records."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli, run_msrun, start_msrun

pytestmark = pytest.mark.integration  # real CLI processes: the integration tier (make test-integration)

STEPS = 20
# No dropout (the tiny ViT has none) and crops that keep the whole image: every step is the same maths.
SAME_MATHS = [
    *TINY_MODEL,
    "model.num_layers=1",
    f"trainer.max_steps={STEPS}",
    "data.train_crop_scale=[1.0,1.0]",
    "data.train_crop_ratio=[1.0,1.0]",
    "data.hflip_prob=0",
    "registry.register=every",
]


def only_run(store: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


def losses(client, run) -> list[float]:
    history = client.get_metric_history(run.info.run_id, "train/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_two_workers_at_batch_32_train_like_one_process_at_batch_64(tmp_path):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    one_store = f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}"
    one = run_cli(
        "vit_exp.run",
        *SAME_MATHS,
        "trainer.batch_size=64",
        cache,
        f"mlflow.tracking_uri={one_store}",
        f"hydra.run.dir={tmp_path / 'one'}",
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two_store = f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}"
    two = run_msrun(
        2,
        "vit_exp.run",
        *SAME_MATHS,
        "trainer.batch_size=32",
        cache,
        f"mlflow.tracking_uri={two_store}",
        f"hydra.run.dir={tmp_path / 'two'}",
        log_dir=tmp_path / "msrun",
    )
    logs = {p.name: p.read_text() for p in (tmp_path / "msrun").glob("*.log")}
    assert two.returncode == 0, two.stdout[-2000:] + logs.get("worker_0.log", "")[-2000:]

    client, runs = only_run(two_store)
    assert len(runs) == 1, "only rank 0 may create a run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["parallel.world_size"], params["trainer.batch_size"]) == ("2", "32")
    assert params["parallel.global_batch_size"] == "64"
    one_client, (single,) = only_run(one_store)
    assert single.data.params["parallel.world_size"] == "1"
    parallel_losses, single_losses = losses(client, run), losses(one_client, single)
    assert len(parallel_losses) == len(single_losses) == STEPS
    np.testing.assert_allclose(parallel_losses, single_losses, atol=1e-4, rtol=0)
    assert single_losses[0] != single_losses[-1]  # it trained

    versions = client.search_model_versions("name = 'vit_tiny-digits'")
    assert [v.run_id for v in versions] == [run.info.run_id]  # one checkpoint, one version, rank 0's
    rank1_log = (tmp_path / "two" / "train-rank1.log").read_text()
    assert "worker 1 of 2" in rank1_log and "mlflow" not in rank1_log
    # msrun shows the workers' consoles in one stream: each line names its rank, rank 1 only warns
    rank0_console, rank1_console = logs["worker_0.log"], logs["worker_1.log"]
    assert "][rank 0] model vit_tiny" in rank0_console and "][rank 0] epoch 1/1 step" in rank0_console
    assert "worker 1 of 2" not in rank1_console and "epoch 1/1 step" not in rank1_console
    # MindSpore's INFO lines (its cluster threads log two each as a worker exits) stay off the console
    assert "[INFO]" not in two.stdout + rank0_console + rank1_console
    assert "Event base dispatch" in (tmp_path / "two" / "mindspore-exit-rank1.log").read_text()
    assert (tmp_path / "two" / ".hydra-rank1" / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert checkpoints == [f"vit_tiny-e001-s{STEPS:06d}.ckpt", f"vit_tiny-e001-s{STEPS:06d}.state.ckpt"]


def saved_step(folder) -> int:
    """The newest step a checkpoint in ``folder`` was saved at (0 for none yet)."""
    from vit_exp.train.state import parse_checkpoint_name

    parsed = [parse_checkpoint_name(p.name) for p in folder.glob("*.ckpt")] if folder.is_dir() else []
    return max((step for step, _ in filter(None, parsed)), default=0)


@pytest.mark.slow
def test_a_data_parallel_run_stopped_by_sigterm_resumes_exactly(tmp_path):
    """SIGTERM to msrun mid-training (its workers get it too): rank 0 saves a checkpoint and ends
    the run KILLED; the same msrun command with resume=auto continues that run on 2 workers, and
    every step's loss equals one uninterrupted process at the global batch."""
    steps = 300
    common = [*SAME_MATHS[:-1], "registry.register=none", "trainer.epochs=100", f"trainer.max_steps={steps}"]
    common += ["trainer.checkpoint_every_n_steps=10", f"paths.cache_dir={tmp_path / 'cache'}"]
    one_store = f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}"
    one = run_cli(
        "vit_exp.run",
        *common,
        "trainer.batch_size=64",
        f"mlflow.tracking_uri={one_store}",
        f"hydra.run.dir={tmp_path / 'one'}",
    )
    assert one.returncode == 0, one.stderr[-3000:]

    store = f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}"
    two = [*common, "trainer.batch_size=32", f"mlflow.tracking_uri={store}"]
    first = start_msrun(
        2, "vit_exp.run", *two, f"hydra.run.dir={tmp_path / 'first'}", log_dir=tmp_path / "log1"
    )
    worker_log = tmp_path / "log1" / "worker_0.log"
    deadline = time.time() + 300
    # A step checkpoint lives ~0.1 s (trainer.keep_step_checkpoints=2 at ~80 steps/s): look often and
    # take any checkpoint from step 40 on, not that one file.
    while time.time() < deadline and saved_step(tmp_path / "first" / "checkpoints") < 40:
        assert first.poll() is None, (tmp_path / "log1" / "msrun.out").read_text()[-3000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)  # msrun leaves its workers; they get SIGTERM when it dies
    first.wait(timeout=120)
    subprocess.run(["pkill", "-f", f"tail -f {tmp_path}"])  # msrun's own log tails, left by it too
    deadline = time.time() + 120
    while time.time() < deadline and "interrupted" not in worker_log.read_text():
        time.sleep(0.5)
    assert "continue with: msrun --worker_num=2 ..." in worker_log.read_text()
    client, (run,) = only_run(store)
    assert run.info.status == "KILLED"
    stopped_at = max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert 40 <= stopped_at < steps

    again = run_msrun(
        2,
        "vit_exp.run",
        *two,
        "resume=auto",
        f"hydra.run.dir={tmp_path / 'again'}",
        log_dir=tmp_path / "log2",
    )
    assert again.returncode == 0, (tmp_path / "log2" / "worker_0.log").read_text()[-3000:]
    client, (run,) = only_run(store)  # the same run, continued
    assert run.info.status == "FINISHED" and run.data.tags["vit_exp.attempts"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))  # each step once
    one_client, (single,) = only_run(one_store)
    np.testing.assert_allclose(losses(client, run), losses(one_client, single), atol=1e-4, rtol=0)
