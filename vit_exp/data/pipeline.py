"""MindSpore dataset pipelines (train / val) for an ImageFolderData, per the reference recipe
(the infer transforms are ``data.images.preprocess``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vit_exp.data.folder import ImageFolderData
from vit_exp.errors import ConfigError

log = logging.getLogger(__name__)


def train_transforms(data: ImageFolderData, image_size: int) -> list:
    from mindspore.dataset import vision

    ops = [
        vision.RandomCropDecodeResize(
            image_size, scale=tuple(data.train_crop_scale), ratio=tuple(data.train_crop_ratio)
        )
    ]
    if data.hflip_prob > 0:
        ops.append(vision.RandomHorizontalFlip(prob=data.hflip_prob))
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
    return ds.ImageFolderDataset(
        str(split_dir),
        shuffle=shuffle,
        class_indexing=data.class_indexing,
        num_parallel_workers=worker_count(data),
        **shards,
    )


def _batched(dataset, transforms: list, data: ImageFolderData, batch_size: int, drop_remainder: bool):
    # Labels are already int32, as the loss and metrics take them: no per-image cast stage.
    dataset = dataset.map(
        operations=transforms, input_columns="image", num_parallel_workers=worker_count(data)
    )
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def train_dataset(
    data: ImageFolderData, image_size: int, batch_size: int, skip_images: int = 0, shard=(1, 0)
):
    """Shuffled, augmented, batched training data (last partial batch dropped). ``shard`` = (n, i):
    every n-th image of one shuffle from the i-th, so batch k of the n shards together is batch k of
    one process at n times the batch size. ``skip_images``: left out undecoded."""
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
    return _batched(dataset, train_transforms(data, image_size), data, batch_size, drop_remainder=True)


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
    ):
        self.data = data
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.exact_skip = exact_skip
        self.shard = tuple(shard)
        self._first = self._dataset(1)

    def _dataset(self, epoch: int, skip_images: int = 0):
        import mindspore.dataset as ds

        # The shuffle is drawn from the seed when the dataset is made, the crops when it is iterated.
        ds.config.set_seed(self.seed + epoch - 1)
        return train_dataset(self.data, self.image_size, self.batch_size, skip_images, self.shard)

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
