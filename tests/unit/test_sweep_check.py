"""A sweep is checked before it starts (issue 24): it stops when no job can pass the training's first
check, and only then. Composed in this process as ``--multirun`` composes (sweep overrides left out
of the sweep's own config), no MLflow store touched."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from omegaconf import DictConfig

from vit_exp.config import CONFIG_DIR


@pytest.fixture
def sweep_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., DictConfig]]:
    """The config a sweep's callbacks get for ``--multirun <overrides>``, with the training's check."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from vit_exp import cli
    from vit_exp.run import check_job

    monkeypatch.setattr(cli, "_job_checks", [check_job])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def compose(*overrides: str) -> DictConfig:
            return loader.load_configuration("train", list(overrides), run_mode=RunMode.MULTIRUN)

        yield compose
    GlobalHydra.instance().clear()


def stop_line(config: DictConfig) -> str | None:
    """The ``error:`` line the sweep stops with; None when it goes on."""
    from vit_exp.cli import StopCommand
    from vit_exp.tracking.sweep import check_before_start

    try:
        check_before_start(config)
    except StopCommand as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["trainer.epochs=three", "optim.lr=1e-3,2e-3"], "trainer.epochs must be an integer, got 'three'"),
        (["optimized_metric=val/acc", "optim.lr=1e-3,2e-3"], "optimized_metric=val/acc is not a per-epoch"),
        (["optim.lr=-1,-2"], "optim.lr must be a number > 0, got -1"),  # every swept value is bad
        (["optim.lr=-1,1e-3,2e-3", "optimized_metric=val/acc"], "optimized_metric=val/acc"),  # most jobs'
        (["trainer.epoch=1,2"], "unknown config key 'trainer.epoch'"),  # no job composes
        (
            ["hydra/sweeper=optuna_study", "hydra.sweeper.direction=maximize", "optimized_metric=val/loss"],
            "hydra.sweeper.direction=maximize disagrees with optimized_metric=val/loss",
        ),
        (["hydra/sweeper=optuna_study", "optim.lr=interval(-1.0, -0.5)"], "optim.lr must be a number > 0"),
    ],
)
def test_a_sweep_no_job_of_which_can_start_stops(sweep_config, overrides, line):
    assert line in (stop_line(sweep_config(*overrides)) or "")


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.lr=-1,1e-3"],  # job 0 fails, job 1 runs
        ["model.num_heads=5", "model.embed_dim=192,200"],  # 192 % 5 != 0: bad for the default and job 0
        ["hydra/sweeper=optuna_study", "hydra.sweeper.direction=maximize", "optim.lr=interval(-1.0, 1e-3)"],
        ["optim.lr=1e-3,3e-3", "trainer.batch_size=32,64"],
        ["mlflow.artifact_location=${paths.output_dir}/artifacts", "optim.lr=1e-3,3e-3"],  # the job's dir
    ],
)
def test_a_sweep_some_job_of_which_can_start_goes_on(sweep_config, overrides):
    assert stop_line(sweep_config(*overrides)) is None


def test_the_checked_jobs_are_the_grid_the_basic_sweeper_runs(sweep_config):
    """The sweeper's params first, the command line after (and winning), every combination."""
    from omegaconf import open_dict

    from vit_exp.tracking.sweep import candidate_jobs

    config = sweep_config("trainer.epochs=3,4", "optim.lr=5")
    with open_dict(config):
        config.hydra.sweeper.params = {"optim.lr": "1,2"}  # as a sweep file's hydra.sweeper.params
    assert list(candidate_jobs(config)) == [
        ["optim.lr=5", "trainer.epochs=3"],
        ["optim.lr=5", "trainer.epochs=4"],
    ]
    optuna = sweep_config(
        "hydra/sweeper=optuna_study", "optim.lr=tag(log, interval(1e-4, 1e-2))", "x=choice(1,2)"
    )
    assert list(candidate_jobs(optuna)) == [
        ["optim.lr=0.0001", "x=1"],
        ["optim.lr=0.0001", "x=2"],
        ["optim.lr=0.01", "x=1"],
        ["optim.lr=0.01", "x=2"],
    ]


def test_a_command_without_a_check_is_not_checked(sweep_config, monkeypatch):
    from vit_exp import cli

    monkeypatch.setattr(cli, "_job_checks", [])
    assert stop_line(sweep_config("trainer.epochs=three", "optim.lr=1e-3,2e-3")) is None
