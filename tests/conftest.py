"""Fixtures: every test records into its own MLflow store; real Hydra composition of conf/."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from vit_exp.config import CONFIG_DIR, register_resolvers

register_resolvers()


@pytest.fixture(autouse=True)
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test (and every CLI it starts) records into its own SQLite MLflow store.

    A test may point MLflow's process-wide URIs at a store (``models:/`` URIs resolve from them);
    they are reset afterwards, so no later test or subprocess inherits them.
    """
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield uri
    if "mlflow" in sys.modules:  # set_*_uri also wrote the environment: monkeypatch restores it next
        sys.modules["mlflow"].set_registry_uri(None)
        sys.modules["mlflow"].set_tracking_uri(None)


TRAINED_CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny ViT trained by a real ``python -m vit_exp.run`` for the whole session: 2 epochs on 3
    colour classes (12 images each per split), a version per epoch (model 'tiny-vit' versions 1 and
    2, top-2 outputs), experiment 'tracked-test', in its own SQLite store.

    Shared by the tests that read what a run records: read it, change nothing of it (a test that
    changes a registry registers its own model from these versions: test_registry_consumers.py).
    """
    import mlflow

    from tests.helpers.data import write_image_folder
    from tests.helpers.models import TINY_MODEL
    from tests.helpers.processes import run_cli

    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    root = write_image_folder(tmp / "ds", TRAINED_CLASSES, per_class=12, size=16)
    proc = run_cli(
        "vit_exp.run",
        *TINY_MODEL,
        "data=image_folder",
        f"data.root={root}",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        "trainer.print_every_n_steps=2",
        "optim.lr=3e-3",
        "sched=cosine",  # no warm-up: the LR falls from the first step (test_tracking.py checks it)
        "registry.name=tiny-vit",
        "registry.register=every",  # a version per epoch, whatever val/top1 does
        "registry.top_k=2",
        f"mlflow.tracking_uri={uri}",
        "mlflow.experiment=tracked-test",
        "mlflow.log_details_every_n_steps=3",
        f"paths.cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={tmp / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tracked-test").experiment_id])
    return {"client": client, "run": run, "uri": uri, "root": root, "tmp": tmp, "stdout": proc.stdout}


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., object]:
    """Compose ``conf/train.yaml`` (or ``config_name``) with overrides; paths point into the temp dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(overrides: Sequence[str] = (), config_name: str = "train"):
        GlobalHydra.instance().clear()
        base = [
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'out'}",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=[*base, *overrides])
        GlobalHydra.instance().clear()
        return cfg

    return _compose


@pytest.fixture(params=["pynative", "graph"])
def execution_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test in MindSpore's PyNative mode and again in graph mode (what runs use:
    ``device.mode=graph``); graph compilation selects kernels that PyNative never asks for."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=previous)
