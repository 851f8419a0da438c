"""An ImageNet-style image folder (``<root>/<split>/<class>/<image>``) and its explicit label mapping."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated

from vit_exp.errors import NOT_COMPARED, SETUP, ConfigError, DataError, check_field_types

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASS_MAPS = ("folder", "imagenet")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, case-insensitive), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders in a split that hold at least one image."""
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and list_images(d))


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass
class ImageFolderData:
    """An image-folder dataset: its splits, label mapping, class names and transforms.

    ``class_map``: "folder" numbers the class folders in sorted order; "imagenet" uses each wnid's
    index in ``meta_mat`` (so a subset keeps the pretrained 1000-class head's indices)."""

    root: Annotated[str | Path, NOT_COMPARED]
    train_split: Annotated[str, SETUP] = "train"
    val_split: Annotated[str, SETUP] = "val"
    class_map: Annotated[str, SETUP] = "folder"
    meta_mat: Annotated[str | Path | None, SETUP] = None
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    train_crop_scale: tuple[float, float] = (0.08, 1.0)
    train_crop_ratio: tuple[float, float] = (0.75, 1.333)
    hflip_prob: float = 0.5
    val_resize_margin: int = 32
    num_workers: Annotated[int, SETUP] = 2
    prefetch_size: Annotated[int, NOT_COMPARED] = 8
    skip_unreadable: Annotated[bool, SETUP] = False
    check_cache_dir: Annotated[str | Path, NOT_COMPARED] = "~/.cache/vit_exp/image_checks"
    train_fraction: float = 1.0
    per_class_limit: int | None = None
    name: str = "image_folder"

    def __post_init__(self) -> None:
        check_field_types(self, "data")
        self.root = Path(self.root).expanduser()
        if self.class_map not in CLASS_MAPS:
            raise ConfigError(f"data.class_map must be one of {CLASS_MAPS}, got {self.class_map!r}")
        if self.class_map == "imagenet" and not self.meta_mat:
            raise ConfigError("data.class_map=imagenet needs data.meta_mat (the devkit's meta.mat)")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"data.train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.per_class_limit is not None and self.per_class_limit < 1:
            raise ConfigError(f"data.per_class_limit must be >= 1 or null, got {self.per_class_limit}")
        if not self.root.is_dir():
            raise DataError(f"data.root: folder not found: {self.root}")
        self.split_dir(self.train_split, key="data.train_split")

    def split_dir(self, split: str, key: str = "split") -> Path:
        """The folder of ``split``; DataError when it is missing or holds no class folder with images."""
        path = self.root / split
        if not path.is_dir():
            raise DataError(f"{key}: split folder not found: {path}")
        if not class_folders(path):
            raise DataError(f"{key}: split folder {path} has no class folders with images")
        return path

    @cached_property
    def _imagenet_classes(self) -> list[tuple[str, str]] | None:
        if not self.meta_mat:
            return None
        from vit_exp.data.imagenet import load_imagenet_classes

        return load_imagenet_classes(self.meta_mat)

    @property
    def subset(self) -> bool:
        """Whether training uses a part of the train split (``train_fraction``, ``per_class_limit``)."""
        return self.train_fraction < 1 or self.per_class_limit is not None

    @cached_property
    def train_subset(self) -> dict[str, set[str]] | None:
        """Per class folder, the image names training uses, or None (all of them): of each class,
        ``train_fraction`` of its images (at least 1), at most ``per_class_limit``; the same ones on
        every run: those first in the order of a hash of their names (a smaller subset is in a larger)."""
        if not self.subset:
            return None
        kept = {}
        for folder in self.class_indexing:
            names = [p.name for p in list_images(self.root / self.train_split / folder)]
            count = max(1, math.floor(self.train_fraction * len(names) + 0.5))
            count = min(count, self.per_class_limit or count)
            kept[folder] = set(sorted(names, key=_name_hash)[:count])
        return kept

    @cached_property
    def folders(self) -> list[str]:
        return class_folders(self.root / self.train_split)

    @cached_property
    def class_indexing(self) -> dict[str, int]:
        """Folder name -> label index, as passed to MindSpore's ``ImageFolderDataset``."""
        if self.class_map == "folder":
            return {name: i for i, name in enumerate(self.folders)}
        index = {wnid: i for i, (wnid, _) in enumerate(self._imagenet_classes)}
        if unknown := [f for f in self.folders if f not in index]:
            raise DataError(
                f"data.class_map=imagenet: folders {unknown[:5]} under {self.root / self.train_split} "
                f"are not ImageNet wnids in {self.meta_mat}; use data.class_map=folder"
            )
        return {f: index[f] for f in self.folders}

    @cached_property
    def class_names(self) -> list[str]:
        """Human-readable name of each label index (length = ``num_classes``)."""
        imagenet = self._imagenet_classes or []
        if self.class_map == "imagenet":
            return [name for _, name in imagenet]
        names = dict(imagenet)
        return [names.get(folder, folder) for folder in self.folders]

    @property
    def num_classes(self) -> int:
        """Size of the classification head this data needs."""
        return len(self.class_names)

    def class_names_for(self, num_classes: int) -> list[str]:
        """The class names, padded to a head of ``num_classes`` (e.g. model.num_classes=1000 on a subset)."""
        return self.class_names + [f"class_{i}" for i in range(len(self.class_names), num_classes)]

    def check_split_classes(self, split: str, key: str) -> Path:
        """Validate a non-train split: it exists and its class folders are known to the train split."""
        path = self.split_dir(split, key=key)
        if unknown := sorted(set(class_folders(path)) - set(self.class_indexing)):
            raise DataError(f"{key}: class folders {unknown[:5]} in {path} do not exist in the train split")
        return path
