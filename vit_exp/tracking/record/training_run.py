"""A ``vit_exp.job.TrainJob``'s MLflow run: opened or continued, its outbox, pre-training records, its end."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vit_exp.credentials import mask, reveal
from vit_exp.errors import RegistryError
from vit_exp.tracking.record.story import RunStory

if TYPE_CHECKING:
    from vit_exp.data.digest import DataIdentity
    from vit_exp.tracking.record.outbox import Outbox
    from vit_exp.tracking.record.system_metrics import SystemMetrics
    from vit_exp.tracking.resume import ResumeTarget

log = logging.getLogger("vit_exp.tracking")


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a job records into, its outbox, its lock (held while this process trains it) and
    its story (the description written at its start and end) and its system-metrics monitor (None with
    ``mlflow.system_metrics=false``)."""

    run_id: str
    tracking_uri: str
    outbox: Outbox
    lock: object | None = None
    experiment_id: str = ""
    story: RunStory = field(default_factory=RunStory)
    system_metrics: SystemMetrics | None = None


@contextlib.contextmanager
def training_run(job, resume: ResumeTarget | None = None) -> Iterator[TrackedRun | None]:
    """Open the job's MLflow run (None with ``mlflow.enabled=false``); it ends FINISHED, FAILED or KILLED.

    ``resume`` with a run id continues that run. Records not stored within ``mlflow.drain_timeout_s``
    stay in the outbox, and the command says how to send them."""
    if not job.mlflow.enabled:
        yield None
        return
    from vit_exp.tracking.record.lifecycle import readable_run_name, tracked_run

    tags, lock = _start_tags(job, resume)
    reopen = resume.run_id if resume is not None else None
    opened: list[TrackedRun] = []
    with tracked_run(
        job.mlflow,
        readable_run_name(job.config.resolved, job.hydra.overrides),
        tags,
        job.hydra.sweep_dir,
        job.hydra.run_dir,
        finish=lambda run_id, status, error: _finish(job, opened, run_id, status, error),
        reopen_run_id=reopen,
    ) as run:
        opened.append(_with_outbox(job, run.info.run_id, lock, run.info.experiment_id, reopen is not None))
        yield opened[0]


def _start_tags(job, resume: ResumeTarget | None) -> tuple[dict[str, str], object | None]:
    """The tags this attempt adds to its run, and the run's lock (a continued run's is held already)."""
    from vit_exp.locking import hold_if_free
    from vit_exp.tracking.record.lifecycle import run_tags
    from vit_exp.tracking.resume import RUN_LOCK, TAG_DIGEST, attempt_tags, config_digest

    checkpoint_dir = job.checkpoint_dir.resolve()
    if resume is not None and resume.run_id:
        return attempt_tags(resume.attempt, job.hydra.run_dir, checkpoint_dir, resume.from_step), resume.lock
    tags = run_tags(job.config.resolved, job.hydra.overrides)
    tags[TAG_DIGEST] = config_digest(job.comparable)
    tags |= attempt_tags(1, job.hydra.run_dir, checkpoint_dir, None)
    if resume is not None and resume.checkpoint is not None:
        tags["vit_exp.resumed_from_checkpoint"] = str(resume.checkpoint)
    if job.hydra.job_num is not None:
        tags["hydra.job.num"] = str(job.hydra.job_num)
    return tags, hold_if_free(job.hydra.run_dir / RUN_LOCK) if job.hydra.run_dir else None


def _with_outbox(job, run_id: str, lock, experiment: str, reopened: bool) -> TrackedRun:
    from vit_exp.tracking.record.outbox import OUTBOX_DIR, Outbox, RunRecord, RunSender
    from vit_exp.tracking.record.system_metrics import SystemMetrics
    from vit_exp.tracking.store import is_server, use_store

    uri = job.mlflow.tracking_uri
    background = is_server(reveal(uri))  # the network is never waited for in the training thread
    folder = (job.hydra.run_dir or Path(tempfile.mkdtemp(prefix="vit_exp_"))) / OUTBOX_DIR
    stopping = threading.Event()  # the command stops waiting for the store: so do the sender's retries
    outbox = Outbox(folder, RunSender(use_store(uri), run_id, stopping), background, stopping)
    outbox.put(RunRecord(run_id, mask(uri)))
    settings = job.mlflow
    monitor = (
        SystemMetrics(run_id, uri, settings.system_metrics_interval_s, reopened)
        if settings.system_metrics
        else None
    )
    return TrackedRun(run_id, uri, outbox, lock, experiment, system_metrics=monitor)


def _finish(job, opened: list[TrackedRun], run_id: str, status: str, error: str | None) -> None:
    from vit_exp.tracking.record.records import ArtifactRecord

    if not opened:  # the run was created but its outbox was not: end it directly
        from vit_exp.tracking.record.lifecycle import end_run
        from vit_exp.tracking.store import use_store

        end_run(use_store(job.mlflow.tracking_uri), run_id, status, error)
        return
    run = opened[0]
    if run.system_metrics is not None:  # before the end record: no system/* point after it
        run.system_metrics.stop()
    if (
        job.hydra.log_file is not None and job.hydra.log_file.is_file()
    ):  # the console's story, as far as it got
        run.outbox.put(ArtifactRecord(str(job.hydra.log_file)))
    run.outbox.put(run.story.record(status, error))  # after the versions: it lists them
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


def log_job_inputs(job, run: TrackedRun, data, net, identity: DataIdentity) -> None:
    """Log params, tags, datasets and artifacts known before training, and the workers and global batch."""
    from mlflow.entities import Param

    from vit_exp.tracking.record.lifecycle import log_run_inputs
    from vit_exp.tracking.record.lineage import log_datasets
    from vit_exp.tracking.resume import hyperparameters
    from vit_exp.tracking.store import use_store

    hydra_dir = job.hydra.run_dir / ".hydra" if job.hydra.run_dir else None
    client = use_store(run.tracking_uri)
    names = data.class_names_for(net.num_classes)
    params = hyperparameters(job.config.flat)
    log_run_inputs(client, run.run_id, params, job.config.flat, job.config.yaml, hydra_dir, names, net)
    log_datasets(client, run.run_id, identity)
    workers, batch = job.workers, job.trainer.batch_size
    parallel = {
        "parallel.world_size": workers.world_size,
        "parallel.global_batch_size": workers.global_batch(batch),
    }
    client.log_batch(run.run_id, params=[Param(key, str(value)) for key, value in parallel.items()])
