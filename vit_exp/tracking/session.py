"""Ties one training job to MLflow: opens the run, logs its inputs, and supplies the callbacks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vit_exp.data.folder import list_images
from vit_exp.tracking.registry import CheckpointRegistrar, RegistrySettings, write_model_inputs
from vit_exp.tracking.runs import MlflowSettings, log_run_inputs, readable_run_name, run_tags, tracked_run

log = logging.getLogger("vit_exp.tracking")


@dataclass
class JobContext:
    """What Hydra knows about this job: its overrides and directories (sweep_dir only in --multirun)."""

    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    sweep_dir: Path | None = None
    job_num: int | None = None

    @classmethod
    def from_hydra(cls) -> JobContext:
        """Read the current Hydra job (empty outside a Hydra app, e.g. in a notebook)."""
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
        )


def model_summary(net) -> str:
    """Parameter names, shapes and counts, one per line, then the total."""
    lines = [f"{p.name:<60} {tuple(p.shape)!s:<22} {p.size:>12,}" for p in net.get_parameters()]
    total = sum(p.size for p in net.get_parameters())
    return "\n".join([type(net).__name__, *lines, f"total parameters: {total:,}"]) + "\n"


class TrainingTracker:
    """MLflow for one training job; with ``mlflow.enabled=false`` every method does nothing."""

    def __init__(self, cfg: DictConfig, job: JobContext):
        from hydra.utils import instantiate

        self.cfg = cfg
        self.job = job
        self.settings: MlflowSettings = instantiate(cfg.mlflow)
        self.registry: RegistrySettings = instantiate(cfg.registry)
        self.run_id: str | None = None
        self.registrar: CheckpointRegistrar | None = None
        self.logger = None

    @property
    def enabled(self) -> bool:
        """Whether this job is tracked."""
        return bool(self.settings.enabled)

    @contextlib.contextmanager
    def run(self) -> Iterator[TrainingTracker]:
        """Open the MLflow run for the job; it ends FINISHED, FAILED or KILLED."""
        if not self.enabled:
            yield self
            return
        tags = run_tags(self.cfg, self.job.overrides)
        if self.job.job_num is not None:
            tags["hydra.job.num"] = str(self.job.job_num)
        name = readable_run_name(self.cfg, self.job.overrides)
        with tracked_run(self.settings, name, tags, self.job.sweep_dir, self.job.run_dir) as run:
            self.run_id = run.info.run_id
            try:
                yield self
            finally:  # a failed or interrupted run keeps every metric buffered so far
                if self.logger is not None:
                    self.logger.close()

    def log_inputs(self, data, net) -> None:
        """Params, tags and artifacts known before training; prepares checkpoint registration."""
        if not self.enabled:
            return
        # The head may be larger than the data's class list (e.g. model.num_classes=1000 on a subset).
        names = list(data.class_names)
        names += [f"class_{i}" for i in range(len(names), int(getattr(net, "num_classes", len(names))))]
        log_run_inputs(
            self.cfg,
            self.job.run_dir / ".hydra" if self.job.run_dir else None,
            names,
            model_summary(net),
            int(sum(p.size for p in net.get_parameters())),
        )
        if self.registry.register != "none":
            folder = (self.job.run_dir or Path(".")) / "model_inputs"
            config = OmegaConf.to_yaml(self.cfg, resolve=True)
            shared = write_model_inputs(folder, config, names)
            self.registrar = CheckpointRegistrar(self.registry, self.run_id, shared, example_image(data))

    def callbacks(self, history, checkpoints) -> list:
        """The MindSpore callbacks that log this job (empty when tracking is off)."""
        if not self.enabled:
            return []
        from vit_exp.tracking.callback import MlflowLogger

        self.logger = MlflowLogger(
            self.run_id,
            history,
            checkpoints,
            self.registrar,
            every_n_steps=self.settings.log_every_n_steps,
            details_every_n_steps=self.settings.log_details_every_n_steps,
            flush_interval_s=float(self.settings.flush_interval_s),
        )
        return [self.logger]


def example_image(data) -> bytes:
    """Bytes of the first validation image (the registered model's input example)."""
    split = data.root / data.val_split
    for folder in sorted(p for p in split.iterdir() if p.is_dir()):
        images = list_images(folder)
        if images:
            return images[0].read_bytes()
    raise FileNotFoundError(f"no image under {split}")
