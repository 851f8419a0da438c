"""Train a ViT: compose the config -> build device, data, model -> fit -> report.

python -m vit_exp.run [group=option ...] [key=value ...]
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from vit_exp.cli import make_main
from vit_exp.errors import ConfigError

log = logging.getLogger("vit_exp.run")


def resolve_num_classes(configured: int | None, data) -> int:
    """``model.num_classes`` or, when null, the class count of the data; checked against the labels."""
    if configured is None:
        return data.num_classes
    needed = max(data.class_indexing.values()) + 1
    if configured < needed:
        raise ConfigError(
            f"model.num_classes={configured} is too small: the data's labels go up to {needed - 1} "
            f"(data.class_map={data.class_map}); use model.num_classes=null to follow the data"
        )
    return configured


def train(cfg: DictConfig) -> float | None:
    """Run one training job from a composed config; return the best validation top-1."""
    from hydra.utils import instantiate

    from vit_exp.data.pipeline import train_dataset, val_dataset
    from vit_exp.models.vit import count_parameters
    from vit_exp.tracking.session import JobContext, TrainingTracker
    from vit_exp.train.trainer import fit

    settings = instantiate(cfg.trainer)
    settings.validate()
    tracker = TrainingTracker(cfg, JobContext.from_hydra())
    device = instantiate(cfg.device)
    device.apply(seed=settings.seed)
    data = instantiate(cfg.data)
    num_classes = resolve_num_classes(cfg.model.num_classes, data)
    net = instantiate(cfg.model, num_classes=num_classes)
    log.info(
        "model %s: %s parameters, %d classes | data %s: %s | device %s (%s mode)",
        cfg.model.name,
        f"{count_parameters(net):,}",
        num_classes,
        data.name,
        data.root,
        device.target,
        device.mode,
    )
    image_size = int(cfg.model.image_size)
    val_ds = val_dataset(data, image_size, settings.batch_size)  # checks the val split before training
    train_ds = train_dataset(data, image_size, settings.batch_size)
    with tracker.run():
        tracker.log_inputs(data, net)
        result = fit(
            net,
            train_ds,
            val_ds,
            settings=settings,
            num_classes=num_classes,
            optimizer_factory=instantiate(cfg.optim),
            schedule_factory=instantiate(cfg.sched),
            checkpoint_dir=cfg.paths.checkpoint_dir,
            checkpoint_prefix=cfg.model.name,
            amp_level=device.amp_level,
            extra_callbacks=tracker.callbacks,
        )
        return report(result, tracker)


def report(result, tracker=None) -> float | None:
    """Log the end-of-run summary; return the best validation top-1."""
    history = result.history
    best = history.best("top1")
    last = history.epochs[-1] if history.epochs else None
    log.info("=" * 72)
    log.info(
        "finished %d step(s) in %.1fs%s",
        history.global_step,
        history.train_seconds,
        " (stopped at trainer.max_steps)" if history.stopped_early else "",
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
    if result.checkpoints:
        log.info(
            "checkpoints: %d in %s (last: %s)",
            len(result.checkpoints),
            result.checkpoints[-1][0].parent,
            result.checkpoints[-1][0].name,
        )
    registrar = getattr(tracker, "registrar", None)
    if registrar and registrar.versions:
        versions = ", ".join(v for v, _, _ in registrar.versions)
        log.info("registered model '%s' version(s): %s", registrar.settings.name, versions)
    if tracker is not None and tracker.run_id:
        log.info("mlflow run: %s (%s)", tracker.run_id, tracker.settings.tracking_uri)
    return best.val["top1"] if best else None


main = make_main("config", train)

if __name__ == "__main__":
    main()
