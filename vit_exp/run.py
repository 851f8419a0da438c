"""Train a ViT: compose ``conf/train.yaml`` -> build device, data, model -> fit -> report.

python -m vit_exp.run [group=option ...] [key=value ...]
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vit_exp.cli import make_main
from vit_exp.errors import ConfigError, positive_int, writable_directory
from vit_exp.train.objective import best_value, check_optimized_metric, epoch_values

log = logging.getLogger("vit_exp.run")


def resolve_num_classes(configured: int | None, data) -> int:
    """``model.num_classes`` or, when null, the class count of the data; checked against the labels."""
    if configured is None:
        return data.num_classes
    positive_int("model.num_classes", configured)
    needed = max(data.class_indexing.values()) + 1
    if configured < needed:
        raise ConfigError(
            f"model.num_classes={configured} is too small: the data's labels go up to {needed - 1} "
            f"(data.class_map={data.class_map}); use model.num_classes=null to follow the data"
        )
    return configured


def train(cfg: DictConfig) -> float | None:
    """Run one training job from a composed config; return the best value of ``optimized_metric``."""
    from hydra.utils import instantiate

    from vit_exp.tracking.job import (
        HydraJob,
        TrainJob,
        assemble_callbacks,
        class_names_of,
        log_job_inputs,
        training_run,
    )
    from vit_exp.tracking.resume import NothingToDo, resolve_resume
    from vit_exp.train import parallel

    workers = parallel.from_environment()  # under msrun: this worker's rank; rank 0 alone records
    job = TrainJob.from_config(cfg, HydraJob.current(), workers)  # every settings group checked first
    objective = check_optimized_metric(cfg.optimized_metric, sweep_direction())
    if workers.is_main:
        writable_directory("paths.checkpoint_dir", cfg.paths.checkpoint_dir)  # now, not after epoch 1
    client = None
    if job.mlflow.enabled:
        from vit_exp.tracking.store import use_store

        client = use_store(job.mlflow.tracking_uri)  # a store that does not answer fails now
    if workers.world_size > 1:  # the workers meet first: a resume is found by rank 0 alone
        job.device.apply(seed=job.trainer.seed, deterministic=job.trainer.deterministic)
        parallel.start(workers)
    resume = resolve_resume(job, client) if workers.is_main else None
    if workers.world_size > 1 and cfg.get("resume") not in (None, "", "never", False):
        resume = same_resume_on_every_worker(job, resume)
    if isinstance(resume, NothingToDo):
        log.info(resume.message)
        return resume.best
    from vit_exp.data.digest import data_identity
    from vit_exp.data.pipeline import TrainBatches, val_dataset
    from vit_exp.models.vit import count_parameters
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.metrics import classification_metrics
    from vit_exp.train.trainer import fit

    if workers.world_size == 1:
        job.device.apply(seed=job.trainer.seed, deterministic=job.trainer.deterministic)
    data = instantiate(cfg.data)
    num_classes = resolve_num_classes(cfg.model.num_classes, data)
    net = instantiate(cfg.model, num_classes=num_classes, precision=job.device.precision)
    batch_size = job.trainer.batch_size
    val_ds = val_dataset(data, net.image_size, batch_size)  # checks the val split before training
    identity = data_identity(
        data, Path(cfg.paths.cache_dir) / "data_digests", class_names_of(data, num_classes)
    )
    log.info(
        "model %s: %s parameters, %d classes | data %s: %s (%d train / %d val images, digest %s) | "
        "device %s (%s mode, %s)%s",
        cfg.model.name,
        f"{count_parameters(net):,}",
        num_classes,
        data.name,
        data.root,
        identity.train.num_images,
        identity.val.num_images,
        identity.digest,
        job.device.target,
        job.device.mode,
        net.precision,
        f" | data parallel: worker {workers.rank} of {workers.world_size}, global batch "
        f"{workers.global_batch(batch_size)}"
        if workers.world_size > 1
        else "",
    )
    batches = TrainBatches(
        data,
        net.image_size,
        batch_size,
        job.trainer.seed,
        exact_skip=not job.trainer.resume_fast_skip,
        shard=(workers.world_size, workers.rank),
    )
    plan = job.trainer.plan(batches.steps_per_epoch)
    schedule = instantiate(cfg.sched)(total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch)
    lr_values = job.optim.learning_rates(schedule)
    point = resume_point(resume)
    with training_run(job, resume) as run:
        if run is not None and (resume is None or resume.run_id is None):
            log_job_inputs(job, run, data, net, identity)
        logged = resume.logged_steps if resume is not None else None
        with assemble_callbacks(job, run, net, data, identity, plan, lr_values, logged) as callbacks:
            if point is not None:
                callbacks.load_state(resume.state, point.path)
            fit(
                net,
                batches.epoch,
                val_ds,
                optimizer=job.optim.build(net.trainable_params(), lr_values),
                loss_fn=CrossEntropySmooth(num_classes, job.trainer.label_smoothing),
                metrics=classification_metrics(num_classes),
                plan=plan,
                callbacks=callbacks.ordered,
                amp_level=job.device.amp_level,
                resume=point,
                preemption=preemption(job, callbacks, run) if workers.is_main else worker_preemption(job),
                world_size=workers.world_size,
            )
        return report(callbacks, plan, run, objective)


def same_resume_on_every_worker(job, resume):
    """Rank 0's resume (found in the store) for every data-parallel worker: the same checkpoint,
    or, when the run finished, nothing to do on any of them."""
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


def resume_point(resume):
    """The checkpoint a resumed job loads (None for a new run or a run that wrote none)."""
    if resume is None or resume.checkpoint is None:
        return None
    from vit_exp.train.state import ResumePoint, position_of, read_checkpoint

    entries = read_checkpoint(resume.checkpoint)
    return ResumePoint(resume.checkpoint, entries, position_of(resume.state))


def preemption(job, callbacks, run):
    """SIGTERM/Ctrl-C handling for the training loop: a checkpoint, then the run ends KILLED."""
    from vit_exp.train.preemption import Preemption

    def save(run_context, epoch_done: bool):
        last = callbacks.checkpoints.written[-1] if callbacks.checkpoints.written else None
        step = int(run_context.original_args().cur_step_num)
        if last is not None and last.step == step and (last.kind == "epoch") == epoch_done:
            return last.path  # this very state is on disk already
        return callbacks.checkpoints.save_now(run_context, "preempt", epoch_done).path

    def on_timeout() -> None:
        if callbacks.metric_logger is not None:
            callbacks.metric_logger.flush()
        if run is not None:
            run.outbox.finish("KILLED", wait_s=min(5.0, job.mlflow.drain_timeout_s))

    return Preemption(job.trainer.preempt_grace_s, save, on_timeout)


def worker_preemption(job):
    """A data-parallel worker that does not record: on SIGTERM/Ctrl-C it ends after the current
    step (as the main worker does, whose AllReduce that step needs), saving nothing."""
    from vit_exp.train.preemption import Preemption

    return Preemption(job.trainer.preempt_grace_s, lambda run_context, epoch_done: None)


def report(callbacks, plan, run, objective: str = "val/top1") -> float | None:
    """Log the end-of-run summary; return the best value of the metric ``objective``."""
    history = callbacks.history
    best, last = history.best("top1"), history.last_epoch
    log.info("=" * 72)
    log.info(
        "finished %d step(s) in %.1fs%s",
        history.global_step,
        history.train_seconds,
        " (stopped at trainer.max_steps)" if plan.stops_early else "",
    )
    if last and last.val:
        log.info(
            "last epoch %d: val top1 %.4f  top5 %.4f  loss %.4f",
            last.epoch,
            last.val["top1"],
            last.val["top5"],
            last.val["loss"],
        )
    if best:
        log.info("best epoch %d: val top1 %.4f  top5 %.4f", best.epoch, best.val["top1"], best.val["top5"])
    kept = callbacks.checkpoints.on_disk
    if kept:
        log.info("checkpoints: %d in %s (last: %s)", len(kept), kept[-1].path.parent, kept[-1].path.name)
    if callbacks.registration and callbacks.registration.queued:
        count, name = len(callbacks.registration.queued), callbacks.registration.settings.name
        log.info("model versions: %d checkpoint(s) registered as versions of '%s'", count, name)
    if run is not None:
        from vit_exp.tracking.store import runs_page_url

        log.info("mlflow run: %s (%s)", run.run_id, run.tracking_uri)
        log.info("mlflow ui: %s", runs_page_url(run.tracking_uri, run.experiment_id, run.run_id))
    return best_value(objective, epoch_values(objective, history.epochs))


def check_job(cfg: DictConfig) -> None:
    """What ``train`` checks first, on a sweep job's composed config (its ``hydra`` node included):
    every settings group, and ``optimized_metric`` against the sweeper's direction. A sweep runs it
    before it starts (see ``vit_exp.tracking.sweep``)."""
    from omegaconf import OmegaConf

    from vit_exp.tracking.job import HydraJob, TrainJob

    TrainJob.from_config(cfg, HydraJob())
    direction = OmegaConf.select(cfg, "hydra.sweeper.direction", default=None)
    check_optimized_metric(cfg.optimized_metric, direction if isinstance(direction, str) else None)


def sweep_direction() -> str | None:
    """The running sweep's optimization direction (None outside a sweep, or for a grid)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    direction = HydraConfig.get().sweeper.get("direction")
    return str(direction) if isinstance(direction, str) else None


main = make_main("train", train, check=check_job)

if __name__ == "__main__":
    main()
