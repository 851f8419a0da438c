"""How a training job starts, before its data is read: device, tracking store, workers, ``resume=``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vit_exp.errors import writable_directory

if TYPE_CHECKING:
    from vit_exp.job import TrainJob
    from vit_exp.tracking.resume import NothingToDo, ResumeTarget
    from vit_exp.train.state import ResumePoint


@dataclass(frozen=True)
class Start:
    """What the job continues (``resume`` None: a new run), the checkpoint it loads (``point``), or,
    when ``resume=`` names a run that finished, ``done``."""

    resume: ResumeTarget | None = None
    point: ResumePoint | None = None
    done: NothingToDo | None = None


def start_job(job: TrainJob) -> Start:
    """Set the job up; a store that does not answer, or a bad ``resume=``, fails here."""
    from vit_exp.tracking.resume import NothingToDo, resolve_resume
    from vit_exp.train import parallel

    workers = job.workers
    if workers.is_main:
        writable_directory("paths.checkpoint_dir", job.checkpoint_dir)  # now, not after epoch 1
    client = None
    if job.mlflow.enabled:
        from vit_exp.tracking.store import use_store

        client = use_store(job.mlflow.tracking_uri)  # a store that does not answer fails now
    if workers.world_size > 1:  # the workers meet first: a resume is found by rank 0 alone
        job.device.apply(seed=job.trainer.seed, deterministic=job.trainer.deterministic)
        exit_log = job.hydra.run_dir / f"mindspore-exit-rank{workers.rank}.log" if job.hydra.run_dir else None
        parallel.start(workers, exit_log)
    resume = resolve_resume(job, client) if workers.is_main else None
    if workers.world_size > 1 and job.resume is not None:
        resume = _same_on_every_worker(job, resume)
    if isinstance(resume, NothingToDo):
        return Start(done=resume)
    if workers.world_size == 1:
        job.device.apply(seed=job.trainer.seed, deterministic=job.trainer.deterministic)
    return Start(resume, _resume_point(resume))


def _same_on_every_worker(job: TrainJob, resume):
    """Rank 0's resume for every data-parallel worker: the same checkpoint, or nothing to do on all."""
    from vit_exp.tracking.resume import NothingToDo, from_checkpoint
    from vit_exp.train.parallel import share_from_main

    if isinstance(resume, NothingToDo):
        shared = {"done": resume.message}
    else:
        checkpoint = resume.checkpoint if resume is not None else None
        shared = {"checkpoint": str(checkpoint) if checkpoint else None}
    shared = share_from_main(shared)
    if job.workers.is_main:
        return resume
    if "done" in shared:
        return NothingToDo("", shared["done"], None)
    return from_checkpoint(Path(shared["checkpoint"]), job) if shared["checkpoint"] else None


def _resume_point(resume: ResumeTarget | None) -> ResumePoint | None:
    """The checkpoint a resumed job loads (None for a new run or a run that wrote none)."""
    if resume is None or resume.checkpoint is None:
        return None
    from vit_exp.train.state import ResumePoint, position_of, read_checkpoint

    entries = read_checkpoint(resume.checkpoint)
    return ResumePoint(resume.checkpoint, entries, position_of(resume.state))
