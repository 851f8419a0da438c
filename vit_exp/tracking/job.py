"""One training job: its settings, its MLflow run, and the one function that assembles its callbacks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from vit_exp.data.folder import list_images

if TYPE_CHECKING:
    from vit_exp.device import DeviceSettings
    from vit_exp.tracking.metric_logger import MlflowMetricLogger
    from vit_exp.tracking.registration import CheckpointRegistration
    from vit_exp.tracking.registry import RegistrySettings
    from vit_exp.tracking.runs import MlflowSettings
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory
    from vit_exp.train.optim import OptimizerSettings
    from vit_exp.train.trainer import TrainPlan, TrainSettings

log = logging.getLogger("vit_exp.tracking")


@dataclass(frozen=True)
class HydraJob:
    """What Hydra knows about this job: its overrides and directories (sweep_dir only in --multirun)."""

    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    sweep_dir: Path | None = None
    job_num: int | None = None

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
        )


@dataclass(frozen=True)
class TrainJob:
    """A training job's config and every settings object in it, built (and so checked) up front."""

    cfg: DictConfig
    hydra: HydraJob
    trainer: TrainSettings
    optim: OptimizerSettings
    device: DeviceSettings
    mlflow: MlflowSettings
    registry: RegistrySettings

    @classmethod
    def from_config(cls, cfg: DictConfig, hydra: HydraJob) -> TrainJob:
        from hydra.utils import instantiate

        groups = ("trainer", "optim", "device", "mlflow", "registry")
        return cls(cfg, hydra, **{group: instantiate(cfg[group]) for group in groups})


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a job records into."""

    run_id: str
    tracking_uri: str


@contextlib.contextmanager
def training_run(job: TrainJob) -> Iterator[TrackedRun | None]:
    """Open the job's MLflow run (None with ``mlflow.enabled=false``); it ends FINISHED, FAILED or KILLED."""
    if not job.mlflow.enabled:
        yield None
        return
    from vit_exp.tracking.runs import readable_run_name, run_tags, tracked_run

    tags = run_tags(job.cfg, job.hydra.overrides)
    if job.hydra.job_num is not None:
        tags["hydra.job.num"] = str(job.hydra.job_num)
    name = readable_run_name(job.cfg, job.hydra.overrides)
    with tracked_run(job.mlflow, name, tags, job.hydra.sweep_dir, job.hydra.run_dir) as run:
        yield TrackedRun(run.info.run_id, job.mlflow.tracking_uri)


def class_names_of(data, num_classes: int) -> list[str]:
    """The data's class names, padded to the head's size (e.g. model.num_classes=1000 on a subset)."""
    names = list(data.class_names)
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def log_job_inputs(job: TrainJob, data, net) -> None:
    """Params, tags and artifacts known before training (call inside ``training_run``)."""
    from vit_exp.tracking.runs import log_run_inputs

    hydra_dir = job.hydra.run_dir / ".hydra" if job.hydra.run_dir else None
    log_run_inputs(job.cfg, hydra_dir, class_names_of(data, net.num_classes), net)


def example_image(data) -> bytes:
    """Bytes of the first validation image (the registered model's input example)."""
    split = data.root / data.val_split
    for folder in sorted(p for p in split.iterdir() if p.is_dir()):
        images = list_images(folder)
        if images:
            return images[0].read_bytes()
    raise FileNotFoundError(f"no image under {split}")


@dataclass
class TrainingCallbacks:
    """A job's callbacks; ``ordered`` is what ``fit`` runs. Leaving the ``with`` block sends the
    metrics still buffered, also when training failed or was interrupted."""

    history: TrainHistory  # runs first: the others read from it
    console: ConsoleProgress
    checkpoints: CheckpointSaver  # before the registration, which reads what it saved
    metric_logger: MlflowMetricLogger | None = None
    registration: CheckpointRegistration | None = None

    @property
    def ordered(self) -> list:
        callbacks = [self.history, self.console, self.checkpoints, self.metric_logger, self.registration]
        return [c for c in callbacks if c is not None]

    def __enter__(self) -> TrainingCallbacks:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.metric_logger is not None:
            self.metric_logger.close()


def assemble_callbacks(
    job: TrainJob, run: TrackedRun | None, net, data, plan: TrainPlan, lr_values
) -> TrainingCallbacks:
    """Every callback of a training job, built from its settings (the MLflow ones only with a run)."""
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory

    trainer = job.trainer
    history = TrainHistory(trainer.batch_size, lr_values)
    callbacks = TrainingCallbacks(
        history=history,
        console=ConsoleProgress(history, plan, trainer.print_every_n_steps),
        checkpoints=CheckpointSaver(
            net,
            job.cfg.paths.checkpoint_dir,
            job.cfg.model.name,
            trainer.checkpoint_every_n_epochs,
            trainer.keep_checkpoints,
            history,
        ),
    )
    if run is None:
        return callbacks
    from vit_exp.tracking.metric_logger import MlflowMetricLogger

    callbacks.metric_logger = MlflowMetricLogger(
        run.run_id,
        history,
        every_n_steps=job.mlflow.log_every_n_steps,
        details_every_n_steps=job.mlflow.log_details_every_n_steps,
        flush_interval_s=float(job.mlflow.flush_interval_s),
    )
    if job.registry.register != "none":
        from vit_exp.tracking.registration import CheckpointRegistration
        from vit_exp.tracking.registry import PyfuncModelWriter, version_config, write_model_inputs

        folder = (job.hydra.run_dir or Path(".")) / "model_inputs"
        config = version_config(job.cfg.model.name, net.config, data)
        inputs = write_model_inputs(folder, config, class_names_of(data, net.num_classes))
        writer = PyfuncModelWriter(inputs, example_image(data), job.registry.top_k)
        callbacks.registration = CheckpointRegistration(
            job.registry, run.run_id, callbacks.checkpoints, writer
        )
    return callbacks
