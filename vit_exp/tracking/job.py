"""One training job: its settings, its MLflow run, and the one function that assembles its callbacks."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from vit_exp.credentials import mask, reveal
from vit_exp.data.folder import list_images
from vit_exp.errors import RegistryError

if TYPE_CHECKING:
    from vit_exp.data.digest import DataIdentity
    from vit_exp.device import DeviceSettings
    from vit_exp.tracking.metric_logger import MlflowMetricLogger
    from vit_exp.tracking.outbox import Outbox
    from vit_exp.tracking.registration import CheckpointRegistration
    from vit_exp.tracking.registry import RegistrySettings
    from vit_exp.tracking.resume import ResumeTarget
    from vit_exp.tracking.runs import MlflowSettings
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory
    from vit_exp.train.optim import OptimizerSettings
    from vit_exp.train.parallel import DataParallel
    from vit_exp.train.plan import TrainPlan
    from vit_exp.train.trainer import TrainSettings

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
    """A training job's config and every settings object in it, built (and so checked) up front.

    ``workers``: its place in a data-parallel job; only the main worker records (MLflow run,
    checkpoints, versions), so the others get ``mlflow.enabled=false``.
    """

    cfg: DictConfig
    hydra: HydraJob
    trainer: TrainSettings
    optim: OptimizerSettings
    device: DeviceSettings
    mlflow: MlflowSettings
    registry: RegistrySettings
    workers: DataParallel

    @classmethod
    def from_config(cls, cfg: DictConfig, hydra: HydraJob, workers: DataParallel | None = None) -> TrainJob:
        import dataclasses

        from hydra.utils import instantiate

        from vit_exp.models.config import ViTConfig
        from vit_exp.train.parallel import DataParallel

        ViTConfig.from_mapping(cfg.model, num_classes=cfg.model.num_classes or 1)  # checked, not kept
        groups = ("trainer", "optim", "device", "mlflow", "registry")
        settings = {group: instantiate(cfg[group]) for group in groups}
        workers = workers or DataParallel()
        if not workers.is_main:
            settings["mlflow"] = dataclasses.replace(settings["mlflow"], enabled=False)
        return cls(cfg, hydra, workers=workers, **settings)


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a job records into, and its outbox (everything after the start goes through it).

    ``lock``: the run's lock, held while this process trains it (see ``tracking.resume``).
    """

    run_id: str
    tracking_uri: str
    outbox: Outbox
    lock: object | None = None
    experiment_id: str = ""


@contextlib.contextmanager
def training_run(job: TrainJob, resume: ResumeTarget | None = None) -> Iterator[TrackedRun | None]:
    """Open the job's MLflow run (None with ``mlflow.enabled=false``); it ends FINISHED, FAILED or KILLED.

    ``resume`` (with a run id) continues that run as its next attempt. The end goes through the
    outbox after everything else. When the store does not take it all within
    ``mlflow.drain_timeout_s``, the journal is kept and the command says how to send it.
    """
    if not job.mlflow.enabled:
        yield None
        return
    from vit_exp.locking import hold_if_free
    from vit_exp.tracking.resume import RUN_LOCK, TAG_DIGEST, attempt_tags, comparable_config, config_digest
    from vit_exp.tracking.runs import readable_run_name, run_tags, tracked_run

    checkpoint_dir = Path(str(job.cfg.paths.checkpoint_dir)).resolve()
    reopen = resume.run_id if resume is not None else None
    if reopen:
        tags = attempt_tags(resume.attempt, job.hydra.run_dir, checkpoint_dir, resume.from_step)
        lock = resume.lock
    else:
        tags = run_tags(job.cfg, job.hydra.overrides)
        tags[TAG_DIGEST] = config_digest(comparable_config(job.cfg, job.workers.world_size))
        tags |= attempt_tags(1, job.hydra.run_dir, checkpoint_dir, None)
        if resume is not None and resume.checkpoint is not None:
            tags["vit_exp.resumed_from_checkpoint"] = str(resume.checkpoint)
        if job.hydra.job_num is not None:
            tags["hydra.job.num"] = str(job.hydra.job_num)
        lock = hold_if_free(job.hydra.run_dir / RUN_LOCK) if job.hydra.run_dir else None
    name = readable_run_name(job.cfg, job.hydra.overrides)
    opened: list[TrackedRun] = []
    with tracked_run(
        job.mlflow,
        name,
        tags,
        job.hydra.sweep_dir,
        job.hydra.run_dir,
        finish=lambda run_id, status, error: _finish(job, opened, run_id, status, error),
        reopen_run_id=reopen,
    ) as run:
        opened.append(_with_outbox(job, run.info.run_id, lock, run.info.experiment_id))
        yield opened[0]


def _with_outbox(job: TrainJob, run_id: str, lock, experiment: str) -> TrackedRun:
    from vit_exp.tracking.outbox import OUTBOX_DIR, Outbox, RunSender
    from vit_exp.tracking.store import is_server, use_store

    uri = job.mlflow.tracking_uri
    background = is_server(reveal(uri))  # the network is never waited for in the training thread
    folder = (job.hydra.run_dir or Path(tempfile.mkdtemp(prefix="vit_exp_"))) / OUTBOX_DIR
    stopping = threading.Event()  # the command stops waiting for the store: so do the sender's retries
    outbox = Outbox(folder, RunSender(use_store(uri), run_id, stopping), background, stopping)
    outbox.put({"kind": "run", "run_id": run_id, "tracking_uri": mask(uri)})
    return TrackedRun(run_id, uri, outbox, lock, experiment)


def _finish(job: TrainJob, opened: list[TrackedRun], run_id: str, status: str, error: str | None) -> None:
    if not opened:  # the run was created but its outbox was not: end it directly
        from vit_exp.tracking.runs import end_run
        from vit_exp.tracking.store import use_store

        end_run(use_store(job.mlflow.tracking_uri), run_id, status, error)
        return
    run = opened[0]
    left = run.outbox.finish(status, wait_s=job.mlflow.drain_timeout_s, error=error)
    if not left:
        return
    message = (
        f"mlflow: {left} record(s) of run {run.run_id} were not stored ({mask(run.tracking_uri)} is not "
        f"answering); they are kept in {run.outbox.folder}: send them later with "
        f"python -m vit_exp.sync outbox={run.outbox.folder}"
    )
    if status != "FINISHED":  # the run's own error is the one to report
        log.warning(message)
        return
    raise RegistryError(message)


def class_names_of(data, num_classes: int) -> list[str]:
    """The data's class names, padded to the head's size (e.g. model.num_classes=1000 on a subset)."""
    names = list(data.class_names)
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def log_job_inputs(job: TrainJob, run: TrackedRun, data, net, identity: DataIdentity) -> None:
    """Params, tags, datasets and artifacts known before training."""
    from vit_exp.tracking.lineage import log_datasets
    from vit_exp.tracking.runs import log_run_inputs
    from vit_exp.tracking.store import use_store

    hydra_dir = job.hydra.run_dir / ".hydra" if job.hydra.run_dir else None
    client = use_store(run.tracking_uri)
    log_run_inputs(client, run.run_id, job.cfg, hydra_dir, class_names_of(data, net.num_classes), net)
    log_datasets(client, run.run_id, identity)
    log_data_parallel(client, run.run_id, job)


def log_data_parallel(client, run_id: str, job: TrainJob) -> None:
    """How many workers trained the run, and the batch per worker (``trainer.batch_size``) and in all."""
    from mlflow.entities import Param

    workers, batch = job.workers, job.trainer.batch_size
    params = {
        "parallel.world_size": workers.world_size,
        "parallel.global_batch_size": workers.global_batch(batch),
    }
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


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
    checkpoints: CheckpointSaver  # after the metrics (in the outbox up to its step), before registration
    metric_logger: MlflowMetricLogger | None = None
    registration: CheckpointRegistration | None = None
    writes_checkpoints: bool = True  # false in a data-parallel worker other than the main one

    @property
    def ordered(self) -> list:
        checkpoints = self.checkpoints if self.writes_checkpoints else None
        callbacks = [self.history, self.console, self.metric_logger, checkpoints, self.registration]
        return [c for c in callbacks if c is not None]

    def load_state(self, state: dict, checkpoint: Path) -> None:
        """Continue from a full-state checkpoint's ``state`` (written at ``checkpoint``)."""
        from vit_exp.train.callbacks import SavedCheckpoint

        self.history.load_state_dict(state["history"])
        if self.registration is not None:
            self.registration.load_state_dict(state)
            position = state["position"]
            kind = state.get("kind", "step")
            record = self.history.last_epoch if kind == "epoch" else None
            resumed = SavedCheckpoint(checkpoint, record, kind, position["global_step"], position["epoch"])
            self.registration.catch_up(resumed)

    def __enter__(self) -> TrainingCallbacks:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.metric_logger is not None:
            self.metric_logger.flush()


def assemble_callbacks(
    job: TrainJob,
    run: TrackedRun | None,
    net,
    data,
    identity: DataIdentity,
    plan: TrainPlan,
    lr_values,
    logged_steps: dict[str, int] | None = None,
) -> TrainingCallbacks:
    """Every callback of a training job, built from its settings (the MLflow ones only with a run).

    ``logged_steps``: per metric, the last step a resumed run already holds (not logged again).
    """
    from vit_exp.tracking.resume import comparable_config
    from vit_exp.train.callbacks import CheckpointSaver, ConsoleProgress, TrainHistory

    trainer = job.trainer
    history = TrainHistory(job.workers.global_batch(trainer.batch_size), lr_values)  # images/s of all
    comparable = comparable_config(job.cfg, job.workers.world_size)
    callbacks = TrainingCallbacks(
        history=history,
        console=ConsoleProgress(history, plan, trainer.print_every_n_steps),
        checkpoints=CheckpointSaver(
            job.cfg.paths.checkpoint_dir,
            job.cfg.model.name,
            history,
            every_n_epochs=trainer.checkpoint_every_n_epochs,
            keep=trainer.keep_checkpoints,
            every_n_steps=trainer.checkpoint_every_n_steps,
            keep_steps=trainer.keep_step_checkpoints,
            seed=trainer.seed,
            background=trainer.checkpoint_in_background,  # the training thread copies, a thread writes
            extra_state=lambda: {
                "run_id": run.run_id if run else None,
                "config": comparable,
                **(callbacks.registration.state_dict() if callbacks.registration else {}),
            },
        ),
        writes_checkpoints=job.workers.is_main,
    )
    if run is None:
        return callbacks
    from vit_exp.tracking.metric_logger import MlflowMetricLogger

    callbacks.metric_logger = MlflowMetricLogger(
        run.outbox.put,
        history,
        every_n_steps=job.mlflow.log_every_n_steps,
        details_every_n_steps=job.mlflow.log_details_every_n_steps,
        flush_interval_s=float(job.mlflow.flush_interval_s),
        logged_steps=logged_steps or {},
    )
    # A checkpoint's metrics are in the outbox before it is written: a resume from it loses none.
    callbacks.checkpoints.before_save = callbacks.metric_logger.flush
    if job.registry.register != "none":
        from vit_exp.tracking.outbox import HELD_DIR
        from vit_exp.tracking.registration import CheckpointRegistration
        from vit_exp.tracking.registry import version_config, write_model_inputs

        config = version_config(job.cfg.model.name, net.config, data)
        inputs = write_model_inputs(
            run.outbox.folder.parent / "model_inputs",
            config,
            class_names_of(data, net.num_classes),
            example_image(data),
        )
        callbacks.registration = CheckpointRegistration(
            job.registry,
            run.run_id,
            callbacks.checkpoints,
            inputs,
            put=run.outbox.put,
            flush_metrics=callbacks.metric_logger.flush,
            data_tags=identity.tags(),
            hold_in=run.outbox.folder / HELD_DIR,
        )
        # A checkpoint becomes a version as soon as its files are whole (also one written in the
        # background), before the next checkpoint's state records what is registered.
        callbacks.checkpoints.after_write = callbacks.registration.consider_new_checkpoints
        if not run.outbox.background:  # versions are made in the training thread: the one-off part now
            run.outbox.send.prepare_versions(inputs, job.registry.top_k)
    return callbacks
