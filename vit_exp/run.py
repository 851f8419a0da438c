"""Train a ViT: compose ``conf/train.yaml`` -> build device, data, model -> fit -> report.

python -m vit_exp.run [group=option ...] [key=value ...]
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from vit_exp.cli import make_main
from vit_exp.errors import ConfigError, positive_int
from vit_exp.job import ConfigSnapshot, HydraJob, TrainJob, settings_groups

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

    from vit_exp.data.augment import Augmentation
    from vit_exp.data.digest import data_identity
    from vit_exp.data.pipeline import TrainBatches, val_dataset
    from vit_exp.session import training_session
    from vit_exp.start import start_job
    from vit_exp.train.losses import CrossEntropySmooth, SoftTargetCrossEntropy
    from vit_exp.train.metrics import classification_metrics
    from vit_exp.train.parallel import from_environment
    from vit_exp.train.trainer import fit

    job = TrainJob(HydraJob.current(), from_environment(), ConfigSnapshot.of(cfg), **settings_groups(cfg))
    start = start_job(job)  # the device, the tracking store, the data-parallel workers, resume=
    if start.done is not None:
        log.info(start.done.message)
        return start.done.best
    data = instantiate(cfg.data)
    num_classes = resolve_num_classes(cfg.model.num_classes, data)
    net = instantiate(cfg.model, num_classes=num_classes, precision=job.device.precision)
    trainer, workers = job.trainer, job.workers
    val_ds = val_dataset(data, net.image_size, trainer.batch_size)  # checks the val split before training
    identity = data_identity(data, job.cache_dir / "data_digests", data.class_names_for(num_classes))
    log_job(job, data, net, identity)
    shard = (workers.world_size, workers.rank)
    exact_skip = not trainer.resume_fast_skip
    augment = Augmentation(job.augment, num_classes, trainer.label_smoothing)
    batches = TrainBatches(data, net.image_size, trainer.batch_size, trainer.seed, exact_skip, shard, augment)
    plan = trainer.plan(batches.steps_per_epoch)
    schedule = instantiate(cfg.sched)(total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch)
    lr_values = job.optim.learning_rates(schedule)
    hard_loss = CrossEntropySmooth(num_classes, trainer.label_smoothing)
    with training_session(job, start.resume, data, net, identity, plan, lr_values) as session:
        fit(
            net,
            batches.epoch,
            val_ds,
            optimizer=job.optim.build(net.trainable_params(), lr_values),
            loss_fn=SoftTargetCrossEntropy() if job.augment.mixes else hard_loss,
            metrics=classification_metrics(num_classes),
            plan=plan,
            callbacks=session.callbacks.ordered,
            amp_level=job.device.amp_level,
            clip_grad_norm=job.optim.clip_grad_norm,
            resume=start.point,
            preemption=session.preemption,
            world_size=workers.world_size,
            eval_loss_fn=hard_loss,  # validation stays on hard labels
            ema_decay=trainer.ema.decay,
            seed=trainer.seed,  # with the step and the rank: drop path's masks
            rank=workers.rank,
        )
        return session.report(plan)


def log_job(job: TrainJob, data, net, identity) -> None:
    """One line: the model, the data, the device and the workers this job trains with."""
    from vit_exp.models.vit import count_parameters

    workers = job.workers
    parallel = (
        f" | data parallel: worker {workers.rank} of {workers.world_size}, global batch "
        f"{workers.global_batch(job.trainer.batch_size)}"
        if workers.world_size > 1
        else ""
    )
    images = f"{identity.train.num_images} train / {identity.val.num_images} val images"
    log.info(
        f"model {job.model_name}: {count_parameters(net):,} parameters, {net.num_classes} classes | "
        f"data {identity.label} in {data.root} ({images}) | "
        f"device {job.device.target} ({job.device.mode} mode, {net.precision}){parallel}"
    )


def check_job(cfg: DictConfig) -> None:
    """``train``'s first checks (settings groups, ``optimized_metric`` vs the sweeper's direction) on
    a sweep job's composed config; the sweep runs them before it starts."""
    from vit_exp.train.parallel import DataParallel

    TrainJob(HydraJob.of(cfg), DataParallel(), ConfigSnapshot.of(cfg), **settings_groups(cfg))


main = make_main("train", train, check=check_job)

if __name__ == "__main__":
    main()
