"""Generated datasets: learnable image folders and ImageNet devkit ``meta.mat`` files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _class_colour(index: int, num_classes: int) -> np.ndarray:
    hue = index / max(num_classes, 1)
    return np.array([255 * hue, 255 * (1 - hue), 128 + 127 * np.sin(6.28 * hue)], dtype=np.float32)


def write_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int = 8,
    size: int = 16,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write ``root/<split>/<class>/*.<fmt>``: each class a distinct colour plus noise (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = _class_colour(index, len(classes)) + rng.normal(0, 20, (size, size, 3))
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")
                image.save(folder / f"{name}_{i}.{fmt}")
    return root


def write_meta_mat(
    path: Path, leaves: Sequence[tuple[str, str]], non_leaves: Sequence[tuple[str, str]] = ()
) -> Path:
    """Write an ImageNet devkit-style ``meta.mat`` whose ``synsets`` hold ``leaves`` (and parents)."""
    import scipy.io

    rows = [(wnid, words, 0) for wnid, words in leaves] + [(wnid, words, 3) for wnid, words in non_leaves]
    dtype = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    synsets = np.zeros((len(rows), 1), dtype=dtype)
    for i, (wnid, words, children) in enumerate(rows):
        synsets[i, 0] = (i + 1, wnid, words, "a gloss", children, np.zeros((0,)), 0, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": synsets})
    return path
