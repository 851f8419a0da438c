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
