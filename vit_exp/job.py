"""A training job: what Hydra knows of it, and its settings, every group built (so checked) up front."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from vit_exp.data.augment import AugmentSettings
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
    log_file: Path | None = None  # the command's log (<run dir>/<task_name>.log)

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
            log_file=Path(hc.runtime.output_dir) / f"{hc.job.name}.log",
        )

    @classmethod
    def of(cls, cfg: DictConfig) -> HydraJob:
        """A sweep job's composed config (its ``hydra`` node included) before the job runs."""
        return cls(direction=_direction(OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)))


def _direction(value) -> str | None:
    return str(value) if isinstance(value, str) else None


GROUPS = ("trainer", "optim", "augment", "device", "mlflow", "registry")


def settings_groups(cfg: DictConfig) -> dict[str, object]:
    """Every settings group by name, built by Hydra (so checked); ``model`` is only checked (it is
    built once the data gives its class count)."""
    from hydra.utils import instantiate

    from vit_exp.models.config import ViTConfig

    ViTConfig.from_mapping(cfg.model, num_classes=cfg.model.num_classes or 1)
    return {group: instantiate(cfg[group]) for group in GROUPS}


@dataclass(frozen=True)
class ConfigSnapshot:
    """The composed config resolved once, without ``hydra``: what the run records and a resume compares."""

    resolved: dict
    yaml: str

    @classmethod
    def of(cls, cfg: DictConfig) -> ConfigSnapshot:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("hydra", None)
        return cls(resolved, OmegaConf.to_yaml(OmegaConf.create(resolved)))

    @cached_property
    def flat(self) -> dict[str, str]:
        """``{"optim.lr": "0.001", ...}``: every leaf (``tracking.record.lifecycle.flatten``)."""
        from vit_exp.tracking.record.lifecycle import flatten

        return flatten(self.resolved)


@dataclass
class TrainJob:
    """A training job: Hydra's view, its data-parallel ``workers``, config and every settings group,
    built (so checked) before anything starts. Only the main worker records: the others get
    ``mlflow.enabled=false``. ``objective``: the checked ``optimized_metric``."""

    hydra: HydraJob
    workers: DataParallel
    config: ConfigSnapshot
    trainer: TrainSettings
    optim: OptimizerSettings
    augment: AugmentSettings
    device: DeviceSettings
    mlflow: MlflowSettings
    registry: RegistrySettings
    objective: str = field(init=False)

    def __post_init__(self) -> None:
        from vit_exp.train.objective import check_optimized_metric

        self.objective = check_optimized_metric(
            self.config.resolved["optimized_metric"], self.hydra.direction
        )
        if not self.workers.is_main:
            self.mlflow = replace(self.mlflow, enabled=False)

    @property
    def model_name(self) -> str:
        return str(self.config.resolved["model"]["name"])

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.config.resolved["paths"]["checkpoint_dir"])

    @property
    def cache_dir(self) -> Path:
        return Path(self.config.resolved["paths"]["cache_dir"])

    @property
    def resume(self) -> str | None:
        """``resume=``: a run id, a checkpoint or ``auto`` (None, empty or ``never``: a new run)."""
        value = self.config.resolved.get("resume")
        return None if value in (None, "", "never", False) else str(value)

    @cached_property
    def comparable(self) -> dict[str, str]:
        """The flattened config a resume compares (``tracking.resume.comparable_config``)."""
        from vit_exp.tracking.resume import comparable_config

        return comparable_config(self.config.flat, self.workers.world_size)
