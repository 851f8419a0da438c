"""The regularisation settings (issue 27) through the training CLI: graph mode (device.mode's default),
the fused kernels where they build, the run's params naming what it turned on, and msrun's workers
clipping the global batch's gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers.models import TINY_MODEL
from tests.helpers.processes import run_cli

pytestmark = pytest.mark.integration  # real training processes and msrun (about 1 + 1.5 min)


def test_drop_path_clipping_and_layer_decay_train_and_are_params(tmp_path, tracking_store):
    """docs/recipe.md's Regularisation command, on the tiny model for a few steps: it trains (finite
    losses, a checkpoint), the keys are params (off, they are not: tests/unit/test_regularisation.py),
    and the same seed repeats the run's losses (drop path's draws follow it)."""
    import mlflow

    def train(name: str):
        return run_cli(  # a process each: as a user runs them twice
            "vit_exp.run",
            "optim=adamw",
            "model.drop_path_rate=0.1",
            "optim.clip_grad_norm=1.0",
            "optim.layer_decay=0.75",
            *TINY_MODEL,
            "trainer.max_steps=6",
            "trainer.batch_size=32",
            "trainer.deterministic=true",
            f"mlflow.tracking_uri={tracking_store}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"mlflow.run_name={name}",
            f"hydra.run.dir={tmp_path / name}",
        )

    first = train("first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "finished 6 step(s)" in first.stdout
    assert sorted((tmp_path / "first" / "checkpoints").glob("*-s000006.ckpt"))
    again = train("again")
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-2000:]
    client = mlflow.MlflowClient(tracking_uri=tracking_store)
    runs = client.search_runs([client.get_experiment_by_name("vit-exp").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    params = by_name["first"].data.params
    assert params["model.drop_path_rate"] == "0.1"
    assert params["optim.clip_grad_norm"] == "1.0" and params["optim.layer_decay"] == "0.75"
    assert params["optim.no_weight_decay"] == "['bias', 'gamma', 'beta', 'cls', 'pos_embedding']"

    def losses(run) -> list[float]:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        return [m.value for m in sorted(history, key=lambda m: m.step)]

    assert len(losses(by_name["first"])) == 6 and all(math.isfinite(v) for v in losses(by_name["first"]))
    assert losses(by_name["again"]) == losses(by_name["first"])


def test_two_workers_clip_the_global_batchs_norm_like_one_process(tmp_path):
    """Clipping (and layer decay) under msrun: 2 workers at batch 32 lose as one process at batch 64,
    so each clips the all-reduced gradient's norm, not its own half's (test_data_parallel.py's setup).
    SGD at a constant LR, whose step is the clipped gradient (Adam's would barely change with its scale);
    unclipped, the same run's losses differ far more than the tolerance."""
    import mlflow

    from tests.helpers.processes import run_msrun
    from tests.integration.test_data_parallel import SAME_MATHS, losses

    # 0.1: below this ViT's gradient norm (0.8 at init on random images), so the steps clip.
    sgd = [*SAME_MATHS, "optim=sgd", "optim.lr=0.5", "sched=constant", "optim.layer_decay=0.75"]
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    stores = {name: f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("one", "two", "unclipped")}

    def single(name: str, clip: str) -> None:
        proc = run_cli(
            "vit_exp.run",
            *sgd,
            f"optim.clip_grad_norm={clip}",
            "trainer.batch_size=64",
            cache,
            f"mlflow.tracking_uri={stores[name]}",
            f"hydra.run.dir={tmp_path / name}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    single("one", "0.1")
    single("unclipped", "null")
    two = run_msrun(
        2,
        "vit_exp.run",
        *sgd,
        "optim.clip_grad_norm=0.1",
        "trainer.batch_size=32",
        cache,
        f"mlflow.tracking_uri={stores['two']}",
        f"hydra.run.dir={tmp_path / 'two'}",
        log_dir=tmp_path / "msrun",
    )
    assert two.returncode == 0, two.stdout[-3000:]
    found = {}
    for name, store in stores.items():
        client = mlflow.MlflowClient(tracking_uri=store)
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        found[name] = np.array(losses(client, run))
    assert len(found["one"]) == len(found["two"]) > 1
    np.testing.assert_allclose(found["two"], found["one"], atol=1e-4, rtol=0)
    assert np.abs(found["unclipped"] - found["one"]).max() > 1e-2  # clipping changed the run
