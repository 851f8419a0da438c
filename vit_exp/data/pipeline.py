"""MindSpore dataset pipelines (train / val) for an ImageFolderData, per the reference recipe
(the infer transforms are ``data.images.preprocess``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vit_exp.data.augment import Augmentation
from vit_exp.data.folder import ImageFolderData
from vit_exp.errors import ConfigError

log = logging.getLogger(__name__)


def train_transforms(data: ImageFolderData, image_size: int, augment: Augmentation | None = None) -> list:
    """The per-image ops on a training image (augment=basic: the reference recipe's)."""
    from mindspore.dataset import vision

    augment = augment or Augmentation()
    settings = augment.settings
    if settings.random_crop:
        scale, ratio = tuple(data.train_crop_scale), tuple(data.train_crop_ratio)
        ops = [vision.RandomCropDecodeResize(image_size, scale=scale, ratio=ratio)]
    else:
        ops = val_transforms(data, image_size)[:3]  # decode, resize, center crop
    if settings.hflip and data.hflip_prob > 0:
        ops.append(vision.RandomHorizontalFlip(prob=data.hflip_prob))
    ops += augment.randaug_ops(data.mean)
    ops += [vision.Normalize(mean=list(data.mean), std=list(data.std)), vision.HWC2CHW()]
    return ops


def val_transforms(data: ImageFolderData, image_size: int) -> list:
    from mindspore.dataset import vision

    return [
        vision.Decode(),
        vision.Resize(image_size + data.val_resize_margin),
        vision.CenterCrop(image_size),
        vision.Normalize(mean=list(data.mean), std=list(data.std)),
        vision.HWC2CHW(),
    ]


def worker_count(data: ImageFolderData) -> int:
    """``data.num_workers`` within 1..cpu_count (MindSpore rejects more; configs move between hosts)."""
    cpus = os.cpu_count() or 1
    wanted = int(data.num_workers)
    if wanted > cpus:
        log.warning("data.num_workers=%d is more than the %d CPUs here; using %d", wanted, cpus, cpus)
    return max(1, min(wanted, cpus))


def _folder_dataset(data: ImageFolderData, split_dir: Path, shuffle: bool, key: str, shard=(1, 0)):
    """The split's images in file order or shuffled; ``shard`` = (shards, this one): see ``train_dataset``."""
    import mindspore.dataset as ds

    if data.skip_unreadable:
        from vit_exp.data.unreadable import readable_split

        split_dir = readable_split(split_dir, Path(data.check_cache_dir).expanduser(), key)

    ds.config.set_prefetch_size(max(1, int(data.prefetch_size)))
    shards = {"num_shards": shard[0], "shard_id": shard[1]} if shuffle else {}
    if shuffle and data.train_subset is not None:
        shards = {"sampler": _subset_sampler(data, split_dir, shard)}
    return ds.ImageFolderDataset(
        str(split_dir),
        shuffle=None if "sampler" in shards else shuffle,
        class_indexing=data.class_indexing,
        num_parallel_workers=worker_count(data),
        **shards,
    )


def _subset_sampler(data: ImageFolderData, split_dir: Path, shard):
    """Shuffled (and sharded) indices of ``data.train_subset`` in ``ImageFolderDataset``'s file order
    (class folders, then file names, each sorted)."""
    import mindspore.dataset as ds

    from vit_exp.data.folder import list_images

    indices, index = [], 0
    for folder in sorted(data.class_indexing):
        keep = data.train_subset.get(folder, set())
        for image in list_images(split_dir / folder) if (split_dir / folder).is_dir() else ():
            if image.name in keep:
                indices.append(index)
            index += 1
    sampler = ds.DistributedSampler(shard[0], shard[1], shuffle=True)
    sampler.add_child(ds.SubsetSampler(indices))
    return sampler


def _batched(dataset, transforms: list, data: ImageFolderData, batch_size: int, drop_remainder: bool):
    # Labels are already int32, as the loss and metrics take them: no per-image cast stage.
    dataset = dataset.map(
        operations=transforms, input_columns="image", num_parallel_workers=worker_count(data)
    )
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def train_dataset(
    data: ImageFolderData,
    image_size: int,
    batch_size: int,
    skip_images: int = 0,
    shard=(1, 0),
    augment: Augmentation | None = None,
):
    """Shuffled, augmented, batched training data (last partial batch dropped). ``shard`` = (n, i):
    every n-th image of one shuffle from the i-th, so batch k of the n shards together is batch k of
    one process at n times the batch size. ``skip_images``: left out undecoded. With mixing on
    (``augment``), labels are soft targets [B, classes]."""
    augment = augment or Augmentation()
    split = data.split_dir(data.train_split, key="data.train_split")
    dataset = _folder_dataset(data, split, shuffle=True, key="data.train_split", shard=shard)
    if dataset.get_dataset_size() < batch_size:
        per = f" per worker ({shard[0]} workers)" if shard[0] > 1 else ""
        raise ConfigError(
            f"trainer.batch_size={batch_size} is larger than the {dataset.get_dataset_size()} "
            f"training images{per} in {split}"
        )
    if skip_images:
        dataset = dataset.skip(skip_images)
    dataset = dataset.map(
        operations=train_transforms(data, image_size, augment),
        input_columns="image",
        num_parallel_workers=worker_count(data),
    )
    if erasing := augment.erasing_op():
        # A Python op drawing from Python's random (seeded by ds.config.set_seed): one worker thread
        # takes the images in order, so the draws are the same on every pass of the epoch.
        dataset = dataset.map([erasing], "image", num_parallel_workers=1, python_multiprocessing=False)
    if label_ops := augment.label_ops():
        dataset = dataset.map(label_ops, "label", num_parallel_workers=worker_count(data))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if mix := augment.batch_op():
        dataset = dataset.map([mix], ["image", "label"], num_parallel_workers=worker_count(data))
    return dataset


class TrainBatches:
    """Training batches epoch by epoch; epoch ``e``'s order and augmentations depend on ``seed + e``
    only, so a resumed run gets the same batches. ``exact_skip``: ``epoch(e, skip)`` decodes and drops
    the skipped batches (the rest is bit-identical) instead of leaving them out undecoded (fast, but
    the rest's random crops differ)."""

    def __init__(
        self,
        data: ImageFolderData,
        image_size: int,
        batch_size: int,
        seed: int,
        exact_skip: bool,
        shard=(1, 0),
        augment: Augmentation | None = None,
    ):
        self.data = data
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.exact_skip = exact_skip
        self.shard = tuple(shard)
        self.augment = augment
        self._first = self._dataset(1)

    def _dataset(self, epoch: int, skip_images: int = 0):
        import mindspore.dataset as ds

        # The shuffle is drawn from the seed when the dataset is made, the crops when it is iterated.
        ds.config.set_seed(self.seed + epoch - 1)
        return train_dataset(
            self.data, self.image_size, self.batch_size, skip_images, self.shard, self.augment
        )

    @property
    def steps_per_epoch(self) -> int:
        return self._first.get_dataset_size()

    def epoch(self, epoch: int, skip: int = 0):
        """An iterator over epoch ``epoch``'s ``(images, labels)`` batches, from batch ``skip``."""
        dataset = self._dataset(epoch, 0 if self.exact_skip else skip * self.batch_size)
        batches = dataset.create_tuple_iterator(num_epochs=1)
        if self.exact_skip:
            for _ in range(skip):
                next(batches)
        return batches


def val_dataset(data: ImageFolderData, image_size: int, batch_size: int):
    """Validation data in file order, with the val transforms, all images kept."""
    split = data.check_split_classes(data.val_split, key="data.val_split")
    dataset = _folder_dataset(data, split, shuffle=False, key="data.val_split")
    return _batched(dataset, val_transforms(data, image_size), data, batch_size, drop_remainder=False)
