"""A training job: what Hydra knows of it, and its settings, every group built (so checked) up front."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from vit_exp.device import DeviceSettings
    from vit_exp.tracking.record import MlflowSettings
    from vit_exp.tracking.registry import RegistrySettings
    from vit_exp.train.optim import OptimizerSettings
    from vit_exp.train.parallel import DataParallel
    from vit_exp.train.trainer import TrainSettings


@dataclass(frozen=True)
class HydraJob:
    """What Hydra knows about this job: its overrides and directories (sweep_dir only in --multirun)."""

    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    sweep_dir: Path | None = None
    job_num: int | None = None
    direction: str | None = None  # the sweeper's optimization direction (None outside one, or a grid)

    @classmethod
    def current(cls) -> HydraJob:
        """The running Hydra job (empty outside a Hydra app, e.g. in a notebook)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls()
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return cls(
            overrides=list(hc.overrides.task),
            run_dir=Path(hc.runtime.output_dir),
            sweep_dir=Path(hc.sweep.dir) if multirun else None,
            job_num=hc.job.num if multirun else None,
            direction=_direction(hc.sweeper.get("direction")),
        )

    @classmethod
    def of(cls, cfg: DictConfig) -> HydraJob:
        """A sweep job's composed config (its ``hydra`` node included) before the job runs."""
        return cls(direction=_direction(OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)))


def _direction(value) -> str | None:
    return str(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class TrainJob:
    """A training job's config and every settings object in it, built (and so checked) up front.

    ``workers``: its place in a data-parallel job; only the main worker records (MLflow run,
    checkpoints, versions), so the others get ``mlflow.enabled=false``. ``objective``: the checked
    ``optimized_metric``.
    """

    cfg: DictConfig
    hydra: HydraJob
    trainer: TrainSettings
    optim: OptimizerSettings
    device: DeviceSettings
    mlflow: MlflowSettings
    registry: RegistrySettings
    workers: DataParallel
    objective: str = "val/top1"

    @classmethod
    def from_config(cls, cfg: DictConfig, hydra: HydraJob, workers: DataParallel | None = None) -> TrainJob:
        from hydra.utils import instantiate

        from vit_exp.models.config import ViTConfig
        from vit_exp.train.objective import check_optimized_metric
        from vit_exp.train.parallel import DataParallel

        ViTConfig.from_mapping(cfg.model, num_classes=cfg.model.num_classes or 1)  # checked, not kept
        groups = ("trainer", "optim", "device", "mlflow", "registry")
        settings = {group: instantiate(cfg[group]) for group in groups}
        workers = workers or DataParallel()
        if not workers.is_main:
            settings["mlflow"] = replace(settings["mlflow"], enabled=False)
        objective = check_optimized_metric(cfg.optimized_metric, hydra.direction)
        return cls(cfg, hydra, workers=workers, objective=objective, **settings)

    @cached_property
    def comparable(self) -> dict[str, str]:
        """The flattened config a resume compares (``tracking.resume.comparable_config``)."""
        from vit_exp.tracking.resume import comparable_config

        return comparable_config(self.cfg, self.workers.world_size)

    @property
    def resumes(self) -> bool:
        """Whether ``resume=`` asks to continue something (``never``, empty or null: a new run)."""
        return self.cfg.get("resume") not in (None, "", "never", False)
